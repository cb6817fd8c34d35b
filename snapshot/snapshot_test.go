package snapshot

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"go.podman.io/storage"
	"go.podman.io/storage/pkg/archive"
	"golang.org/x/sys/unix"
)

// The store tests need root: see requireRoot. They run against both
// drivers rbuild uses: overlay (native diff of the upper directory) and
// vfs (full-tree comparison).
var drivers = []string{"overlay", "vfs"}

func forDrivers(t *testing.T, f func(t *testing.T, driver string)) {
	for _, d := range drivers {
		t.Run(d, func(t *testing.T) {
			t.Parallel()
			requireRoot(t)
			if ok, why := overlayUsable(t); d == "overlay" && !ok {
				t.Skip(why)
			}
			f(t, d)
		})
	}
}

// overlayUsable reports whether the overlay driver works here: the
// kernel has it and the temporary directory's file system can back it
// (not, for one, an overlay root in a CI container). Tested once.
func overlayUsable(t testing.TB) (bool, string) {
	overlayOnce.Do(func() {
		data, err := os.ReadFile("/proc/filesystems")
		if err != nil || !bytes.Contains(data, []byte("\toverlay\n")) {
			overlayReason = "the kernel has no overlay file system"
			return
		}
		root, err := os.MkdirTemp("", "overlay-probe-")
		if err != nil {
			overlayReason = err.Error()
			return
		}
		defer os.RemoveAll(root)
		st, err := Open(Options{Root: root, Driver: "overlay"})
		if err != nil {
			overlayReason = "overlay cannot be used here: " + err.Error()
			return
		}
		_ = st.Close()
		unmountUnder(t, root)
		removeRunRoot(t, st)
		overlayOK = true
	})
	return overlayOK, overlayReason
}

var (
	overlayOnce   sync.Once
	overlayOK     bool
	overlayReason string
)

func TestOpen(t *testing.T) {
	t.Parallel()
	requireRoot(t)
	t.Run("no root directory", func(t *testing.T) {
		if _, err := Open(Options{}); err == nil {
			t.Fatal("Open with no Root succeeded")
		}
	})
	t.Run("default driver", func(t *testing.T) {
		st := openStore(t, "", Compression{})
		want := "overlay"
		if ok, why := overlayUsable(t); !ok {
			t.Logf("%s: expecting the vfs fallback", why)
			want = "vfs"
		}
		if st.Driver() != want {
			t.Errorf("driver %q, want %s", st.Driver(), want)
		}
	})
	t.Run("forced vfs", func(t *testing.T) {
		st := openStore(t, "vfs", Compression{})
		if st.Driver() != "vfs" {
			t.Errorf("driver %q, want vfs", st.Driver())
		}
	})
	t.Run("unknown driver", func(t *testing.T) {
		root := t.TempDir()
		_, err := Open(Options{Root: root, Driver: "no-such-driver"})
		if err == nil {
			t.Fatal("Open with an unknown driver succeeded")
		}
		if !strings.Contains(err.Error(), "no-such-driver") || !strings.Contains(err.Error(), root) {
			t.Errorf("error %q should name the driver and the directory", err)
		}
	})
	t.Run("layout", func(t *testing.T) {
		st := openStore(t, "vfs", Compression{})
		if got, want := BlobDir(st.root), filepath.Join(st.root, "images", "blobs"); got != want {
			t.Errorf("BlobDir = %s, want %s", got, want)
		}
		if fi, err := os.Stat(filepath.Join(BlobDir(st.root), "sha256")); err != nil || !fi.IsDir() {
			t.Errorf("blob directory not created: %v", err)
		}
	})
}

// TestReopen: layers and blobs survive closing and reopening the store,
// which is what the local step cache relies on.
func TestReopen(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		root := t.TempDir()
		st, err := Open(Options{Root: root, Driver: driver})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { unmountUnder(t, root) })
		s, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s.Path, "f"), "kept", 0o644)
		l, err := st.Commit(context.Background(), s)
		must(t, err)
		must(t, st.Close())

		st2, err := Open(Options{Root: root, Driver: driver})
		if err != nil {
			t.Fatal(err)
		}
		defer func() { must(t, st2.Close()) }()
		if !st2.Exists(l.ID) {
			t.Fatalf("layer %s lost on reopen", l.ID)
		}
		if !st2.Blobs.Has(l.Digest) {
			t.Fatalf("blob %s lost on reopen", l.Digest)
		}
		p, release, err := st2.Mount(l.ID)
		must(t, err)
		defer release()
		if data, err := os.ReadFile(filepath.Join(p, "f")); err != nil || string(data) != "kept" {
			t.Errorf("reading f from the reopened layer: %q, %v", data, err)
		}
	})
}

