package executor

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
	"golang.org/x/sys/unix"
)

// ADD differs from COPY in two ways (BuildKit's dispatchCopy and
// solver/llbsolver/file/unpack.go):
//
//   - a local source that is a tar archive, plain or compressed with gzip,
//     bzip2, xz or zstd (recognised by content, not name), is extracted into
//     dest, which is always a directory then. Entries keep the owners, modes
//     and times of the archive (--chown replaces the owners; --chmod does not
//     apply). BuildKit extracts inside a chroot of dest, so "../" entries and
//     symlinks cannot leave it; here every path is resolved inside dest
//     instead, with the same effect;
//   - an http(s) URL is downloaded and copied like a file named after the
//     last element of the URL path ("__unnamed__" when there is none), with
//     mode 0600 and the mtime of Last-Modified when the server sends it.
//     Downloads are never extracted.

// isArchive reports whether the regular file at p is a tar archive, possibly
// compressed: it decompresses and reads the first header, as BuildKit does.
func isArchive(p string) (bool, error) {
	f, err := os.Open(p)
	if err != nil {
		return false, fmt.Errorf("ADD: %w", err)
	}
	defer f.Close()
	r, err := decompress(f)
	if err != nil {
		return false, nil
	}
	defer r.Close()
	_, err = tar.NewReader(r).Next()
	return err == nil, nil
}

// decompress returns a reader of r's content decompressed according to its
// magic bytes; an unrecognised format is returned as is (a plain tar).
func decompress(r io.Reader) (io.ReadCloser, error) {
	br := bufio.NewReaderSize(r, 64<<10)
	magic, _ := br.Peek(6)
	switch {
	case bytes.HasPrefix(magic, []byte{0x1f, 0x8b, 0x08}):
		return gzip.NewReader(br)
	case bytes.HasPrefix(magic, []byte("BZh")):
		return io.NopCloser(bzip2.NewReader(br)), nil
	case bytes.HasPrefix(magic, []byte{0xfd, '7', 'z', 'X', 'Z', 0x00}):
		xr, err := xz.NewReader(br)
		if err != nil {
			return nil, err
		}
		return io.NopCloser(xr), nil
	case bytes.HasPrefix(magic, []byte{0x28, 0xb5, 0x2f, 0xfd}):
		zr, err := zstd.NewReader(br)
		if err != nil {
			return nil, err
		}
		return zr.IOReadCloser(), nil
	}
	return io.NopCloser(br), nil
}

// extract unpacks the archive source s into the destination directory.
func (p *copyPlan) extract(ctx context.Context, s *copySource) error {
	dest, err := p.hostPath(p.dest)
	if err != nil {
		return err
	}
	uid, gid := p.dirOwner()
	// BuildKit creates dest 0755 here, whatever --chmod says.
	if err := p.mkdirAll(dest, 0o755, uid, gid); err != nil {
		return err
	}
	f, err := os.Open(s.path)
	if err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	defer f.Close()
	r, err := decompress(f)
	if err != nil {
		return fmt.Errorf("ADD %s: %w", s.arg, err)
	}
	defer r.Close()
	x := &extractor{plan: p, dest: dest, arg: s.arg}
	if err := x.run(ctx, tar.NewReader(r)); err != nil {
		return fmt.Errorf("ADD %s: %w", s.arg, err)
	}
	return nil
}

type extractor struct {
	plan *copyPlan
	dest string
	arg  string
	// dirs get their times once all entries are in, as writing into a
	// directory changes its mtime.
	dirs []dirTimes
}

type dirTimes struct {
	name         string
	atime, mtime time.Time
}

func (x *extractor) run(ctx context.Context, tr *tar.Reader) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if err := x.entry(hdr, tr); err != nil {
			return err
		}
	}
	for i := len(x.dirs) - 1; i >= 0; i-- {
		d := x.dirs[i]
		p, err := x.resolve(d.name)
		if err != nil {
			return err
		}
		// A later entry may have replaced the directory.
		if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
			continue
		}
		if err := os.Chtimes(p, d.atime, d.mtime); err != nil {
			return err
		}
	}
	return nil
}

// resolve maps an entry name to a host path inside dest: the parent is
// resolved inside dest (following symlinks made by earlier entries, never
// out of dest), the last element is not followed. ".." at the top stays at
// the top, as in the chroot BuildKit extracts in.
func (x *extractor) resolve(name string) (string, error) {
	name = path.Clean("/" + filepath.ToSlash(name))
	if name == "/" {
		return x.dest, nil
	}
	parent, err := securejoin.SecureJoin(x.dest, path.Dir(name))
	if err != nil {
		return "", err
	}
	return filepath.Join(parent, path.Base(name)), nil
}

