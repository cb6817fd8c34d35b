package executor

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
)

// SourceDigest returns "sha256:<hex>" over exactly what Copy would copy for
// spec, for use in cache keys. It covers the destination as written, the
// options, and for every entry in copy order: its path relative to the
// destination, its type, its mode after --chmod, its owner after --chown,
// its size, the sha256 of its content, its link target and its extended
// attributes. Modification times never count, nor do entries the ignore
// file excludes.
//
// DstRoot may be empty when the step's rootfs is not there yet (the cache is
// probed before anything is pulled): placement then depends on the parent
// step, which the cache key covers already, and a --chown by name is
// hashed as written instead of resolved. ADD URLs are fetched (and not
// kept) to hash their content.
//
// Files are hashed in parallel; the result does not depend on scheduling.
func SourceDigest(spec CopySpec) (string, error) {
	ctx := context.Background()
	p, err := newCopyPlan(ctx, spec, false)
	if err != nil {
		return "", err
	}

	var entries []*digestEntry
	for i, s := range p.sources {
		if s.url != "" {
			entries = append(entries, &digestEntry{src: i, typ: 'u', url: s.url, rel: s.name,
				mode: p.urlMode(), uid: p.uid, gid: p.gid})
			continue
		}
		if s.archive {
			entries = append(entries, &digestEntry{src: i, typ: 'x', host: s.path, size: s.fi.Size(),
				uid: -1, gid: -1})
			continue
		}
		w := &digestWalker{plan: p, src: s, index: i, inodes: map[inodeKey]string{}}
		if s.fi.IsDir() {
			// The source directory itself is not copied: only what is in it.
			entries = append(entries, &digestEntry{src: i, typ: 'd', rel: "", uid: -1, gid: -1})
			if err := w.walk(s.path, s.rel, "", &entries); err != nil {
				return "", err
			}
			continue
		}
		if err := w.add(s.path, s.name, s.fi, &entries); err != nil {
			return "", err
		}
	}

	if err := hashContents(ctx, entries); err != nil {
		return "", err
	}

	h := sha256.New()
	d := digestWriter{h: h}
	d.str("rbuild.copy.v1")
	d.str(p.op)
	d.str(p.dest)
	d.bool(p.destDir)
	d.str(spec.Chmod)
	d.str(spec.Chown)
	d.bool(p.chown)
	d.int(int64(p.uid))
	d.int(int64(p.gid))
	d.bool(spec.PreserveOwnership)
	for _, s := range p.sources {
		d.str("source")
		d.str(s.arg)
		d.str(s.name)
	}
	for _, e := range entries {
		e.write(&d)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), nil
}

// numericChown reports a --chown made of numbers only ("1000", "1000:1000").
func numericChown(s string) bool {
	for _, part := range strings.SplitN(s, ":", 2) {
		if part == "" || strings.Trim(part, "0123456789") != "" {
			return false
		}
	}
	return true
}

// urlMode is the mode a download gets: 0600 unless --chmod.
func (p *copyPlan) urlMode() uint32 {
	if p.chmod {
		return uint32(p.mode)
	}
	return 0o600
}

// digestEntry is one copied entry as the digest sees it.
type digestEntry struct {
	src int
	// rel is the path below the destination the source maps to.
	rel  string
	typ  byte // d dir, f file, l symlink, h hardlink, c/b/p/s special, x archive, u URL
	mode uint32
	// uid and gid are -1 where the owner does not come from this entry.
	uid, gid int
	size     int64
	link     string
	rdev     uint64
	xattrs   []xattr
	url      string
	// host is the file to hash; sum its sha256 once hashed.
	host string
	sum  [sha256.Size]byte
}

func (e *digestEntry) write(d *digestWriter) {
	d.int(int64(e.src))
	d.str(e.rel)
	d.h.Write([]byte{e.typ})
	d.int(int64(e.mode))
	d.int(int64(e.uid))
	d.int(int64(e.gid))
	d.int(e.size)
	d.str(e.link)
	d.int(int64(e.rdev))
	d.int(int64(len(e.xattrs)))
	for _, x := range e.xattrs {
		d.str(x.name)
		d.str(string(x.value))
	}
	d.str(e.url)
	d.h.Write(e.sum[:])
}

// digestWriter writes length-prefixed fields, so that no two different
// entry lists serialise alike.
type digestWriter struct{ h hash.Hash }

func (d *digestWriter) int(v int64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], uint64(v))
	d.h.Write(b[:])
}

