package snapshot

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"
)

// overlayLower stats paths in the file system that overlay makes of the
// layer directories in stack (the top one first), without mounting it:
// the top-most layer holding a path gives its metadata, unless a layer
// above hides it, with a whiteout (a 0/0 character device) at the path or
// at a parent, a parent that is not a directory, or an opaque parent
// directory (overlay's opaque xattr, in its trusted. or user. form).
// That is all there is to it while overlay uses neither redirect_dir nor
// metacopy (plainOverlay).
//
// When unsure (an error other than a missing file), it reports no lower
// path: the directory entry is then kept in the layer, which is always
// correct.
func overlayLower(stack []string) func(string) (os.FileInfo, bool) {
	type dirState uint8
	const (
		missing dirState = iota // nothing at the path in this layer
		hides                   // a file or whiteout: nothing below it shows
		plain                   // a directory
		opaque                  // a directory hiding what the layers below have in it
		unknown
	)
	// Entries come in tar order, so parents repeat: remember them.
	parents := map[string]dirState{}
	parentState := func(dir, p string) dirState {
		key := dir + "\x00" + p
		if st, ok := parents[key]; ok {
			return st
		}
		full := filepath.Join(dir, filepath.FromSlash(p))
		st := unknown
		fi, err := os.Lstat(full)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			st = missing
		case err != nil:
		case !fi.IsDir():
			st = hides
		case isOpaque(full):
			st = opaque
		default:
			st = plain
		}
		parents[key] = st
		return st
	}
	return func(name string) (os.FileInfo, bool) {
		parts := strings.Split(name, "/")
		for _, dir := range stack {
			hidden, present := false, true
			for i := 1; i < len(parts) && present; i++ {
				switch parentState(dir, strings.Join(parts[:i], "/")) {
				case missing:
					present = false
				case hides, unknown:
					return nil, false
				case opaque:
					hidden = true
				}
			}
			if present {
				fi, err := os.Lstat(filepath.Join(dir, filepath.FromSlash(name)))
				switch {
				case err == nil:
					if isWhiteout(fi) {
						return nil, false
					}
					return fi, true
				case !errors.Is(err, fs.ErrNotExist):
					return nil, false
				}
			}
			if hidden {
				return nil, false
			}
		}
		return nil, false
	}
}

// plainOverlay reports whether the kernel's overlay leaves directory
// redirects and metadata-only copy-ups off (its defaults; rbuild's mount
// options do not turn them on), the condition for overlayLower.
var plainOverlay = sync.OnceValue(func() bool {
	for _, p := range []string{"redirect_dir", "metacopy"} {
		b, err := os.ReadFile("/sys/module/overlay/parameters/" + p)
		if err != nil || strings.TrimSpace(string(b)) != "N" {
			return false
		}
	}
	return true
})

// isWhiteout reports whether fi is overlay's whiteout: a character device
// with device number 0/0.
func isWhiteout(fi os.FileInfo) bool {
	if fi.Mode()&os.ModeCharDevice == 0 {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && st.Rdev == 0
}

// isOpaque reports whether the directory p carries overlay's opaque
// xattr, as root writes it (trusted.) or in a user namespace (user.).
func isOpaque(p string) bool {
	buf := make([]byte, 1)
	for _, name := range []string{"trusted.overlay.opaque", "user.overlay.opaque"} {
		if n, err := unix.Lgetxattr(p, name, buf); err == nil && n == 1 && buf[0] == 'y' {
			return true
		}
	}
	return false
}
