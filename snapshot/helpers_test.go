package snapshot

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.podman.io/storage/pkg/reexec"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	// go.podman.io/storage re-executes the test binary for some of its
	// helpers (applying layers in a chroot, long overlay mount options).
	if reexec.Init() {
		return
	}
	// Those helpers are this binary: built with -race, each would sleep
	// a second at exit (the race runtime's atexit_sleep_ms default).
	if os.Getenv("GORACE") == "" {
		os.Setenv("GORACE", "atexit_sleep_ms=0")
	}
	os.Exit(m.Run())
}

// requireRoot skips store tests when not root: go.podman.io/storage needs
// either root or a user namespace (rbuild re-execs into one, which a test
// binary cannot do cheaply). CI runs these tests as root.
func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the layer store needs root (or a user namespace); run the tests as root")
	}
}

// openStore opens a store under a fresh temporary root with the given
// driver ("" = default choice). Cleanup closes the store and unmounts
// anything left under the root before the temporary directory is removed.
func openStore(t testing.TB, driver string, comp Compression) *Store {
	t.Helper()
	return openStoreOpts(t, Options{Driver: driver, Compression: comp})
}

// openStoreOpts is openStore with more options; Root is set here.
func openStoreOpts(t testing.TB, opts Options) *Store {
	t.Helper()
	requireRoot(t)
	root := t.TempDir()
	opts.Root = root
	st, err := Open(opts)
	if err != nil {
		t.Fatalf("Open(driver %q): %v", opts.Driver, err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Errorf("closing the store: %v", err)
		}
		unmountUnder(t, root)
		removeRunRoot(t, st)
	})
	return st
}

// unmountUnder detaches every mount below dir, deepest first, so that the
// temporary directory can be removed even when a test failed half-way.
func unmountUnder(t testing.TB, dir string) {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Logf("reading mountinfo: %v", err)
		return
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMount(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	for _, mp := range mounts {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil {
			t.Logf("unmounting %s: %v", mp, err)
		}
	}
}

// requireOverlay skips a test that needs root and a working overlay
// mount (both hold in CI).
func requireOverlay(t *testing.T) {
	t.Helper()
	requireRoot(t)
	if ok, why := overlayUsable(t); !ok {
		t.Skip(why)
	}
}

// removeRunRoot removes a closed store's runtime state when it is on tmpfs
// (the store would collect it later, once its root is gone).
func removeRunRoot(t testing.TB, st *Store) {
	t.Helper()
	if st.runRoot != filepath.Join(st.root, "run") {
		if err := os.RemoveAll(st.runRoot); err != nil {
			t.Errorf("removing the runtime state: %v", err)
		}
	}
}

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// entry is one tar entry of a layer with its content.
type entry struct {
	hdr  *tar.Header
	data []byte
}

func (e entry) name() string {
	return strings.TrimSuffix(strings.TrimPrefix(e.hdr.Name, "./"), "/")
}

// readTar reads all entries of an uncompressed tar.
func readTar(t *testing.T, r io.Reader) []entry {
	t.Helper()
	tr := tar.NewReader(r)
	var out []entry
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatalf("reading layer tar: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatalf("reading %s: %v", hdr.Name, err)
		}
		out = append(out, entry{hdr: hdr, data: data})
	}
}

func sha(b []byte) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", sha256.Sum256(b))}
}