func TestCommitScratch(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		st := openStore(t, driver, Compression{})
		s, err := st.Prepare("")
		must(t, err)
		if s.Parent != "" || s.ID == "" {
			t.Fatalf("snapshot %+v", s)
		}
		if ents, err := os.ReadDir(s.Path); err != nil || len(ents) != 0 {
			t.Fatalf("a scratch snapshot should be an empty directory: %v, %v", ents, err)
		}
		mkdir(t, filepath.Join(s.Path, "etc"), 0o755)
		writeFile(t, filepath.Join(s.Path, "etc/hostname"), "box\n", 0o644)
		writeFile(t, filepath.Join(s.Path, "bin/tool"), "#!/bin/sh\necho hi\n", 0o755)
		writeFile(t, filepath.Join(s.Path, "bin/suid"), "x", os.ModeSetuid|0o755)
		mkdir(t, filepath.Join(s.Path, "private"), 0o700)
		writeFile(t, filepath.Join(s.Path, "home/user/notes"), "mine", 0o600)
		must(t, os.Chown(filepath.Join(s.Path, "home/user"), 1000, 1001))
		must(t, os.Chown(filepath.Join(s.Path, "home/user/notes"), 1000, 1001))
		must(t, os.Symlink("../etc/hostname", filepath.Join(s.Path, "bin/hn")))
		// Names and owners plain ustar cannot hold, and special files.
		long := strings.Repeat("node_modules/pkg/", 8) + "index.js"
		writeFile(t, filepath.Join(s.Path, long), "module.exports = 1", 0o644)
		writeFile(t, filepath.Join(s.Path, "café/naïve €.txt"), "utf-8", 0o644)
		writeFile(t, filepath.Join(s.Path, "bigid"), "owned", 0o644)
		must(t, os.Chown(filepath.Join(s.Path, "bigid"), 3000000, 3000001))
		must(t, unix.Mknod(filepath.Join(s.Path, "null"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))))
		must(t, unix.Mkfifo(filepath.Join(s.Path, "fifo"), 0o600))
		// Sub-second times must be cut to the second.
		must(t, os.Chtimes(filepath.Join(s.Path, "etc/hostname"), fixed, fixed.Add(123456789*time.Nanosecond)))

		l, err := st.Commit(context.Background(), s)
		if err != nil {
			t.Fatalf("Commit: %v", err)
		}
		if l.ID != s.ID || l.Empty || l.MediaType != types.OCILayer {
			t.Errorf("layer %+v: want the snapshot's ID, not empty, gzip OCI media type", l)
		}
		es := layerEntries(t, st, l)
		want := []string{"bigid", "bin/", "bin/hn", "bin/suid", "bin/tool", "café/", "café/naïve €.txt",
			"etc/", "etc/hostname", "fifo", "home/", "home/user/", "home/user/notes", "null", "private/"}
		var got []string
		for _, n := range names(es) {
			if n != "/" && !strings.HasPrefix(n, "node_modules") { // a "./" root entry is allowed
				got = append(got, n)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("entries %v, want %v", got, want)
		}
		for _, e := range es {
			h := e.hdr
			if h.Uname != "" || h.Gname != "" {
				t.Errorf("%s: user/group names %q/%q kept", h.Name, h.Uname, h.Gname)
			}
			if !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() {
				t.Errorf("%s: access/change times kept", h.Name)
			}
			if h.ModTime.Nanosecond() != 0 {
				t.Errorf("%s: mtime %v has sub-seconds", h.Name, h.ModTime)
			}
			// PAX only for xattrs and for what ustar cannot hold.
			for k := range h.PAXRecords {
				switch k {
				case "path", "linkpath", "uid", "gid", "size":
				default:
					if !strings.HasPrefix(k, "SCHILY.xattr.") {
						t.Errorf("%s: PAX record %s kept", h.Name, k)
					}
				}
			}
		}
		if e := mustFind(t, es, "etc/hostname"); string(e.data) != "box\n" || e.hdr.Mode&0o7777 != 0o644 || !e.hdr.ModTime.Equal(fixed) {
			t.Errorf("etc/hostname: %q mode %o mtime %v", e.data, e.hdr.Mode, e.hdr.ModTime)
		}
		if e := mustFind(t, es, "bin/tool"); e.hdr.Mode&0o7777 != 0o755 || e.hdr.Typeflag != tar.TypeReg {
			t.Errorf("bin/tool: mode %o type %c", e.hdr.Mode, e.hdr.Typeflag)
		}
		if e := mustFind(t, es, "bin/suid"); e.hdr.Mode&0o7777 != 0o4755 {
			t.Errorf("bin/suid: mode %o, want setuid 4755", e.hdr.Mode)
		}
		if e := mustFind(t, es, "private"); e.hdr.Mode&0o7777 != 0o700 || e.hdr.Typeflag != tar.TypeDir {
			t.Errorf("private: mode %o type %c", e.hdr.Mode, e.hdr.Typeflag)
		}
		if e := mustFind(t, es, "home/user/notes"); e.hdr.Uid != 1000 || e.hdr.Gid != 1001 {
			t.Errorf("home/user/notes owned by %d:%d, want 1000:1001", e.hdr.Uid, e.hdr.Gid)
		}
		if e := mustFind(t, es, long); string(e.data) != "module.exports = 1" {
			t.Errorf("%s: %q", long, e.data)
		}
		if e := mustFind(t, es, "café/naïve €.txt"); string(e.data) != "utf-8" {
			t.Errorf("utf-8 name: %q", e.data)
		}
		if e := mustFind(t, es, "bigid"); e.hdr.Uid != 3000000 || e.hdr.Gid != 3000001 {
			t.Errorf("bigid owned by %d:%d, want 3000000:3000001", e.hdr.Uid, e.hdr.Gid)
		}
		if e := mustFind(t, es, "null"); e.hdr.Typeflag != tar.TypeChar || e.hdr.Devmajor != 1 || e.hdr.Devminor != 3 {
			t.Errorf("null: type %c %d,%d, want a char device 1,3", e.hdr.Typeflag, e.hdr.Devmajor, e.hdr.Devminor)
		}
		if e := mustFind(t, es, "fifo"); e.hdr.Typeflag != tar.TypeFifo || e.hdr.Mode&0o7777 != 0o600 {
			t.Errorf("fifo: type %c mode %o", e.hdr.Typeflag, e.hdr.Mode)
		}
		if e := mustFind(t, es, "bin/hn"); e.hdr.Typeflag != tar.TypeSymlink || e.hdr.Linkname != "../etc/hostname" {
			t.Errorf("bin/hn: type %c -> %q", e.hdr.Typeflag, e.hdr.Linkname)
		}

		// The committed layer mounts with the same files, and applying the
		// blob as the OCI spec says gives the same tree.
		if !st.Exists(l.ID) {
			t.Fatal("committed layer does not exist")
		}
		p, release, err := st.Mount(l.ID)
		must(t, err)
		defer release()
		applied := t.TempDir()
		applyOCI(t, applied, es)
		compareTrees(t, "applied blob vs mounted layer", tree(t, applied), tree(t, p))
	})
}

