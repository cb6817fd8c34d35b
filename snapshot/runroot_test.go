package snapshot

import (
	"bufio"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

// withShm points shmDir at a private tmpfs directory for one test (not
// parallel: shmDir is global).
func withShm(t *testing.T) string {
	t.Helper()
	var fs unix.Statfs_t
	if err := unix.Statfs("/dev/shm", &fs); err != nil || fs.Type != unix.TMPFS_MAGIC {
		t.Skip("no tmpfs at /dev/shm")
	}
	dir, err := os.MkdirTemp("/dev/shm", "test-runroot-")
	if err != nil {
		t.Skip(err)
	}
	old := shmDir
	shmDir = dir
	t.Cleanup(func() {
		shmDir = old
		os.RemoveAll(dir)
	})
	return dir
}

func TestRunRoot(t *testing.T) {
	shm := withShm(t)
	base := t.TempDir()
	a, b := filepath.Join(base, "a"), filepath.Join(base, "b")
	ra := runRootFor(a)
	if filepath.Dir(ra) != shm || !strings.HasPrefix(filepath.Base(ra), "rbuild-") {
		t.Fatalf("runtime state of %s in %s, want it on tmpfs in %s", a, ra, shm)
	}
	fi, err := os.Stat(ra)
	if err != nil || !fi.IsDir() || fi.Mode().Perm() != 0o700 {
		t.Fatalf("runtime state directory: %v, %v", fi, err)
	}
	if again := runRootFor(a); again != ra {
		t.Errorf("the same root gave %s, then %s", ra, again)
	}
	must(t, os.Symlink(a, filepath.Join(base, "link")))
	if viaLink := runRootFor(filepath.Join(base, "link")); viaLink != ra {
		t.Errorf("the root through a symlink gave %s, want %s", viaLink, ra)
	}
	rel, err := filepath.Rel(must1(os.Getwd()), a)
	must(t, err)
	if viaRel := runRootFor(rel); viaRel != ra {
		t.Errorf("the root as a relative path gave %s, want %s", viaRel, ra)
	}
	rb := runRootFor(b)
	if rb == ra {
		t.Errorf("two roots share the runtime state %s", ra)
	}

	// Someone else's (or a link) at the name: fall back to root/run.
	must(t, os.RemoveAll(rb))
	must(t, os.Symlink(t.TempDir(), rb))
	if got := runRootFor(b); got != filepath.Join(b, "run") {
		t.Errorf("with a symlink planted at %s: %s, want %s", rb, got, filepath.Join(b, "run"))
	}
	must(t, os.Remove(rb))
	must(t, os.Mkdir(rb, 0o777))
	must(t, os.Chmod(rb, 0o777))
	if got := runRootFor(b); got != filepath.Join(b, "run") {
		t.Errorf("with an open directory at %s: %s, want %s", rb, got, filepath.Join(b, "run"))
	}
	must(t, os.Remove(rb))

	// A root removed, or removed and made anew, loses its state at the
	// next Open of any store; a live root and a directory still being
	// created (no record yet) keep theirs.
	rb = runRootFor(b)
	c := filepath.Join(base, "c")
	rc := runRootFor(c)
	creating := filepath.Join(shm, "rbuild-0000000000000000")
	must(t, os.Mkdir(creating, 0o700))
	must(t, os.RemoveAll(b))
	must(t, os.RemoveAll(c))
	must(t, os.Mkdir(c, 0o755))
	rc2 := runRootFor(c)
	if rc2 == rc {
		t.Errorf("a root made anew got its predecessor's state %s", rc)
	}
	for dir, want := range map[string]bool{ra: true, rb: false, rc: false, rc2: true, creating: true} {
		if _, err := os.Stat(dir); (err == nil) != want {
			t.Errorf("%s exists: %v, want %v", dir, err == nil, want)
		}
	}
}

func TestRunRootNoTmpfs(t *testing.T) {
	old := shmDir
	shmDir = t.TempDir() // not a tmpfs
	t.Cleanup(func() { shmDir = old })
	root := filepath.Join(t.TempDir(), "state")
	if got := runRootFor(root); got != filepath.Join(root, "run") {
		t.Errorf("without tmpfs: %s, want %s", got, filepath.Join(root, "run"))
	}
}

func must1[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// A snapshot's overlay mount is volatile where the kernel has the option:
// unmounting it (Commit) does not sync the file system.
func TestVolatileMount(t *testing.T) {
	t.Parallel()
	requireOverlay(t)
	if !volatileOverlay() {
		t.Skip("the kernel has no volatile overlay mounts")
	}
	st := openStore(t, "overlay", Compression{})
	snap, err := st.Prepare("")
	must(t, err)
	defer st.Remove(snap)
	f, err := os.Open("/proc/self/mountinfo")
	must(t, err)
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) > 5 && unescapeMount(fields[4]) == snap.Path {
			if !strings.Contains(sc.Text(), "volatile") {
				t.Errorf("snapshot mount without volatile: %s", sc.Text())
			}
			return
		}
	}
	t.Fatalf("snapshot %s is not mounted", snap.Path)
}

// Processes opening a new state directory at once agree on its token, and
// so on its runtime state.
func TestRootTokenConcurrent(t *testing.T) {
	dir := t.TempDir()
	tokens := make([]string, 8)
	var wg sync.WaitGroup
	for i := range tokens {
		wg.Add(1)
		go func() {
			defer wg.Done()
			tokens[i] = must1(rootToken(dir))
		}()
	}
	wg.Wait()
	for _, tok := range tokens {
		if tok == "" || tok != tokens[0] {
			t.Fatalf("tokens differ: %q", tokens)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, tokenFile+"-*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}
}
