package snapshot

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"syscall"
	"time"
)

// normalize copies a layer tar from the store's differ to w, rewriting each
// header the way rbuild's layers are written: no access or change times,
// PAX records only where the values need them (the differ already skips
// sockets, which an image cannot carry). It returns the number of entries
// written.
//
// Overlay copies a directory up whenever anything inside it is touched,
// even when the change was undone (a sandbox mountpoint created and
// removed again). Such a directory, identical to the lower one and with
// nothing written beneath it, is no change at all, so it is held back until
// an entry below it shows up and dropped otherwise. lower stats a path in
// the parent.
func normalize(ctx context.Context, r io.Reader, w io.Writer, lower func(name string) (os.FileInfo, bool), epoch *time.Time) (int, error) {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	// One copy buffer for all entries: io.Copy would allocate (and zero)
	// 32 KiB per file, most of the CPU time of a layer of small files.
	buf := make([]byte, 128<<10)
	n := 0
	var pending []*tar.Header // unchanged directories, outermost first
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, fmt.Errorf("reading diff: %w", err)
		}
		out := cleanHeader(hdr)
		name := strings.TrimSuffix(strings.TrimPrefix(out.Name, "./"), "/")
		// Pending directories that do not contain this entry will never
		// get a child: drop them.
		for len(pending) > 0 && !isUnder(name, pendingName(pending[len(pending)-1])) {
			pending = pending[:len(pending)-1]
		}
		// Compare with the parent before clamping: the parent on disk
		// has its real times.
		same := out.Typeflag == tar.TypeDir && sameAsLower(out, name, lower)
		if epoch != nil && out.ModTime.After(*epoch) {
			out.ModTime = *epoch
		}
		if same {
			pending = append(pending, out)
			continue
		}
		for _, p := range pending {
			if err := tw.WriteHeader(p); err != nil {
				return n, err
			}
			n++
		}
		pending = pending[:0]
		if err := tw.WriteHeader(out); err != nil {
			return n, err
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.CopyBuffer(tw, tr, buf); err != nil {
				return n, err
			}
		}
		n++
	}
	if err := tw.Close(); err != nil {
		return n, err
	}
	return n, nil
}

func cleanHeader(hdr *tar.Header) *tar.Header {
	out := &tar.Header{
		Typeflag: hdr.Typeflag,
		Name:     hdr.Name,
		Linkname: hdr.Linkname,
		Size:     hdr.Size,
		Mode:     hdr.Mode,
		Uid:      hdr.Uid,
		Gid:      hdr.Gid,
		ModTime:  hdr.ModTime.Truncate(time.Second),
		Devmajor: hdr.Devmajor,
		Devminor: hdr.Devminor,
		Format:   tar.FormatUnknown,
	}
	// Keep xattrs (security.capability among them); drop the time records
	// the differ may add.
	for k, v := range hdr.PAXRecords {
		if strings.HasPrefix(k, "SCHILY.xattr.") {
			if out.PAXRecords == nil {
				out.PAXRecords = map[string]string{}
			}
			out.PAXRecords[k] = v
		}
	}
	return out
}

func pendingName(h *tar.Header) string {
	return strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")
}

func isUnder(name, dir string) bool {
	return dir == "" || strings.HasPrefix(name, dir+"/")
}

// sameAsLower reports whether a directory entry matches the parent's
// directory of the same name in type, mode, owner and mtime (to the second,
// as tar keeps it) and carries no xattrs.
func sameAsLower(h *tar.Header, name string, lower func(string) (os.FileInfo, bool)) bool {
	if len(h.PAXRecords) > 0 || name == "" {
		return false
	}
	fi, ok := lower(name)
	if !ok || !fi.IsDir() {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return false
	}
	return int64(fi.Mode().Perm()|fi.Mode()&(os.ModeSetuid|os.ModeSetgid|os.ModeSticky)) == int64(os.FileMode(h.Mode).Perm()|modeBits(h.Mode)) &&
		int(st.Uid) == h.Uid && int(st.Gid) == h.Gid &&
		fi.ModTime().Unix() == h.ModTime.Unix()
}

// modeBits converts tar's setuid/setgid/sticky bits to os.FileMode's.
func modeBits(m int64) os.FileMode {
	var out os.FileMode
	if m&0o4000 != 0 {
		out |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		out |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		out |= os.ModeSticky
	}
	return out
}