// TestLayerChain commits three layers that delete files, replace a
// directory by a file and back, and recreate a directory, and checks each
// blob for OCI whiteouts and, applied in order, against the mounted layer.
func TestLayerChain(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		st := openStore(t, driver, Compression{})
		ctx := context.Background()
		applied := t.TempDir()

		// Layer 1.
		s1, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s1.Path, "a/f1"), "one", 0o644)
		writeFile(t, filepath.Join(s1.Path, "a/f2"), "two", 0o644)
		writeFile(t, filepath.Join(s1.Path, "d/x"), "x", 0o644)
		writeFile(t, filepath.Join(s1.Path, "d/sub/y"), "y", 0o644)
		writeFile(t, filepath.Join(s1.Path, "g"), "plain file", 0o644)
		writeFile(t, filepath.Join(s1.Path, "o/old1"), "old", 0o644)
		writeFile(t, filepath.Join(s1.Path, "o/old2"), "old", 0o644)
		writeFile(t, filepath.Join(s1.Path, "keep/k"), "k", 0o644)
		l1, err := st.Commit(ctx, s1)
		must(t, err)
		es1 := layerEntries(t, st, l1)
		applyOCI(t, applied, es1)
		checkMounted(t, st, l1.ID, applied)

		// Layer 2: delete, dir -> file, file -> dir, rm -rf + mkdir.
		s2, err := st.Prepare(l1.ID)
		must(t, err)
		if s2.Parent != l1.ID {
			t.Fatalf("snapshot parent %q, want %q", s2.Parent, l1.ID)
		}
		if data, err := os.ReadFile(filepath.Join(s2.Path, "a/f1")); err != nil || string(data) != "one" {
			t.Fatalf("the parent's files are not visible in the snapshot: %q, %v", data, err)
		}
		must(t, os.Remove(filepath.Join(s2.Path, "a/f1")))
		must(t, os.RemoveAll(filepath.Join(s2.Path, "d")))
		writeFile(t, filepath.Join(s2.Path, "d"), "now a file", 0o600)
		must(t, os.Remove(filepath.Join(s2.Path, "g")))
		writeFile(t, filepath.Join(s2.Path, "g/inner"), "in", 0o644)
		must(t, os.RemoveAll(filepath.Join(s2.Path, "o")))
		writeFile(t, filepath.Join(s2.Path, "o/new"), "new", 0o644)
		l2, err := st.Commit(ctx, s2)
		must(t, err)
		es2 := layerEntries(t, st, l2)
		t.Logf("layer 2: %v", names(es2))

		wh := mustFind(t, es2, "a/.wh.f1")
		if wh.hdr.Typeflag != tar.TypeReg || wh.hdr.Size != 0 {
			t.Errorf("whiteout a/.wh.f1: type %c size %d, want an empty regular file", wh.hdr.Typeflag, wh.hdr.Size)
		}
		for _, n := range []string{"a/f1", "a/f2", "keep", "keep/k", "d/x", "d/sub"} {
			if _, ok := find(es2, n); ok {
				t.Errorf("layer 2 has %s, which it did not change", n)
			}
		}
		if e := mustFind(t, es2, "d"); e.hdr.Typeflag != tar.TypeReg || string(e.data) != "now a file" {
			t.Errorf("d should be a regular file in layer 2: type %c %q", e.hdr.Typeflag, e.data)
		}
		if e := mustFind(t, es2, "g"); e.hdr.Typeflag != tar.TypeDir {
			t.Errorf("g should be a directory in layer 2: type %c", e.hdr.Typeflag)
		}
		mustFind(t, es2, "g/inner")
		mustFind(t, es2, "o/new")
		_, opaque := find(es2, "o/.wh..wh..opq")
		_, wh1 := find(es2, "o/.wh.old1")
		_, wh2 := find(es2, "o/.wh.old2")
		if !opaque && !(wh1 && wh2) {
			t.Errorf("recreated directory o hides neither with an opaque whiteout nor with whiteouts of old1/old2: %v", names(es2))
		}
		if driver == "overlay" && !opaque {
			t.Errorf("overlay: recreated directory o should carry .wh..wh..opq: %v", names(es2))
		}
		if e, ok := find(es2, "o/.wh..wh..opq"); ok && (e.hdr.Typeflag != tar.TypeReg || e.hdr.Size != 0) {
			t.Errorf("opaque whiteout: type %c size %d", e.hdr.Typeflag, e.hdr.Size)
		}
		applyOCI(t, applied, es2)
		checkMounted(t, st, l2.ID, applied)

		// Layer 3: file -> directory again; d/x of layer 1 must stay gone.
		s3, err := st.Prepare(l2.ID)
		must(t, err)
		must(t, os.Remove(filepath.Join(s3.Path, "d")))
		writeFile(t, filepath.Join(s3.Path, "d/y"), "y again", 0o644)
		l3, err := st.Commit(ctx, s3)
		must(t, err)
		es3 := layerEntries(t, st, l3)
		t.Logf("layer 3: %v", names(es3))
		if e := mustFind(t, es3, "d"); e.hdr.Typeflag != tar.TypeDir {
			t.Errorf("d should be a directory in layer 3: type %c", e.hdr.Typeflag)
		}
		mustFind(t, es3, "d/y")
		applyOCI(t, applied, es3)
		if _, err := os.Lstat(filepath.Join(applied, "d/x")); err == nil {
			t.Error("d/x of layer 1 came back after the directory was replaced twice")
		}
		checkMounted(t, st, l3.ID, applied)

		// go.podman.io/storage applies the same blobs to the same tree.
		other := openStore(t, "vfs", Compression{})
		parent := ""
		for i, l := range []*Layer{l1, l2, l3} {
			rc, err := st.Blobs.Open(l.Digest)
			must(t, err)
			id := fmt.Sprintf("%064x", sha256.Sum256([]byte(fmt.Sprint("chain", i))))
			_, err = other.PutLayer(id, parent, rc)
			rc.Close()
			if err != nil {
				t.Fatalf("PutLayer of layer %d: %v", i+1, err)
			}
			parent = id
		}
		p, release, err := other.Mount(parent)
		must(t, err)
		defer release()
		q, release2, err := st.Mount(l3.ID)
		must(t, err)
		defer release2()
		compareTrees(t, "layers applied by storage vs mounted layer", tree(t, p), tree(t, q))
	})
}