// layerEntries checks a committed layer's blob against its descriptor
// (digest and size of the stored blob, diffID of the uncompressed tar,
// media type against the compression magic) and returns its entries.
func layerEntries(t *testing.T, st *Store, l *Layer) []entry {
	t.Helper()
	if l.Empty {
		t.Fatalf("layer %s is empty", l.ID)
	}
	blob, err := os.ReadFile(st.Blobs.Path(l.Digest))
	if err != nil {
		t.Fatalf("reading layer blob: %v", err)
	}
	if got := sha(blob); got != l.Digest {
		t.Errorf("blob digest %s, layer says %s", got, l.Digest)
	}
	if int64(len(blob)) != l.Size {
		t.Errorf("blob size %d, layer says %d", len(blob), l.Size)
	}
	switch l.MediaType {
	case types.OCILayer:
		if !bytes.HasPrefix(blob, []byte{0x1f, 0x8b}) {
			t.Errorf("media type %s but the blob is not gzip: % x", l.MediaType, blob[:4])
		}
	case types.OCILayerZStd:
		if !bytes.HasPrefix(blob, []byte{0x28, 0xb5, 0x2f, 0xfd}) {
			t.Errorf("media type %s but the blob is not zstd: % x", l.MediaType, blob[:4])
		}
	default:
		t.Errorf("unexpected media type %s", l.MediaType)
	}
	rc, err := st.Blobs.V1(*l).Uncompressed()
	if err != nil {
		t.Fatalf("opening uncompressed layer: %v", err)
	}
	defer rc.Close()
	raw, err := io.ReadAll(rc)
	if err != nil {
		t.Fatalf("decompressing layer: %v", err)
	}
	if got := sha(raw); got != l.DiffID {
		t.Errorf("diffID %s, layer says %s", got, l.DiffID)
	}
	return readTar(t, bytes.NewReader(raw))
}

// names lists the entry names, directories with a trailing slash.
func names(es []entry) []string {
	var out []string
	for _, e := range es {
		n := e.name()
		if e.hdr.Typeflag == tar.TypeDir {
			n += "/"
		}
		out = append(out, n)
	}
	return out
}

func find(es []entry, name string) (entry, bool) {
	for _, e := range es {
		if e.name() == name {
			return e, true
		}
	}
	return entry{}, false
}

func mustFind(t *testing.T, es []entry, name string) entry {
	t.Helper()
	e, ok := find(es, name)
	if !ok {
		t.Fatalf("no entry %q in the layer; it has %v", name, names(es))
	}
	return e
}