func (x *extractor) entry(hdr *tar.Header, r io.Reader) error {
	p := x.plan
	target, err := x.resolve(hdr.Name)
	if err != nil {
		return err
	}
	switch hdr.Typeflag {
	case tar.TypeXGlobalHeader:
		return nil
	case tar.TypeDir, tar.TypeReg, tar.TypeRegA, tar.TypeSymlink, tar.TypeLink,
		tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
	default:
		return fmt.Errorf("%s: unhandled tar header type %d", hdr.Name, hdr.Typeflag)
	}
	if target == x.dest && hdr.Typeflag != tar.TypeDir {
		return fmt.Errorf("refusing to extract non-directory entry %q as the destination itself", hdr.Name)
	}

	// Missing parents are created 0755 and owned by root, as Docker's
	// archive package does.
	if target != x.dest {
		if err := p.mkdirAll(filepath.Dir(target), 0o755, 0, 0); err != nil {
			return err
		}
	}
	// An existing entry is replaced, except that directories merge.
	if fi, err := os.Lstat(target); err == nil {
		if !fi.IsDir() || hdr.Typeflag != tar.TypeDir {
			if err := os.RemoveAll(target); err != nil {
				return err
			}
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		return err
	}

	fi := hdr.FileInfo()
	switch hdr.Typeflag {
	case tar.TypeDir:
		if err := os.Mkdir(target, 0o700); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	case tar.TypeReg, tar.TypeRegA:
		f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, r); err != nil {
			f.Close()
			return err
		}
		if err := f.Close(); err != nil {
			return err
		}
	case tar.TypeSymlink:
		// Any target is fine: later entries resolve paths inside dest, and
		// in the image the link resolves inside the container.
		if err := os.Symlink(hdr.Linkname, target); err != nil {
			return err
		}
	case tar.TypeLink:
		first, err := x.resolve(hdr.Linkname)
		if err != nil {
			return err
		}
		if err := os.Link(first, target); err != nil {
			return fmt.Errorf("hardlink %s to %s: %w", hdr.Name, hdr.Linkname, err)
		}
		// Same inode: its metadata came with the first name.
		return nil
	case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
		mode := uint32(fi.Mode().Perm())
		switch hdr.Typeflag {
		case tar.TypeChar:
			mode |= unix.S_IFCHR
		case tar.TypeBlock:
			mode |= unix.S_IFBLK
		default:
			mode |= unix.S_IFIFO
		}
		dev := int(unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor)))
		if err := unix.Mknod(target, mode, dev); err != nil {
			if errors.Is(err, syscall.EPERM) && hdr.Typeflag != tar.TypeFifo {
				// Device nodes cannot be made in a user namespace; Docker
				// skips them there too.
				return nil
			}
			return err
		}
	}

	uid, gid := hdr.Uid, hdr.Gid
	if p.chown {
		uid, gid = p.uid, p.gid
	}
	if err := lchown(target, uid, gid); err != nil {
		return err
	}
	if hdr.Typeflag != tar.TypeSymlink {
		if err := os.Chmod(target, fi.Mode()&(os.ModePerm|os.ModeSetuid|os.ModeSetgid|os.ModeSticky)); err != nil {
			return err
		}
	}
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok && name != "security.selinux" {
			_ = unix.Lsetxattr(target, name, []byte(v), 0)
		}
	}
	atime := hdr.AccessTime
	if atime.IsZero() {
		atime = hdr.ModTime
	}
	if hdr.Typeflag == tar.TypeDir {
		x.dirs = append(x.dirs, dirTimes{name: hdr.Name, atime: atime, mtime: hdr.ModTime})
		return nil
	}
	ts := []unix.Timespec{unix.NsecToTimespec(atime.UnixNano()), unix.NsecToTimespec(hdr.ModTime.UnixNano())}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: p.show(target), Err: err}
	}
	return nil
}

// urlFileName is the name BuildKit gives a download: the last element of
// the URL path.
func urlFileName(raw string) string {
	u, err := url.Parse(raw)
	if err == nil {
		if base := path.Base(u.Path); base != "." && base != "/" {
			return base
		}
	}
	return "__unnamed__"
}

// download fetches every URL source into a private temporary directory
// before anything is written to the rootfs, so a failed download leaves it
// untouched.
func (p *copyPlan) download(ctx context.Context) error {
	for i, s := range p.sources {
		if s.url == "" {
			continue
		}
		if p.tmpDir == "" {
			dir, err := os.MkdirTemp("", "rbuild-add-")
			if err != nil {
				return fmt.Errorf("ADD: %w", err)
			}
			p.tmpDir = dir
		}
		dir := filepath.Join(p.tmpDir, fmt.Sprint(i))
		if err := os.Mkdir(dir, 0o700); err != nil {
			return fmt.Errorf("ADD: %w", err)
		}
		file := filepath.Join(dir, s.name)
		if err := fetchURL(ctx, s.url, func(resp *http.Response) error {
			f, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
			if err != nil {
				return err
			}
			if _, err := io.Copy(f, resp.Body); err != nil {
				f.Close()
				return err
			}
			if err := f.Close(); err != nil {
				return err
			}
			if t, ok := lastModified(resp); ok {
				return os.Chtimes(file, t, t)
			}
			return nil
		}); err != nil {
			return err
		}
		fi, err := os.Lstat(file)
		if err != nil {
			return fmt.Errorf("ADD: %w", err)
		}
		s.path, s.fi = file, fi
	}
	return nil
}

// fetchURL GETs u and hands a successful response to fn.
func fetchURL(ctx context.Context, u string, fn func(*http.Response) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return fmt.Errorf("ADD %s: %w", u, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("ADD: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return fmt.Errorf("ADD %s: invalid response status %d", u, resp.StatusCode)
	}
	if err := fn(resp); err != nil {
		return fmt.Errorf("ADD %s: %w", u, err)
	}
	return nil
}

func lastModified(resp *http.Response) (time.Time, bool) {
	v := resp.Header.Get("Last-Modified")
	if v == "" {
		return time.Time{}, false
	}
	t, err := http.ParseTime(v)
	return t, err == nil
}