// checkMounted compares a committed layer, mounted, with a tree applied
// from the blobs.
func checkMounted(t *testing.T, st *Store, id, applied string) {
	t.Helper()
	p, release, err := st.Mount(id)
	must(t, err)
	defer release()
	compareTrees(t, "applied blobs vs mounted layer "+short(id), tree(t, applied), tree(t, p))
}

func blobFiles(t *testing.T, st *Store) []string {
	t.Helper()
	var out []string
	err := filepath.Walk(st.Blobs.dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, p)
		}
		return err
	})
	must(t, err)
	return out
}

func TestEmptyCommit(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		st := openStore(t, driver, Compression{})
		ctx := context.Background()

		s, err := st.Prepare("")
		must(t, err)
		l, err := st.Commit(ctx, s)
		must(t, err)
		if !l.Empty || l.ID != s.ID || l.Digest != (v1.Hash{}) {
			t.Errorf("scratch with no change: layer %+v, want Empty with the snapshot ID", l)
		}
		if files := blobFiles(t, st); len(files) != 0 {
			t.Errorf("an empty layer left blob files: %v", files)
		}

		s1, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s1.Path, "etc/f"), "f", 0o644)
		l1, err := st.Commit(ctx, s1)
		must(t, err)
		before := blobFiles(t, st)

		s2, err := st.Prepare(l1.ID)
		must(t, err)
		// Reading changes nothing.
		if _, err := os.ReadFile(filepath.Join(s2.Path, "etc/f")); err != nil {
			t.Fatal(err)
		}
		l2, err := st.Commit(ctx, s2)
		must(t, err)
		if !l2.Empty || l2.ID != s2.ID {
			t.Errorf("no change on a parent: layer %+v, want Empty", l2)
		}
		if after := blobFiles(t, st); !slices.Equal(before, after) {
			t.Errorf("an empty commit changed the blob store: %v -> %v", before, after)
		}
		// The chain goes on from the empty layer.
		s3, err := st.Prepare(l2.ID)
		must(t, err)
		if data, err := os.ReadFile(filepath.Join(s3.Path, "etc/f")); err != nil || string(data) != "f" {
			t.Errorf("snapshot on an empty layer lost the parent's file: %q, %v", data, err)
		}
		must(t, st.Remove(s3))
	})
}

// rawDiff returns the names in storage's own diff between two layers,
// before normalize.
func rawDiff(t *testing.T, st *Store, from, to string) []string {
	t.Helper()
	rc, err := st.store.Diff(from, to, &storage.DiffOptions{Compression: ptr(archive.Uncompressed)})
	must(t, err)
	defer rc.Close()
	return names(readTar(t, rc))
}

// TestPruneUnchangedDirectories: overlay copies a directory up when
// something inside it is touched, even if the change is undone; such a
// directory, identical to the parent's, must not reach the layer, while a
// directory whose metadata changed, or that holds a change, must.
func TestPruneUnchangedDirectories(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		st := openStore(t, driver, Compression{})
		ctx := context.Background()

		s1, err := st.Prepare("")
		must(t, err)
		for _, f := range []string{"a/file", "b/c/file", "x/y/old", "m/file", "t/file", "z/file"} {
			writeFile(t, filepath.Join(s1.Path, f), f, 0o644)
		}
		for _, d := range []string{"a", "b/c", "b", "x/y", "x", "m", "t", "z"} {
			must(t, os.Chtimes(filepath.Join(s1.Path, d), fixed, fixed))
		}
		l1, err := st.Commit(ctx, s1)
		must(t, err)

		// touchAndUndo creates a file in dir and removes it again, then
		// restores the times of dir and of its ancestors up to the root.
		touchAndUndo := func(root, dir string) {
			p := filepath.Join(root, dir, "tmp")
			writeFile(t, p, "", 0o644)
			must(t, os.Remove(p))
			for d := dir; d != "."; d = filepath.Dir(d) {
				must(t, os.Chtimes(filepath.Join(root, d), fixed, fixed))
			}
		}

		// Only undone changes: an empty layer.
		s2, err := st.Prepare(l1.ID)
		must(t, err)
		touchAndUndo(s2.Path, "a")
		touchAndUndo(s2.Path, "b/c")
		l2, err := st.Commit(ctx, s2)
		must(t, err)
		if driver == "overlay" {
			// Make sure the case is real: overlay did copy the
			// directories up, and normalize dropped them.
			raw := rawDiff(t, st, l1.ID, l2.ID)
			if !slices.Contains(raw, "a/") || !slices.Contains(raw, "b/c/") {
				t.Errorf("storage's diff lacks the copied-up directories, the test proves nothing: %v", raw)
			}
		}
		if !l2.Empty {
			t.Errorf("directories copied up with unchanged metadata made a layer: %v", names(layerEntries(t, st, l2)))
		}

		// Real changes next to undone ones.
		s3, err := st.Prepare(l1.ID)
		must(t, err)
		touchAndUndo(s3.Path, "a")
		must(t, os.Chmod(filepath.Join(s3.Path, "m"), 0o700))
		writeFile(t, filepath.Join(s3.Path, "x/y/new"), "new", 0o644)
		must(t, os.Chtimes(filepath.Join(s3.Path, "x/y"), fixed, fixed))
		must(t, os.Chtimes(filepath.Join(s3.Path, "x"), fixed, fixed))
		must(t, os.Chtimes(filepath.Join(s3.Path, "t"), fixed.Add(time.Hour), fixed.Add(time.Hour)))
		touchAndUndo(s3.Path, "z")
		l3, err := st.Commit(ctx, s3)
		must(t, err)
		es := layerEntries(t, st, l3)
		got := names(es)
		t.Logf("layer: %v", got)
		for _, n := range []string{"a", "a/file", "b", "b/c", "z", "z/file"} {
			if _, ok := find(es, n); ok {
				t.Errorf("unchanged %s is in the layer: %v", n, got)
			}
		}
		if e := mustFind(t, es, "m"); e.hdr.Mode&0o7777 != 0o700 {
			t.Errorf("m: mode %o, want 700", e.hdr.Mode)
		}
		// A directory holding a change is kept, parents before children.
		ix, iy, inew := slices.Index(got, "x/"), slices.Index(got, "x/y/"), slices.Index(got, "x/y/new")
		if ix < 0 || iy < 0 || inew < 0 || !(ix < iy && iy < inew) {
			t.Errorf("want x/, x/y/, x/y/new in that order: %v", got)
		}
		if driver == "overlay" {
			// vfs's tree comparison ignores directory mtimes.
			if e := mustFind(t, es, "t"); !e.hdr.ModTime.Equal(fixed.Add(time.Hour)) {
				t.Errorf("t: mtime %v", e.hdr.ModTime)
			}
		}
	})
}

