package snapshot

import (
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// A step's snapshot must cost what the step changed (issue 4). Measured on
// a busy machine, what a one-file commit cost was not the diff but disk
// flushes: go.podman.io/storage fsyncs its mount-count file on every mount
// and unmount, its layer list on every new layer, and unmounting an
// overlay syncs the whole file system under it. Each of these waits for
// the file system's journal, behind every other job's writes. So, in the
// step path, nothing syncs:
//
//   - the runtime state (mount counts and their lock, the overlay driver's
//     probes) lives on tmpfs, see runRootFor;
//   - snapshot layers are created volatile: storage writes their records
//     without fsync (base layers, from PutLayer, are synced as before);
//   - overlay mounts are volatile: unmounting does not sync the upper
//     file system, and fsync inside a RUN step returns at once.
//
// The price is durability across a host crash: layers committed in the
// last seconds before a power loss may be incomplete on disk. The local
// store is a cache of what the registry and the blob store hold, and blobs
// are not fsynced either; a build cares about a crash-free run being fast.

// volatileOverlay reports whether overlay mounts can take the "volatile"
// option (Linux 5.10 and later).
func volatileOverlay() bool {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return false
	}
	var major, minor int
	if _, err := fmt.Sscanf(unix.ByteSliceToString(u.Release[:]), "%d.%d", &major, &minor); err != nil {
		return false
	}
	return major > 5 || major == 5 && minor >= 10
}

// shmDir is where runtime state goes when it is a tmpfs.
var shmDir = "/dev/shm"

// runRootFor picks the directory of the store's runtime state for the
// state directory root: on tmpfs (shmDir) when it can, so that writing it
// costs no disk flush and a reboot, which undoes every mount, also
// forgets the mount counts; root/run otherwise.
//
// Every process using the same root must find the same directory (the
// lock of the mount counts is in it), whatever its environment: the name
// derives from root's resolved path and the identity token kept in root
// (rootToken), nothing else. A root removed and made anew gets a new
// token, so it never inherits its predecessor's state (an inode number
// would not do: file systems reuse them at once). The directory must be a
// real directory of ours with mode 0700; shmDir is sticky, so nobody else
// can replace it once it is.
func runRootFor(root string) string {
	fallback := filepath.Join(root, "run")
	if err := os.MkdirAll(root, 0o700); err != nil {
		return fallback
	}
	abs, err := filepath.Abs(root)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return fallback
	}
	var sfs unix.Statfs_t
	if err := unix.Statfs(shmDir, &sfs); err != nil || sfs.Type != unix.TMPFS_MAGIC {
		return fallback
	}
	token, err := rootToken(abs)
	if err != nil {
		return fallback
	}
	collectRunRoots()
	record := fmt.Sprintf("%s\n%s\n", abs, token)
	sum := sha256.Sum256([]byte(record))
	dir := filepath.Join(shmDir, fmt.Sprintf("rbuild-%x", sum[:8]))
	if err := os.Mkdir(dir, 0o700); err != nil && !os.IsExist(err) {
		return fallback
	}
	if !ours(dir) {
		return fallback
	}
	// Record whose state this is, for collectRunRoots.
	rootFile := filepath.Join(dir, "root")
	if b, err := os.ReadFile(rootFile); err != nil || string(b) != record {
		tmp, err := os.CreateTemp(dir, "root-")
		if err != nil {
			return fallback
		}
		_, werr := tmp.WriteString(record)
		if err := tmp.Close(); werr != nil || err != nil || os.Rename(tmp.Name(), rootFile) != nil {
			_ = os.Remove(tmp.Name())
			return fallback
		}
	}
	return dir
}

// tokenFile holds a state directory's identity token.
const tokenFile = "runtime-id"

// rootToken returns the identity token of the state directory abs,
// creating it on first use. Concurrent first uses agree: the token is
// written to a temporary file and linked into place, and a process that
// loses the race reads the winner's.
func rootToken(abs string) (string, error) {
	p := filepath.Join(abs, tokenFile)
	if b, err := os.ReadFile(p); err == nil && len(b) > 0 {
		return strings.TrimSpace(string(b)), nil
	}
	var id [16]byte
	if _, err := rand.Read(id[:]); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(abs, tokenFile+"-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	_, werr := fmt.Fprintf(tmp, "%x\n", id)
	if err := tmp.Close(); werr != nil || err != nil {
		return "", errors.Join(werr, err)
	}
	if err := os.Link(tmp.Name(), p); err != nil && !os.IsExist(err) {
		return "", err
	}
	b, err := os.ReadFile(p)
	if err != nil || len(b) == 0 {
		return "", fmt.Errorf("reading %s: %v", p, err)
	}
	return strings.TrimSpace(string(b)), nil
}

// ours reports whether dir is a directory (not a link) owned by this
// process's user with no access for anyone else.
func ours(dir string) bool {
	fi, err := os.Lstat(dir)
	if err != nil || !fi.IsDir() {
		return false
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	return ok && int(st.Uid) == os.Geteuid() && fi.Mode().Perm()&0o077 == 0
}

// collectRunRoots removes the runtime state of state directories that no
// longer exist, or were made anew (a CI job's or a test's temporary
// root): tmpfs is memory.
// A directory without its root record (being created) is left alone.
func collectRunRoots() {
	dirs, err := filepath.Glob(filepath.Join(shmDir, "rbuild-*"))
	if err != nil {
		return
	}
	for _, dir := range dirs {
		if !ours(dir) {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, "root"))
		path, token, ok := strings.Cut(strings.TrimSuffix(string(b), "\n"), "\n")
		if err != nil || !ok || !strings.HasPrefix(path, "/") {
			continue
		}
		have, err := os.ReadFile(filepath.Join(path, tokenFile))
		if errors.Is(err, fs.ErrNotExist) || err == nil && strings.TrimSpace(string(have)) != token {
			_ = os.RemoveAll(dir)
		}
	}
}
