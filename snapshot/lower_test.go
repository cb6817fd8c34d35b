package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
)

// overlayLower must see what the mounted layer shows, for every path any
// layer of the stack has (whiteouts and hidden paths included) and some
// that none has.
func TestOverlayLower(t *testing.T) {
	t.Parallel()
	requireOverlay(t)
	if !plainOverlay() {
		t.Skip("overlay has redirect_dir or metacopy on: the store mounts the parent instead")
	}
	st := openStore(t, "overlay", Compression{})
	ctx := context.Background()
	base := makeTar(t,
		dirEntry("a/"), dirEntry("a/b/"), fileEntry("a/x", "x"),
		dirEntry("c/"), dirEntry("c/d/"), fileEntry("c/d/y", "y"),
		dirEntry("e/"), fileEntry("e/z", "z"), fileEntry("e/keep", "k"),
		dirEntry("f/"), fileEntry("f/w", "w"),
		fileEntry("h", "h"),
		dirEntry("m/"), fileEntry("m/1", "1"), dirEntry("m/sub/"),
	)
	_, err := st.PutLayer(layerID("lower-base"), "", bytes.NewReader(base))
	must(t, err)
	// A base layer with OCI whiteouts, which storage stores in overlay's form.
	mid := makeTar(t,
		dirEntry("a/"), fileEntry("a/.wh.x", ""),
		dirEntry("m/"), fileEntry("m/.wh..wh..opq", ""), fileEntry("m/2", "2"),
	)
	_, err = st.PutLayer(layerID("lower-mid"), layerID("lower-base"), bytes.NewReader(mid))
	must(t, err)

	s1, err := st.Prepare(layerID("lower-mid"))
	must(t, err)
	must(t, os.RemoveAll(filepath.Join(s1.Path, "c")))
	writeFile(t, filepath.Join(s1.Path, "c/new"), "new", 0o644) // opaque c
	must(t, os.Remove(filepath.Join(s1.Path, "e/z")))           // whiteout
	must(t, os.RemoveAll(filepath.Join(s1.Path, "f")))
	writeFile(t, filepath.Join(s1.Path, "f"), "file over dir", 0o600)
	must(t, os.Chmod(filepath.Join(s1.Path, "a/b"), 0o700)) // copied up, changed
	must(t, os.Remove(filepath.Join(s1.Path, "h")))
	mkdir(t, filepath.Join(s1.Path, "h"), 0o750) // directory over a file
	l1, err := st.Commit(ctx, s1)
	must(t, err)

	s2, err := st.Prepare(l1.ID)
	must(t, err)
	must(t, os.Chmod(filepath.Join(s2.Path, "c"), 0o711))
	must(t, os.Chtimes(filepath.Join(s2.Path, "e"), fixed, fixed))
	writeFile(t, filepath.Join(s2.Path, "m/sub2/n"), "n", 0o644)
	l2, err := st.Commit(ctx, s2)
	must(t, err)

	lookup, release, err := st.lower(l2.ID)
	must(t, err)
	defer release()
	merged, release2, err := st.Mount(l2.ID)
	must(t, err)
	defer release2()

	// Every path in any layer of the stack, and in the merged tree.
	drv, err := st.store.GraphDriver()
	must(t, err)
	md, err := drv.Metadata(l2.ID)
	must(t, err)
	dirs := append([]string{md["UpperDir"], merged}, strings.Split(md["LowerDir"], ":")...)
	if len(dirs) != 5 {
		t.Fatalf("stack of %d directories, want the merged one and 4 layers: %v", len(dirs), dirs)
	}
	set := map[string]bool{"nope": true, "a/nope/deeper": true, "f/w/deeper": true, "h/inner": true}
	for _, d := range dirs {
		must(t, filepath.WalkDir(d, func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if rel, _ := filepath.Rel(d, p); rel != "." {
				set[filepath.ToSlash(rel)] = true
			}
			return nil
		}))
	}
	var all []string
	for n := range set {
		all = append(all, n)
	}
	sort.Strings(all)
	for _, name := range all {
		want, werr := os.Lstat(filepath.Join(merged, filepath.FromSlash(name)))
		got, ok := lookup(name)
		if ok != (werr == nil) {
			t.Errorf("%s: found %v, the mounted layer says %v", name, ok, werr)
			continue
		}
		if werr != nil {
			if !errors.Is(werr, fs.ErrNotExist) && !errors.Is(werr, syscall.ENOTDIR) {
				t.Errorf("%s: %v", name, werr)
			}
			continue
		}
		ws, gs := want.Sys().(*syscall.Stat_t), got.Sys().(*syscall.Stat_t)
		if want.Mode() != got.Mode() || ws.Uid != gs.Uid || ws.Gid != gs.Gid || !want.ModTime().Equal(got.ModTime()) {
			t.Errorf("%s: %v %d:%d %v, the mounted layer has %v %d:%d %v", name,
				got.Mode(), gs.Uid, gs.Gid, got.ModTime(), want.Mode(), ws.Uid, ws.Gid, want.ModTime())
		}
	}
	t.Logf("%d paths compared", len(all))

	// And normalize, given it, keeps only what changed: a/b, copied up by
	// a file made and removed, with its times put back, is no change.
	s3, err := st.Prepare(l2.ID)
	must(t, err)
	ab := filepath.Join(s3.Path, "a/b")
	before, err := os.Stat(ab)
	must(t, err)
	writeFile(t, filepath.Join(ab, "tmp"), "tmp", 0o644)
	must(t, os.Remove(filepath.Join(ab, "tmp")))
	must(t, os.Chtimes(ab, before.ModTime(), before.ModTime()))
	writeFile(t, filepath.Join(s3.Path, "e/keep"), "changed", 0o644)
	l3, err := st.Commit(ctx, s3)
	must(t, err)
	if raw := rawDiff(t, st, l2.ID, l3.ID); !slices.Contains(raw, "a/b/") {
		t.Fatalf("the raw diff %v does not have a/b: the test tests nothing", raw)
	}
	var got []string
	for _, e := range layerEntries(t, st, l3) {
		n := e.name()
		if e.hdr.Typeflag == tar.TypeDir {
			n += "/"
		}
		got = append(got, n)
	}
	if strings.Join(got, " ") != "e/ e/keep" {
		t.Errorf("layer entries %v, want e/ e/keep", got)
	}
}