func TestHardlinks(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		st := openStore(t, driver, Compression{})
		ctx := context.Background()
		s, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s.Path, "f"), "shared", 0o644)
		must(t, os.Link(filepath.Join(s.Path, "f"), filepath.Join(s.Path, "g")))
		must(t, os.MkdirAll(filepath.Join(s.Path, "dir"), 0o755))
		must(t, os.Link(filepath.Join(s.Path, "f"), filepath.Join(s.Path, "dir/h")))
		l, err := st.Commit(ctx, s)
		must(t, err)
		es := layerEntries(t, st, l)
		var regs, links []entry
		for _, e := range es {
			switch e.hdr.Typeflag {
			case tar.TypeReg:
				regs = append(regs, e)
			case tar.TypeLink:
				links = append(links, e)
			}
		}
		if len(regs) != 1 || len(links) != 2 {
			t.Fatalf("want 1 file and 2 hardlinks, got %d files and %d links: %v", len(regs), len(links), names(es))
		}
		if string(regs[0].data) != "shared" {
			t.Errorf("file content %q", regs[0].data)
		}
		for _, e := range links {
			if strings.TrimPrefix(e.hdr.Linkname, "./") != regs[0].name() {
				t.Errorf("hardlink %s -> %s, want -> %s", e.name(), e.hdr.Linkname, regs[0].name())
			}
			if e.hdr.Size != 0 || len(e.data) != 0 {
				t.Errorf("hardlink %s carries data", e.name())
			}
		}
		applied := t.TempDir()
		applyOCI(t, applied, es)
		checkMounted(t, st, l.ID, applied)
		var fst, hst syscall.Stat_t
		must(t, syscall.Stat(filepath.Join(applied, "f"), &fst))
		must(t, syscall.Stat(filepath.Join(applied, "dir/h"), &hst))
		if fst.Ino != hst.Ino || fst.Nlink != 3 {
			t.Errorf("applied layer: f and dir/h are not one inode with 3 links (%d/%d, nlink %d)", fst.Ino, hst.Ino, fst.Nlink)
		}

		// A new link to a file of the parent layer.
		s2, err := st.Prepare(l.ID)
		must(t, err)
		must(t, os.Link(filepath.Join(s2.Path, "f"), filepath.Join(s2.Path, "k")))
		l2, err := st.Commit(ctx, s2)
		must(t, err)
		es2 := layerEntries(t, st, l2)
		t.Logf("layer 2: %v", names(es2))
		applyOCI(t, applied, es2)
		if data, err := os.ReadFile(filepath.Join(applied, "k")); err != nil || string(data) != "shared" {
			t.Errorf("k: %q, %v", data, err)
		}
		if driver == "overlay" {
			// The upper directory holds the copied-up f and k as one inode.
			k := mustFind(t, es2, "k")
			fe := mustFind(t, es2, "f")
			if !(k.hdr.Typeflag == tar.TypeLink && k.hdr.Linkname == fe.hdr.Name) &&
				!(fe.hdr.Typeflag == tar.TypeLink && fe.hdr.Linkname == k.hdr.Name) {
				t.Errorf("overlay: k and f should be a file and a hardlink to it: k %c->%q, f %c->%q",
					k.hdr.Typeflag, k.hdr.Linkname, fe.hdr.Typeflag, fe.hdr.Linkname)
			}
		}
	})
}

// capability returns a version-2 security.capability value granting cap
// in the permitted and effective sets, as setcap writes it.
func capability(bit uint) []byte {
	b := make([]byte, 20)
	binary.LittleEndian.PutUint32(b[0:], 0x02000000|0x000001) // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
	binary.LittleEndian.PutUint32(b[4:], 1<<bit)              // permitted, low word
	return b
}

func TestCapabilityXattr(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		st := openStore(t, driver, Compression{})
		s, err := st.Prepare("")
		must(t, err)
		p := filepath.Join(s.Path, "bin/ping")
		writeFile(t, p, "ping", 0o755)
		capNetRaw := capability(13)
		if err := unix.Setxattr(p, "security.capability", capNetRaw, 0); err != nil {
			t.Fatalf("setcap: %v", err)
		}
		l, err := st.Commit(context.Background(), s)
		must(t, err)
		es := layerEntries(t, st, l)
		e := mustFind(t, es, "bin/ping")
		if got := e.hdr.PAXRecords["SCHILY.xattr.security.capability"]; got != string(capNetRaw) {
			t.Fatalf("security.capability in the layer: %x, want %x", got, capNetRaw)
		}
		applied := t.TempDir()
		applyOCI(t, applied, es)
		checkMounted(t, st, l.ID, applied)

		// And storage applies it back from the blob.
		other := openStore(t, "vfs", Compression{})
		rc, err := st.Blobs.Open(l.Digest)
		must(t, err)
		defer rc.Close()
		id := fmt.Sprintf("%064x", sha256.Sum256([]byte("cap")))
		_, err = other.PutLayer(id, "", rc)
		must(t, err)
		root, release, err := other.Mount(id)
		must(t, err)
		defer release()
		buf := make([]byte, 64)
		n, err := unix.Getxattr(filepath.Join(root, "bin/ping"), "security.capability", buf)
		if err != nil || !bytes.Equal(buf[:n], capNetRaw) {
			t.Errorf("capability after PutLayer: %x, %v", buf[:max(n, 0)], err)
		}
	})
}

