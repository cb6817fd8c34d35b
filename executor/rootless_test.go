package executor

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.podman.io/storage/pkg/unshare"
	"golang.org/x/sys/unix"
)

// The rootless path is tested by re-running this test binary as an
// unprivileged user: the child (TestRootlessHelper) re-execs itself into a
// user namespace with storage's unshare.MaybeReexecUsingUserNamespace, as
// rbuild's main does, and calls Run from there.
const (
	envHelperRootfs  = "RBUILD_TEST_ROOTLESS_ROOTFS"
	envHelperSubIDs  = "RBUILD_TEST_ROOTLESS_SUBIDS" // "1": the user has a subuid range
	rootlessUser     = "rbuildtest"                  // gets 100000:65536 in /etc/sub{u,g}id
	rootlessNoSubIDs = "rbuildnosub"                 // has no subuid range: single-id mapping
	chownedUID       = 1234
)

func TestRootlessWithSubIDs(t *testing.T) {
	sbRootlessCase(t, rootlessUser, true)
}

func TestRootlessSingleID(t *testing.T) {
	sbRootlessCase(t, rootlessNoSubIDs, false)
}

func sbRootlessCase(t *testing.T, name string, subIDs bool) {
	sbRequire(t)
	if os.Getenv(envHelperRootfs) != "" {
		t.Skip("inside the helper")
	}
	if data, _ := os.ReadFile("/proc/self/uid_map"); !strings.Contains(string(data), "4294967295") {
		t.Skip("needs real root to create the test users")
	}
	for _, tool := range []string{"useradd", "newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("needs %s (packages passwd, uidmap)", tool)
		}
	}
	u := sbEnsureUser(t, name, subIDs)
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)

	// A directory the user can use: the test binary (ours sits in a 0700
	// go-build directory), a rootfs owned by the user (its root in the
	// sandbox), a state directory.
	dir, err := os.MkdirTemp("", "rbuild-rootless-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	testBin := filepath.Join(dir, "executor.test")
	if err := sbCopyFile(exe, testBin, 0o755); err != nil {
		t.Fatal(err)
	}
	rootfs := sbRootfs(t, filepath.Join(dir, "rootfs"))
	if err := sbChownTree(rootfs, uid, gid); err != nil {
		t.Fatal(err)
	}
	home := filepath.Join(dir, "home")
	if err := os.Mkdir(home, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(home, uid, gid); err != nil {
		t.Fatal(err)
	}

	helperSubIDs := "0"
	if subIDs {
		helperSubIDs = "1"
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, testBin, "-test.run=^TestRootlessHelper$", "-test.v", "-test.count=1")
	cmd.Dir = home
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + home,
		"TMPDIR=" + home,
		"USER=" + name,
		envHelperRootfs + "=" + rootfs,
		envHelperSubIDs + "=" + helperSubIDs,
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), Groups: []uint32{}},
	}
	out, err := cmd.CombinedOutput()
	t.Logf("helper output:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS: TestRootlessHelper") {
		t.Fatalf("rootless helper as %s failed (exit %d): %v", name, sbExitStatus(err), err)
	}

	// What the sandbox did is visible on the host with the expected owners.
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(rootfs, "by-root"), &st); err != nil {
		t.Fatal(err)
	}
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("file of the sandbox's root owned by %d:%d, want the user's %d:%d", st.Uid, st.Gid, uid, gid)
	}
	if subIDs {
		start := sbSubIDStart(t, "/etc/subuid", name)
		gstart := sbSubIDStart(t, "/etc/subgid", name)
		if err := unix.Lstat(filepath.Join(rootfs, "chowned"), &st); err != nil {
			t.Fatal(err)
		}
		// Sandbox id 1234 = outer namespace id 1234 = subuid start + 1233.
		if int(st.Uid) != start+chownedUID-1 || int(st.Gid) != gstart+chownedUID-1 {
			t.Errorf("chowned file owned by %d:%d on the host, want %d:%d", st.Uid, st.Gid, start+chownedUID-1, gstart+chownedUID-1)
		}
	}
	sbAbsent(t, rootfs, "proc", "dev", "sys", "etc")
}