func (d *digestWriter) str(s string) {
	d.int(int64(len(s)))
	io.WriteString(d.h, s)
}

func (d *digestWriter) bool(b bool) {
	if b {
		d.h.Write([]byte{1})
	} else {
		d.h.Write([]byte{0})
	}
}

// digestWalker lists the entries of one source tree in the order Copy
// copies them.
type digestWalker struct {
	plan   *copyPlan
	src    *copySource
	index  int
	inodes map[inodeKey]string
}

func (w *digestWalker) walk(dir, dirRel, sub string, out *[]*digestEntry) error {
	list, err := readDirSorted(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", w.plan.op, err)
	}
	for _, de := range list {
		rel := path.Join(dirRel, de.Name())
		if w.plan.excluded(rel) {
			continue
		}
		fi, err := de.Info()
		if err != nil {
			return fmt.Errorf("%s: %w", w.plan.op, err)
		}
		host := filepath.Join(dir, de.Name())
		name := path.Join(sub, de.Name())
		if err := w.add(host, name, fi, out); err != nil {
			return err
		}
		if fi.IsDir() {
			if err := w.walk(host, rel, name, out); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *digestWalker) add(host, name string, fi os.FileInfo, out *[]*digestEntry) error {
	p := w.plan
	e := &digestEntry{src: w.index, rel: name, mode: uint32(p.modeFor(fi))}
	e.uid, e.gid = p.ownerFor(w.src, fi)
	st, _ := fi.Sys().(*syscall.Stat_t)
	mode := fi.Mode()
	switch {
	case mode.IsDir():
		e.typ = 'd'
	case mode.IsRegular():
		e.typ, e.size, e.host = 'f', fi.Size(), host
		if st != nil && st.Nlink > 1 {
			key := inodeKey{uint64(st.Dev), st.Ino}
			if first, ok := w.inodes[key]; ok {
				e.typ, e.size, e.host, e.link = 'h', 0, "", first
				break
			}
			w.inodes[key] = name
		}
	case mode&os.ModeSymlink != 0:
		link, err := os.Readlink(host)
		if err != nil {
			return fmt.Errorf("%s: %w", p.op, err)
		}
		e.typ, e.link = 'l', link
		// chmod does not apply to symlinks.
		e.mode = uint32(mode.Perm())
	case mode&os.ModeCharDevice != 0:
		e.typ = 'c'
	case mode&os.ModeDevice != 0:
		e.typ = 'b'
	case mode&os.ModeNamedPipe != 0:
		e.typ = 'p'
	case mode&os.ModeSocket != 0:
		e.typ = 's'
	default:
		return fmt.Errorf("%s: %s: unsupported file type %s", p.op, name, mode.Type())
	}
	if st != nil && (e.typ == 'c' || e.typ == 'b') {
		e.rdev = uint64(st.Rdev)
	}
	e.xattrs = listXattrs(host)
	*out = append(*out, e)
	return nil
}

// hashContents fills in the sha256 of every file and download, with a few
// workers: each result goes to its own entry, so the order of completion does
// not matter.
func hashContents(ctx context.Context, entries []*digestEntry) error {
	var jobs []*digestEntry
	for _, e := range entries {
		if e.host != "" || e.url != "" {
			jobs = append(jobs, e)
		}
	}
	if len(jobs) == 0 {
		return nil
	}
	workers := min(max(runtime.GOMAXPROCS(0), 4), 16, len(jobs))
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch := make(chan *digestEntry)
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		firstErr error
	)
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for e := range ch {
				if err := hashEntry(ctx, e); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					cancel()
				}
			}
		}()
	}
	for _, e := range jobs {
		if ctx.Err() != nil {
			break
		}
		ch <- e
	}
	close(ch)
	wg.Wait()
	return firstErr
}

func hashEntry(ctx context.Context, e *digestEntry) error {
	h := sha256.New()
	if e.url != "" {
		err := fetchURL(ctx, e.url, func(resp *http.Response) error {
			n, err := io.Copy(h, resp.Body)
			e.size = n
			return err
		})
		if err != nil {
			return err
		}
	} else {
		f, err := os.OpenFile(e.host, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
		if err != nil {
			return fmt.Errorf("hash source: %w", err)
		}
		_, err = io.Copy(h, f)
		f.Close()
		if err != nil {
			return fmt.Errorf("hash source: %w", err)
		}
	}
	copy(e.sum[:], h.Sum(nil))
	return nil
}