// makeTar builds an uncompressed layer tar.
func makeTar(t *testing.T, es ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range es {
		h := *e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.data))
		}
		if h.ModTime.IsZero() {
			h.ModTime = fixed
		}
		must(t, tw.WriteHeader(&h))
		if _, err := tw.Write(e.data); err != nil {
			t.Fatal(err)
		}
	}
	must(t, tw.Close())
	return buf.Bytes()
}

func dirEntry(name string) entry {
	return entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o755}}
}

func fileEntry(name, data string) entry {
	return entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: name, Mode: 0o644}, data: []byte(data)}
}

func gzipBytes(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	_, err := zw.Write(b)
	must(t, err)
	must(t, zw.Close())
	return buf.Bytes()
}

func zstdBytes(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	must(t, err)
	_, err = zw.Write(b)
	must(t, err)
	must(t, zw.Close())
	return buf.Bytes()
}

func layerID(s string) string { return fmt.Sprintf("%064x", sha256.Sum256([]byte(s))) }

func TestPutLayer(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		st := openStore(t, driver, Compression{})
		base := makeTar(t,
			dirEntry("etc/"),
			fileEntry("etc/os-release", "ID=test\n"),
			fileEntry("etc/remove-me", "bye"),
			entry{hdr: &tar.Header{Typeflag: tar.TypeSymlink, Name: "etc/link", Linkname: "os-release"}},
		)
		id1, id2, id3 := layerID("base"), layerID("top"), layerID("zstd")
		if stored, err := st.PutLayer(id1, "", bytes.NewReader(gzipBytes(t, base))); err != nil || !stored {
			t.Fatalf("PutLayer of a gzip blob: stored %v, %v", stored, err)
		}
		if !st.Exists(id1) {
			t.Fatal("layer missing after PutLayer")
		}
		// Stored once: a second put is a no-op, even with other content.
		again := strings.NewReader("not a tar")
		if stored, err := st.PutLayer(id1, "", again); err != nil || stored {
			t.Errorf("second PutLayer of the same id: stored %v, %v; want false, nil", stored, err)
		}
		if again.Len() != len("not a tar") {
			t.Error("second PutLayer of the same id read the blob")
		}
		top := makeTar(t,
			dirEntry("etc/"),
			fileEntry("etc/.wh.remove-me", ""),
			fileEntry("etc/added", "new"),
		)
		if _, err := st.PutLayer(id2, id1, bytes.NewReader(top)); err != nil {
			t.Fatalf("PutLayer of an uncompressed blob: %v", err)
		}
		if _, err := st.PutLayer(id3, id2, bytes.NewReader(zstdBytes(t, makeTar(t, fileEntry("z", "zstd"))))); err != nil {
			t.Fatalf("PutLayer of a zstd blob: %v", err)
		}
		p, release, err := st.Mount(id3)
		must(t, err)
		for f, want := range map[string]string{"etc/os-release": "ID=test\n", "etc/added": "new", "etc/link": "ID=test\n", "z": "zstd"} {
			if data, err := os.ReadFile(filepath.Join(p, f)); err != nil || string(data) != want {
				t.Errorf("%s: %q, %v; want %q", f, data, err, want)
			}
		}
		if _, err := os.Lstat(filepath.Join(p, "etc/remove-me")); !os.IsNotExist(err) {
			t.Errorf("whited-out etc/remove-me is visible: %v", err)
		}
		if _, err := os.Lstat(filepath.Join(p, "etc/.wh.remove-me")); !os.IsNotExist(err) {
			t.Errorf("the whiteout itself is visible: %v", err)
		}
		release()

		// A snapshot on a put layer diffs against it.
		s, err := st.Prepare(id3)
		must(t, err)
		writeFile(t, filepath.Join(s.Path, "etc/added"), "changed", 0o644)
		l, err := st.Commit(context.Background(), s)
		must(t, err)
		es := layerEntries(t, st, l)
		if e := mustFind(t, es, "etc/added"); string(e.data) != "changed" {
			t.Errorf("etc/added: %q", e.data)
		}
		for _, n := range []string{"etc/os-release", "z", "etc/link"} {
			if _, ok := find(es, n); ok {
				t.Errorf("unchanged %s in the layer: %v", n, names(es))
			}
		}

		// Garbage is refused and leaves no layer behind.
		bad := layerID("bad")
		if _, err := st.PutLayer(bad, "", bytes.NewReader(gzipBytes(t, []byte("this is not a tar archive, just text that goes on")))); err == nil {
			t.Error("PutLayer of a non-tar blob succeeded")
		}
		if st.Exists(bad) {
			t.Error("a failed PutLayer left a layer")
		}
		// An unknown parent is an error.
		if _, err := st.PutLayer(layerID("orphan"), layerID("no-such-parent"), bytes.NewReader(top)); err == nil {
			t.Error("PutLayer on a missing parent succeeded")
		}
	})
}