// TestRootlessHelper is the child side of TestRootless*: it does nothing
// unless started by them.
func TestRootlessHelper(t *testing.T) {
	rootfs := os.Getenv(envHelperRootfs)
	if rootfs == "" {
		t.Skip("only run as the child of TestRootless*")
	}
	// As the unprivileged user this never returns: it runs this binary
	// again in a user namespace and exits with its status. In that child
	// (euid 0, _CONTAINERS_ROOTLESS_UID set) it returns at once.
	unshare.MaybeReexecUsingUserNamespace(false)

	if os.Geteuid() != 0 {
		t.Fatalf("euid %d after the re-exec", os.Geteuid())
	}
	uidMap, _ := os.ReadFile("/proc/self/uid_map")
	t.Logf("uid_map:\n%s", uidMap)
	subIDs := os.Getenv(envHelperSubIDs) == "1"

	out := sbMustRun(t, RunSpec{Rootfs: rootfs}, `id -u; id -g; touch /by-root; echo hello; test -d /proc/self && test -c /dev/null && test -f /etc/hosts && echo mounts-ok
		grep -q ' /dev/mqueue ' /proc/mounts && test -d /dev/pts && test -d /dev/shm && test -d /sys/kernel && echo fs-ok
		{ echo x > /sys/kernel/x; } 2>/dev/null || echo sys-ro`)
	if out != "0\n0\nhello\nmounts-ok\nfs-ok\nsys-ro\n" {
		t.Errorf("output = %q", out)
	}

	out = sbMustRun(t, RunSpec{Rootfs: rootfs, Network: "none"}, `tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '`)
	if out != "lo\n" {
		t.Errorf("network none: %q", out)
	}

	_, err := sbRun(t, RunSpec{Rootfs: rootfs}, "exit 7")
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 7 {
		t.Errorf("err = %v, want exit code 7", err)
	}

	chown := "touch /chowned && chown " + strconv.Itoa(chownedUID) + ":" + strconv.Itoa(chownedUID) + " /chowned"
	out, err = sbRun(t, RunSpec{Rootfs: rootfs}, chown)
	if subIDs {
		if err != nil {
			t.Errorf("chown with a subuid range: %v\n%s", err, out)
		}
		out = sbMustRun(t, RunSpec{Rootfs: rootfs, User: "1000:1000"}, "id -u; id -g")
		if out != "1000\n1000\n" {
			t.Errorf("USER 1000: %q", out)
		}
	} else {
		// Only one id exists: chown to another one fails (EINVAL), and so
		// does a USER other than root, with a clear error.
		if !errors.As(err, &ee) {
			t.Errorf("chown with a single-id mapping: err = %v, want an exit error\n%s", err, out)
		}
		_, err = sbRun(t, RunSpec{Rootfs: rootfs, User: "1000"}, "true")
		if err == nil || !strings.Contains(err.Error(), "not mapped") {
			t.Errorf("USER 1000 with a single-id mapping: err = %v", err)
		}
	}
	sbAbsent(t, rootfs, "proc", "dev", "sys", "etc")
}

// sbEnsureUser creates the user if missing and makes sure it has a subuid
// and subgid range (withSubIDs) or none.
func sbEnsureUser(t *testing.T, name string, withSubIDs bool) *user.User {
	t.Helper()
	if _, err := user.Lookup(name); err != nil {
		// -r: a system account, which useradd gives no subuid range of
		// its own; ranges are managed below.
		out, err := exec.Command("useradd", "-r", "-M", "-s", "/usr/sbin/nologin", name).CombinedOutput()
		if err != nil {
			t.Fatalf("useradd %s: %v: %s", name, err, out)
		}
	}
	u, err := user.Lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	for _, file := range []string{"/etc/subuid", "/etc/subgid"} {
		has := sbSubIDLine(file, name) != ""
		switch {
		case withSubIDs && !has:
			f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
			if err != nil {
				t.Fatal(err)
			}
			_, err = f.WriteString(name + ":100000:65536\n")
			f.Close()
			if err != nil {
				t.Fatal(err)
			}
		case !withSubIDs && has:
			t.Fatalf("%s has a range in %s; the single-id test needs a user without one", name, file)
		}
	}
	return u
}

func sbSubIDLine(file, name string) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), name+":") {
			return sc.Text()
		}
	}
	return ""
}

func sbSubIDStart(t *testing.T, file, name string) int {
	t.Helper()
	fields := strings.Split(sbSubIDLine(file, name), ":")
	if len(fields) != 3 {
		t.Fatalf("no range for %s in %s", name, file)
	}
	n, err := strconv.Atoi(fields[1])
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func sbCopyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func sbChownTree(root string, uid, gid int) error {
	return filepath.Walk(root, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}