// applyOCI applies a layer to dir the way the OCI image spec defines a
// changeset: whiteouts (".wh.NAME") delete NAME from the layers below, an
// opaque whiteout (".wh..wh..opq") empties its directory of what the
// layers below put there, and every other entry replaces what was at its
// path (a directory entry over a directory only updates its metadata).
// It is deliberately independent of go.podman.io/storage.
func applyOCI(t *testing.T, dir string, es []entry) {
	t.Helper()
	// Whiteouts apply to the lower layers only: handle them first.
	for _, e := range es {
		name := e.name()
		base, parent := path.Base(name), path.Dir(name)
		switch {
		case base == ".wh..wh..opq":
			d := filepath.Join(dir, parent)
			if fi, err := os.Lstat(d); err != nil || !fi.IsDir() {
				continue // nothing below to hide (a new directory, maybe over a file)
			}
			children, err := os.ReadDir(d)
			if err != nil {
				t.Fatalf("opaque whiteout in %s: %v", parent, err)
			}
			for _, c := range children {
				if err := os.RemoveAll(filepath.Join(d, c.Name())); err != nil {
					t.Fatal(err)
				}
			}
		case strings.HasPrefix(base, ".wh."):
			target := filepath.Join(dir, parent, strings.TrimPrefix(base, ".wh."))
			if _, err := os.Lstat(target); err != nil {
				t.Errorf("whiteout %s hides nothing in the layers below", name)
			}
			if err := os.RemoveAll(target); err != nil {
				t.Fatal(err)
			}
		}
	}
	var dirs []entry
	for _, e := range es {
		name := e.name()
		if strings.HasPrefix(path.Base(name), ".wh.") || name == "" {
			continue
		}
		p := filepath.Join(dir, name)
		if fi, err := os.Lstat(p); err == nil && !(fi.IsDir() && e.hdr.Typeflag == tar.TypeDir) {
			if err := os.RemoveAll(p); err != nil {
				t.Fatal(err)
			}
		}
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		h := e.hdr
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.Mkdir(p, 0o755); err != nil && !os.IsExist(err) {
				t.Fatal(err)
			}
			dirs = append(dirs, e)
		case tar.TypeReg:
			if err := os.WriteFile(p, e.data, 0o600); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(h.Linkname, p); err != nil {
				t.Fatal(err)
			}
		case tar.TypeChar, tar.TypeBlock, tar.TypeFifo:
			mode := map[byte]uint32{tar.TypeChar: unix.S_IFCHR, tar.TypeBlock: unix.S_IFBLK, tar.TypeFifo: unix.S_IFIFO}[h.Typeflag]
			if err := unix.Mknod(p, mode|0o600, int(unix.Mkdev(uint32(h.Devmajor), uint32(h.Devminor)))); err != nil {
				t.Fatal(err)
			}
		case tar.TypeLink:
			target := filepath.Join(dir, strings.TrimPrefix(h.Linkname, "./"))
			if err := os.Link(target, p); err != nil {
				t.Fatalf("hardlink %s -> %s: %v", name, h.Linkname, err)
			}
			continue // shares the target's inode and metadata
		default:
			t.Fatalf("%s: unexpected type %q in a layer", name, h.Typeflag)
		}
		if err := os.Lchown(p, h.Uid, h.Gid); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeSymlink {
			if err := unix.Chmod(p, uint32(h.Mode&0o7777)); err != nil {
				t.Fatal(err)
			}
		}
		for k, v := range h.PAXRecords {
			if x, ok := strings.CutPrefix(k, "SCHILY.xattr."); ok {
				if err := unix.Lsetxattr(p, x, []byte(v), 0); err != nil {
					t.Fatalf("setting %s on %s: %v", x, name, err)
				}
			}
		}
		if h.Typeflag == tar.TypeReg {
			if err := os.Chtimes(p, h.ModTime, h.ModTime); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Directory times last: creating children changes them.
	for i := len(dirs) - 1; i >= 0; i-- {
		h := dirs[i].hdr
		if err := os.Chtimes(filepath.Join(dir, dirs[i].name()), h.ModTime, h.ModTime); err != nil {
			t.Fatal(err)
		}
	}
}

// tree describes every file below root: type, permissions and special
// bits, owner, content digest or link target, the file capability, and
// the mtime (to the second) of regular files.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.Walk(root, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if p == root {
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		st := fi.Sys().(*syscall.Stat_t)
		desc := fmt.Sprintf("%s %04o %d:%d", fi.Mode().Type(), st.Mode&0o7777, st.Uid, st.Gid)
		if fi.Mode()&os.ModeDevice != 0 {
			desc += fmt.Sprintf(" dev=%d,%d", unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
		switch {
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			desc += fmt.Sprintf(" %s mtime=%d", sha(data).Hex[:12], fi.ModTime().Unix())
		case fi.Mode()&os.ModeSymlink != 0:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			desc += " -> " + target
		}
		if fi.Mode()&os.ModeSymlink == 0 {
			buf := make([]byte, 256)
			if n, err := unix.Lgetxattr(p, "security.capability", buf); err == nil {
				desc += fmt.Sprintf(" cap=%x", buf[:n])
			}
		}
		out[filepath.ToSlash(rel)] = desc
		return nil
	})
	if err != nil {
		t.Fatalf("walking %s: %v", root, err)
	}
	return out
}

func compareTrees(t *testing.T, what string, got, want map[string]string) {
	t.Helper()
	var keys []string
	for k := range want {
		keys = append(keys, k)
	}
	for k := range got {
		if _, ok := want[k]; !ok {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	for _, k := range keys {
		if got[k] != want[k] {
			t.Errorf("%s: %s: got %q, want %q", what, k, got[k], want[k])
		}
	}
}

// Helpers that change a snapshot's files, failing the test on error.

func writeFile(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // beat the umask
		t.Fatal(err)
	}
}

func mkdir(t *testing.T, p string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(p, mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// fixed is a whole-second timestamp used to make trees reproducible.
var fixed = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