// TestPutLayerConcurrent: builds running stages in parallel put the same
// base layer at once; all succeed and the layer is stored once.
func TestPutLayerConcurrent(t *testing.T) {
	t.Parallel()
	st := openStore(t, "vfs", Compression{})
	blob := gzipBytes(t, makeTar(t, fileEntry("f", "same")))
	id := layerID("concurrent")
	var wg sync.WaitGroup
	errs := make([]error, 8)
	stored := make([]bool, 8)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			stored[i], errs[i] = st.PutLayer(id, "", bytes.NewReader(blob))
		}()
	}
	wg.Wait()
	n := 0
	for i, err := range errs {
		if err != nil {
			t.Errorf("PutLayer #%d: %v", i, err)
		}
		if stored[i] {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d of the concurrent PutLayer calls stored the layer, want exactly 1", n)
	}
	if !st.Exists(id) {
		t.Error("layer missing")
	}
}

func TestMount(t *testing.T) {
	t.Parallel()
	st := openStore(t, "", Compression{})
	t.Run("scratch", func(t *testing.T) {
		p, release, err := st.Mount("")
		must(t, err)
		ents, err := os.ReadDir(p)
		if err != nil || len(ents) != 0 {
			t.Fatalf("scratch mount should be an empty directory: %v %v", ents, err)
		}
		release()
		if _, err := os.Stat(p); !os.IsNotExist(err) {
			t.Errorf("scratch directory still there after release: %v", err)
		}
	})
	t.Run("unknown layer", func(t *testing.T) {
		if _, _, err := st.Mount(layerID("nope")); err == nil {
			t.Error("mounting an unknown layer succeeded")
		}
	})
	t.Run("committed layer", func(t *testing.T) {
		s, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s.Path, "app/config"), "cfg", 0o644)
		l, err := st.Commit(context.Background(), s)
		must(t, err)
		p, release, err := st.Mount(l.ID)
		must(t, err)
		if data, err := os.ReadFile(filepath.Join(p, "app/config")); err != nil || string(data) != "cfg" {
			t.Errorf("app/config: %q, %v", data, err)
		}
		// Two mounts at once (COPY --from in two stages) both work.
		p2, release2, err := st.Mount(l.ID)
		must(t, err)
		if _, err := os.Stat(filepath.Join(p2, "app/config")); err != nil {
			t.Error(err)
		}
		release2()
		if _, err := os.Stat(filepath.Join(p, "app/config")); err != nil {
			t.Errorf("first mount gone after releasing the second: %v", err)
		}
		release()
		if st.Driver() == "overlay" && isMountPoint(t, p) {
			t.Errorf("%s still mounted after release", p)
		}
	})
}

func isMountPoint(t *testing.T, p string) bool {
	t.Helper()
	data, err := os.ReadFile("/proc/self/mountinfo")
	must(t, err)
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && unescapeMount(f[4]) == p {
			return true
		}
	}
	return false
}

func TestRemove(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		st := openStore(t, driver, Compression{})
		s, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s.Path, "junk"), "x", 0o644)
		if driver == "overlay" && !isMountPoint(t, s.Path) {
			t.Errorf("prepared overlay snapshot %s is not a mount point", s.Path)
		}
		must(t, st.Remove(s))
		if st.Exists(s.ID) {
			t.Error("snapshot still exists after Remove")
		}
		if isMountPoint(t, s.Path) {
			t.Error("snapshot still mounted after Remove")
		}
		if err := st.Remove(s); err == nil {
			t.Error("removing twice succeeded")
		}

		// Delete of a committed layer.
		s2, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s2.Path, "f"), "x", 0o644)
		l, err := st.Commit(context.Background(), s2)
		must(t, err)
		must(t, st.Delete(l.ID))
		if st.Exists(l.ID) {
			t.Error("layer exists after Delete")
		}
	})
}

func TestZstdLayer(t *testing.T) {
	t.Parallel()
	for _, c := range []Compression{{Algorithm: "zstd"}, {Algorithm: "zstd", Level: 19}} {
		t.Run(fmt.Sprint(c.Level), func(t *testing.T) {
			st := openStore(t, "", c)
			s, err := st.Prepare("")
			must(t, err)
			content := strings.Repeat("compress me ", 1000)
			writeFile(t, filepath.Join(s.Path, "data.txt"), content, 0o644)
			l, err := st.Commit(context.Background(), s)
			must(t, err)
			if l.MediaType != types.OCILayerZStd {
				t.Errorf("media type %s, want %s", l.MediaType, types.OCILayerZStd)
			}
			es := layerEntries(t, st, l) // checks the zstd magic and the diffID
			if e := mustFind(t, es, "data.txt"); string(e.data) != content {
				t.Error("data.txt content differs")
			}
			if l.Size >= int64(len(content)) {
				t.Errorf("blob of %d bytes for %d bytes of repetitive text: not compressed", l.Size, len(content))
			}
		})
	}
	t.Run("gzip level", func(t *testing.T) {
		st := openStore(t, "", Compression{Algorithm: "gzip", Level: 9})
		s, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s.Path, "f"), "gz", 0o644)
		l, err := st.Commit(context.Background(), s)
		must(t, err)
		if l.MediaType != types.OCILayer {
			t.Errorf("media type %s", l.MediaType)
		}
		mustFind(t, layerEntries(t, st, l), "f")
	})
	t.Run("unknown algorithm", func(t *testing.T) {
		st := openStore(t, "", Compression{Algorithm: "lz4"})
		s, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s.Path, "f"), "x", 0o644)
		if _, err := st.Commit(context.Background(), s); err == nil || !strings.Contains(err.Error(), "lz4") {
			t.Errorf("Commit with compression lz4: %v, want an error naming it", err)
		}
		if files := blobFiles(t, st); len(files) != 0 {
			t.Errorf("failed commit left blob files: %v", files)
		}
		must(t, st.Remove(s))
	})
}

