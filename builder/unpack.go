package builder

import (
	"archive/tar"
	"fmt"
	"io"
	"path"
	"strings"
)

// checkLayerEntries reads a layer tar and reports the first entry that
// would reach outside the root filesystem: a name climbing above it, a
// hardlink to a path above it, or a relative symlink whose target climbs
// above the directory tree. The store's unpacker already refuses to write
// outside the root; this check makes such a layer an error instead of
// something quietly cleaned up.
func checkLayerEntries(r io.Reader) error {
	tr := tar.NewReader(r)
	links := map[string]bool{} // symlinks this layer creates
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if escapes(h.Name) {
			return fmt.Errorf("tar entry %q is outside the root", h.Name)
		}
		name := path.Clean(strings.TrimPrefix(h.Name, "/"))
		for dir := path.Dir(name); dir != "." && dir != "/"; dir = path.Dir(dir) {
			if links[dir] {
				return fmt.Errorf("tar entry %q is written through the symlink %q, which may lead outside the root", h.Name, dir)
			}
		}
		delete(links, name)
		switch h.Typeflag {
		case tar.TypeLink:
			if escapes(h.Linkname) {
				return fmt.Errorf("hardlink %q points outside the root (%q)", h.Name, h.Linkname)
			}
		case tar.TypeSymlink:
			if !path.IsAbs(h.Linkname) && escapes(path.Join(path.Dir(name), h.Linkname)) {
				return fmt.Errorf("symlink %q points outside the root (%q)", h.Name, h.Linkname)
			}
			links[name] = true
		}
	}
}

// escapes reports whether a path relative to the root climbs above it.
func escapes(p string) bool {
	c := path.Clean("./" + strings.TrimPrefix(p, "/"))
	return c == ".." || strings.HasPrefix(c, "../")
}