// TestReproducible: the same files with the same times give the same
// layer, byte for byte, whatever snapshot they were written in.
func TestReproducible(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		st := openStore(t, driver, Compression{})
		var layers []*Layer
		for range 2 {
			s, err := st.Prepare("")
			must(t, err)
			writeFile(t, filepath.Join(s.Path, "usr/bin/app"), "binary", 0o755)
			writeFile(t, filepath.Join(s.Path, "etc/app.conf"), "conf", 0o644)
			must(t, os.Symlink("app", filepath.Join(s.Path, "usr/bin/app2")))
			ts := []unix.Timespec{unix.NsecToTimespec(fixed.UnixNano()), unix.NsecToTimespec(fixed.UnixNano())}
			for _, p := range []string{"usr/bin/app2", "usr/bin/app", "etc/app.conf", "usr/bin", "usr", "etc"} {
				must(t, unix.UtimesNanoAt(unix.AT_FDCWD, filepath.Join(s.Path, p), ts, unix.AT_SYMLINK_NOFOLLOW))
			}
			time.Sleep(10 * time.Millisecond) // different ctimes, which must not matter
			l, err := st.Commit(context.Background(), s)
			must(t, err)
			layers = append(layers, l)
		}
		if layers[0].DiffID != layers[1].DiffID {
			t.Errorf("same content, different diffIDs: %s %s", layers[0].DiffID, layers[1].DiffID)
		}
		if layers[0].Digest != layers[1].Digest {
			t.Errorf("same content, different digests: %s %s", layers[0].Digest, layers[1].Digest)
		}
	})
}

func TestCommitCanceled(t *testing.T) {
	t.Parallel()
	st := openStore(t, "", Compression{})
	s, err := st.Prepare("")
	must(t, err)
	writeFile(t, filepath.Join(s.Path, "f"), "x", 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := st.Commit(ctx, s); err == nil {
		t.Error("Commit with a canceled context succeeded")
	}
	if files := blobFiles(t, st); len(files) != 0 {
		t.Errorf("canceled commit left blob files: %v", files)
	}
	must(t, st.Remove(s))
}

// TestEpoch: with SOURCE_DATE_EPOCH, new entries get the epoch as mtime
// while older files keep theirs, on both drivers.
func TestEpoch(t *testing.T) {
	t.Parallel()
	forDrivers(t, func(t *testing.T, driver string) {
		epoch := time.Date(2020, 1, 1, 0, 0, 0, 0, time.UTC)
		st := openStoreOpts(t, Options{Driver: driver, Epoch: &epoch})
		s1, err := st.Prepare("")
		must(t, err)
		writeFile(t, filepath.Join(s1.Path, "dir/keep"), "k", 0o644)
		l1, err := st.Commit(context.Background(), s1)
		must(t, err)
		for _, e := range layerEntries(t, st, l1) {
			if !e.hdr.ModTime.Equal(epoch) {
				t.Errorf("%s: mtime %v, want the epoch", e.name(), e.hdr.ModTime)
			}
		}

		s2, err := st.Prepare(l1.ID)
		must(t, err)
		old := time.Date(2010, 6, 1, 0, 0, 0, 0, time.UTC)
		writeFile(t, filepath.Join(s2.Path, "old"), "o", 0o644)
		must(t, os.Chtimes(filepath.Join(s2.Path, "old"), old, old))
		writeFile(t, filepath.Join(s2.Path, "new"), "n", 0o644)
		// Touched and undone: still pruned with an epoch.
		writeFile(t, filepath.Join(s2.Path, "dir/tmp"), "", 0o644)
		must(t, os.Remove(filepath.Join(s2.Path, "dir/tmp")))
		p, release, err := st.Mount(l1.ID)
		must(t, err)
		fi, err := os.Stat(filepath.Join(p, "dir"))
		release()
		must(t, err)
		must(t, os.Chtimes(filepath.Join(s2.Path, "dir"), fi.ModTime(), fi.ModTime()))
		l2, err := st.Commit(context.Background(), s2)
		must(t, err)
		es := layerEntries(t, st, l2)
		if got := names(es); !slices.Equal(got, []string{"new", "old"}) {
			t.Errorf("entries %v, want [new old]", got)
		}
		if e := mustFind(t, es, "old"); !e.hdr.ModTime.Equal(old) {
			t.Errorf("old: mtime %v, want %v", e.hdr.ModTime, old)
		}
		if e := mustFind(t, es, "new"); !e.hdr.ModTime.Equal(epoch) {
			t.Errorf("new: mtime %v, want the epoch", e.hdr.ModTime)
		}
	})
}

// emptyTarDiffID is the diffID of a tar with no entries (1024 zero bytes),
// the layer Docker keeps for a step that changed nothing.
const emptyTarDiffID = "sha256:5f70bf18a086007016e948b04aed3b82103a36bea41755b6cddfaf10ace3c6ef"

func TestEmptyLayer(t *testing.T) {
	t.Parallel()
	for _, c := range []Compression{{}, {Algorithm: "zstd"}} {
		t.Run(c.Algorithm, func(t *testing.T) {
			st := openStore(t, "vfs", c)
			s, err := st.Prepare("")
			must(t, err)
			l, err := st.Commit(context.Background(), s)
			must(t, err)
			if !l.Empty {
				t.Fatal("no change should commit as Empty")
			}
			el, err := st.EmptyLayer(l.ID)
			if err != nil {
				t.Fatalf("EmptyLayer: %v", err)
			}
			if el.ID != l.ID || el.Empty {
				t.Errorf("empty layer %+v: want the snapshot ID and a blob", el)
			}
			if el.DiffID.String() != emptyTarDiffID {
				t.Errorf("diffID %s, want %s", el.DiffID, emptyTarDiffID)
			}
			if es := layerEntries(t, st, el); len(es) != 0 { // checks digest, size, media type
				t.Errorf("entries %v", names(es))
			}
			// Deterministic: the same blob every time.
			el2, err := st.EmptyLayer(l.ID)
			must(t, err)
			if el2.Digest != el.Digest {
				t.Errorf("two empty layers, two digests: %s %s", el.Digest, el2.Digest)
			}
		})
	}
}
