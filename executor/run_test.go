package executor

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.podman.io/storage/pkg/reexec"
	"golang.org/x/sys/unix"
)

// TestMain is the package's only one (the copy tests share it): the test
// binary is also the sandbox's init, so it starts like rbuild's main (see
// Init).
func TestMain(m *testing.M) {
	if reexec.Init() {
		return
	}
	Init()
	os.Exit(m.Run())
}

const sbBusybox = "/bin/busybox"

// sbRequire skips tests that need to create sandboxes when this process
// cannot (not root, or no busybox to build a rootfs from).
func sbRequire(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root (or the rootless helper's user namespace)")
	}
	if _, err := os.Stat(sbBusybox); err != nil {
		t.Skip("needs busybox-static at /bin/busybox")
	}
}

// sbRootfs builds a minimal root filesystem in dir: /bin/busybox and a
// symlink per applet. Nothing else: no /etc, /proc, /dev or /sys, so tests
// can check that the sandbox leaves none behind.
func sbRootfs(t *testing.T, dir string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Join(dir, "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	// t.TempDir is 0700; the sandbox's non-root users must traverse "/".
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(sbBusybox)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(sbBusybox, "--list").Output()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range strings.Fields(string(out)) {
		if name == "busybox" {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(dir, "bin", name)); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func sbWriteFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// sbRun runs a shell command in rootfs and returns its combined output.
func sbRun(t *testing.T, spec RunSpec, script string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	spec.Args = []string{"/bin/sh", "-c", script}
	spec.Stdout, spec.Stderr = &out, &out
	if spec.StateDir == "" {
		spec.StateDir = t.TempDir()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := Run(ctx, spec)
	return out.String(), err
}

func sbMustRun(t *testing.T, spec RunSpec, script string) string {
	t.Helper()
	out, err := sbRun(t, spec, script)
	if err != nil {
		t.Fatalf("%s: %v\noutput:\n%s", script, err, out)
	}
	return out
}

// sbAbsent fails for each of paths (relative to rootfs) that exists.
func sbAbsent(t *testing.T, rootfs string, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if _, err := os.Lstat(filepath.Join(rootfs, p)); err == nil {
			t.Errorf("%s leaked into the rootfs", p)
		} else if !errors.Is(err, os.ErrNotExist) {
			t.Error(err)
		}
	}
}

func TestRunOutputAndExitCode(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())

	out := sbMustRun(t, RunSpec{Rootfs: rootfs}, "echo hello; echo err >&2")
	if out != "hello\nerr\n" {
		t.Errorf("output = %q", out)
	}

	out, err := sbRun(t, RunSpec{Rootfs: rootfs}, "for i in $(seq 1 15); do echo line$i; done; echo oops >&2; exit 3")
	var ee *ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("err = %v, want *ExitError", err)
	}
	if ee.Code != 3 {
		t.Errorf("code = %d, want 3", ee.Code)
	}
	lines := strings.Split(ee.Tail, "\n")
	if len(lines) != tailLines || lines[0] != "line7" || lines[len(lines)-1] != "oops" {
		t.Errorf("tail = %q", ee.Tail)
	}
	if !strings.Contains(out, "line1\n") {
		t.Errorf("output lost its head: %q", out)
	}

	// Not an exit status: the command cannot start.
	err = Run(context.Background(), RunSpec{Rootfs: rootfs, Args: []string{"/nonexistent"}, StateDir: t.TempDir()})
	if err == nil || errors.As(err, &ee) {
		t.Errorf("err = %v, want a start error", err)
	}
}

func TestRunEnvAndWorkdir(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())

	out := sbMustRun(t, RunSpec{Rootfs: rootfs, Env: []string{"FOO=bar baz"}, Dir: "/work/sub"},
		`pwd; env | sort; stat -c '%u:%g %a' /work/sub /work`)
	// Exactly the given environment plus Docker's default PATH; HOME comes
	// from runc (the passwd entry, "/" without one) and PWD, SHLVL from sh.
	want := "/work/sub\nFOO=bar baz\nHOME=/\nPATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\nPWD=/work/sub\nSHLVL=1\n"
	if !strings.HasPrefix(out, want) {
		t.Errorf("output = %q, want prefix %q", out, want)
	}
	// The missing working directory is created as root, as Docker does.
	if !strings.HasSuffix(out, "0:0 755\n0:0 755\n") {
		t.Errorf("workdir ownership: %q", out)
	}

	out = sbMustRun(t, RunSpec{Rootfs: rootfs, Env: []string{"PATH=/bin", "HOME=/tmp"}}, `echo "$PATH $HOME"`)
	if out != "/bin /tmp\n" {
		t.Errorf("output = %q", out)
	}
}

func TestRunUser(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())
	sbWriteFile(t, filepath.Join(rootfs, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:app:/home/app:/bin/sh\n")
	sbWriteFile(t, filepath.Join(rootfs, "etc/group"), "root:x:0:\napp:x:1001:\nextra:x:2000:app\nother:x:3000:\n")

	for _, tc := range []struct {
		user, want string
	}{
		{"", "0 0 0\n"},
		{"app", "1000 1001 1001 2000\n"},
		{"1000", "1000 1001 1001 2000\n"},
		{"4321", "4321 0 0\n"},
		{"app:other", "1000 3000 3000\n"},
		{"4321:4322", "4321 4322 4322\n"},
	} {
		out := sbMustRun(t, RunSpec{Rootfs: rootfs, User: tc.user}, `echo $(id -u) $(id -g) $(id -G)`)
		if out != tc.want {
			t.Errorf("USER %q: id = %q, want %q", tc.user, out, tc.want)
		}
	}

	_, err := sbRun(t, RunSpec{Rootfs: rootfs, User: "nobody"}, "true")
	if err == nil || !strings.Contains(err.Error(), "unable to find user nobody: no matching entries in passwd file") {
		t.Errorf("unknown user: err = %v", err)
	}
}

func TestRunNetwork(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())

	out := sbMustRun(t, RunSpec{Rootfs: rootfs, Network: "none"}, `tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; cat /sys/class/net/lo/operstate; ping -c1 -W2 127.0.0.1 >/dev/null && echo ping-ok`)
	if out != "lo\nunknown\nping-ok\n" {
		t.Errorf("network none: %q", out)
	}

	hostIfaces, err := os.ReadFile("/proc/net/dev")
	if err != nil {
		t.Fatal(err)
	}
	out = sbMustRun(t, RunSpec{Rootfs: rootfs}, `cat /proc/net/dev`)
	if strings.Count(out, ":") != strings.Count(string(hostIfaces), ":") {
		t.Errorf("host network: sandbox sees\n%s\nhost has\n%s", out, hostIfaces)
	}

	_, err = sbRun(t, RunSpec{Rootfs: rootfs, Network: "bridge"}, "true")
	if err == nil {
		t.Error("network bridge: no error")
	}
}

func TestRunSandboxFilesystems(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())

	out := sbMustRun(t, RunSpec{Rootfs: rootfs, Hostname: "builder"}, `
		echo pid=$$
		hostname
		cat /etc/hosts
		grep -c nameserver /etc/resolv.conf >/dev/null || true
		test -c /dev/null && test -c /dev/zero && test -c /dev/urandom && echo devs-ok
		test -d /dev/pts && test -d /dev/shm && echo pts-shm-ok
		grep -q ' /dev/mqueue ' /proc/mounts && echo mqueue-ok
		test -d /sys/kernel && echo sys-ok
		echo x > /dev/null && echo null-writable
		{ echo x > /etc/hosts; } 2>/dev/null || echo hosts-ro
		{ echo x > /sys/kernel/x; } 2>/dev/null || echo sys-ro
		test -s /proc/kcore || echo kcore-masked
		grep CapEff /proc/self/status
	`)
	for _, want := range []string{
		"pid=1\n", "builder\n", "127.0.0.1\tlocalhost builder\n",
		"kcore-masked", "devs-ok", "pts-shm-ok", "mqueue-ok", "sys-ok", "null-writable", "hosts-ro", "sys-ro",
		"CapEff:\t00000000a80425fb\n",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("missing %q in output:\n%s", want, out)
		}
	}

	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err == nil {
		out = sbMustRun(t, RunSpec{Rootfs: rootfs}, "cat /etc/resolv.conf")
		if out != string(resolv) {
			t.Errorf("resolv.conf = %q, want the host's %q", out, resolv)
		}
	}

	// A non-root user keeps only the bounding set, as Docker.
	out = sbMustRun(t, RunSpec{Rootfs: rootfs, User: "1000"}, "grep -E 'Cap(Eff|Bnd)' /proc/self/status")
	if out != "CapEff:\t0000000000000000\nCapBnd:\t00000000a80425fb\n" {
		t.Errorf("non-root capabilities: %q", out)
	}
}

func TestRunNoLeakIntoRootfs(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())
	cacheDir := t.TempDir()
	secret := filepath.Join(t.TempDir(), "secret")
	sbWriteFile(t, secret, "s3cret")
	// Same second resolution is not enough for the mtime check: make the
	// root's mtime clearly old first.
	old := time.Unix(1_000_000_000, 0)
	if err := os.Chtimes(rootfs, old, old); err != nil {
		t.Fatal(err)
	}

	spec := RunSpec{
		Rootfs: rootfs,
		Mounts: []Mount{
			{Source: cacheDir, Target: "/var/cache/apt"},
			{Source: secret, Target: "/run/secrets/token", ReadOnly: true},
			{Source: cacheDir, Target: "rel"}, // relative to the workdir
		},
		Dir: "/",
	}
	out := sbMustRun(t, spec, `
		test -d /proc/self && test -c /dev/null && test -f /etc/hosts && test -d /sys/kernel || exit 1
		cat /run/secrets/token; echo
		echo cached > /var/cache/apt/file
		test -f /rel/file && echo rel-ok
		{ echo x > /run/secrets/token; } 2>/dev/null || echo secret-ro
	`)
	if out != "s3cret\nrel-ok\nsecret-ro\n" {
		t.Errorf("output = %q", out)
	}
	if b, err := os.ReadFile(filepath.Join(cacheDir, "file")); err != nil || string(b) != "cached\n" {
		t.Errorf("cache mount: %q, %v", b, err)
	}
	sbAbsent(t, rootfs, "proc", "dev", "sys", "etc", "var", "run", "rel")
	entries, _ := os.ReadDir(rootfs)
	if len(entries) != 1 || entries[0].Name() != "bin" {
		t.Errorf("rootfs holds %v, want only bin", entries)
	}
	if st, err := os.Stat(rootfs); err != nil || !st.ModTime().Equal(old) {
		t.Errorf("rootfs mtime changed: %v (%v)", st.ModTime(), err)
	}

	// A step that writes into a directory the sandbox needed keeps it, and
	// only the empty mountpoints go.
	sbMustRun(t, RunSpec{Rootfs: rootfs}, "mkdir -p /etc/app && echo 1 > /etc/app/conf && mkdir /dev/keep")
	if _, err := os.Stat(filepath.Join(rootfs, "etc/app/conf")); err != nil {
		t.Error(err)
	}
	sbAbsent(t, rootfs, "etc/hosts", "etc/resolv.conf", "proc", "dev", "sys")
	if st, err := os.Stat(rootfs); err != nil || st.ModTime().Equal(old) {
		t.Errorf("rootfs mtime should show the new /etc: %v (%v)", st.ModTime(), err)
	}

	// Existing mountpoints stay as they were, and /etc's mtime too.
	for _, d := range []string{"proc", "dev", "sys"} {
		if err := os.Mkdir(filepath.Join(rootfs, d), 0o555); err != nil {
			t.Fatal(err)
		}
	}
	sbWriteFile(t, filepath.Join(rootfs, "etc/hosts"), "# image's own\n")
	if err := os.Chtimes(filepath.Join(rootfs, "etc"), old, old); err != nil {
		t.Fatal(err)
	}
	sbMustRun(t, RunSpec{Rootfs: rootfs}, "cat /etc/hosts >/dev/null")
	for _, d := range []string{"proc", "dev", "sys"} {
		if st, err := os.Stat(filepath.Join(rootfs, d)); err != nil || st.Mode().Perm() != 0o555 {
			t.Errorf("%s: %v %v", d, st, err)
		}
	}
	if b, _ := os.ReadFile(filepath.Join(rootfs, "etc/hosts")); string(b) != "# image's own\n" {
		t.Errorf("image's /etc/hosts changed: %q", b)
	}
	sbAbsent(t, rootfs, "etc/resolv.conf")
	if st, err := os.Stat(filepath.Join(rootfs, "etc")); err != nil || !st.ModTime().Equal(old) {
		t.Errorf("/etc mtime changed: %v (%v)", st.ModTime(), err)
	}

	// A failing step cleans up too.
	rootfs2 := sbRootfs(t, t.TempDir())
	if _, err := sbRun(t, RunSpec{Rootfs: rootfs2}, "exit 1"); err == nil {
		t.Error("no error")
	}
	sbAbsent(t, rootfs2, "proc", "dev", "sys", "etc")
}

func TestRunOwnershipAsRoot(t *testing.T) {
	sbRequire(t)
	if data, _ := os.ReadFile("/proc/self/uid_map"); !strings.Contains(string(data), "4294967295") {
		t.Skip("not real root in the initial user namespace")
	}
	rootfs := sbRootfs(t, t.TempDir())
	sbMustRun(t, RunSpec{Rootfs: rootfs}, "touch /mine /theirs && chown 1234:5678 /theirs && mkdir -m 1777 /tmp")
	for name, want := range map[string][2]uint32{"mine": {0, 0}, "theirs": {1234, 5678}} {
		var st unix.Stat_t
		if err := unix.Lstat(filepath.Join(rootfs, name), &st); err != nil {
			t.Fatal(err)
		}
		if st.Uid != want[0] || st.Gid != want[1] {
			t.Errorf("/%s owned by %d:%d on the host, want %d:%d", name, st.Uid, st.Gid, want[0], want[1])
		}
	}
	// A non-root user writes as itself.
	sbMustRun(t, RunSpec{Rootfs: rootfs, User: "4242:4343"}, "touch /tmp/user-file")
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(rootfs, "tmp/user-file"), &st); err != nil {
		t.Fatal(err)
	}
	if st.Uid != 4242 || st.Gid != 4343 {
		t.Errorf("user file owned by %d:%d", st.Uid, st.Gid)
	}
}

func TestRunCancel(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	// A background child in the sandbox must die too (it holds the pipe).
	err := Run(ctx, RunSpec{Rootfs: rootfs, Args: []string{"/bin/sh", "-c", "sleep 60 & sleep 60"}, StateDir: t.TempDir()})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("err = %v, want deadline exceeded", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("cancel took %v", d)
	}
	sbAbsent(t, rootfs, "proc", "dev", "sys", "etc")
}

func TestRunRejectsBadSpecs(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())
	for name, spec := range map[string]RunSpec{
		"no args":     {Rootfs: rootfs},
		"no rootfs":   {Rootfs: filepath.Join(rootfs, "missing"), Args: []string{"true"}},
		"bad network": {Rootfs: rootfs, Args: []string{"true"}, Network: "bridge"},
		"bad mount":   {Rootfs: rootfs, Args: []string{"true"}, Mounts: []Mount{{Source: "/nonexistent-src", Target: "/x"}}},
	} {
		if err := Run(context.Background(), spec); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	sbAbsent(t, rootfs, "proc", "dev", "sys", "etc", "x")
}

func TestTailBuffer(t *testing.T) {
	tb := &tailBuffer{max: 32}
	for i := 0; i < 10; i++ {
		tb.Write([]byte("0123456789\n"))
	}
	// 32 bytes hold two whole lines and the end of a third, left out.
	if got := tb.lastLines(10); got != "0123456789\n0123456789" {
		t.Errorf("lastLines = %q", got)
	}
	tb = &tailBuffer{max: 1024}
	tb.Write([]byte("a\n\nb\r\nc"))
	if got := tb.lastLines(2); got != "b\nc" {
		t.Errorf("lastLines = %q", got)
	}
}

// sbExitStatus returns the exit code of a finished exec.Cmd error.
func sbExitStatus(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok {
			return ws.ExitStatus()
		}
	}
	if err != nil {
		return -1
	}
	return 0
}

// Images often have /etc/resolv.conf as a symlink into /run; the sandbox
// mounts through it, and the directories made for that go away again while
// the image's symlink stays.
func TestRunSymlinkedMountpoint(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())
	if err := os.MkdirAll(filepath.Join(rootfs, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../run/systemd/resolve/stub-resolv.conf", filepath.Join(rootfs, "etc/resolv.conf")); err != nil {
		t.Fatal(err)
	}
	resolv, _ := os.ReadFile("/etc/resolv.conf")
	out := sbMustRun(t, RunSpec{Rootfs: rootfs}, "cat /etc/resolv.conf")
	if out != string(resolv) {
		t.Errorf("resolv.conf through the symlink = %q, want %q", out, resolv)
	}
	if target, err := os.Readlink(filepath.Join(rootfs, "etc/resolv.conf")); err != nil || target != "../run/systemd/resolve/stub-resolv.conf" {
		t.Errorf("image's symlink changed: %q %v", target, err)
	}
	sbAbsent(t, rootfs, "run", "etc/hosts", "proc", "dev", "sys")
}

func TestRunStdinIsDevNull(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())
	// cat would block forever on an inherited terminal or pipe.
	out := sbMustRun(t, RunSpec{Rootfs: rootfs}, "cat; readlink /proc/self/fd/0; echo done")
	if !strings.HasSuffix(out, "done\n") || !strings.Contains(out, "null") {
		t.Errorf("output = %q", out)
	}
}

func TestRunConcurrent(t *testing.T) {
	sbRequire(t)
	const n = 4
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		rootfs := sbRootfs(t, t.TempDir())
		stateDir := t.TempDir()
		go func(i int) {
			var out bytes.Buffer
			err := Run(context.Background(), RunSpec{
				Rootfs: rootfs, StateDir: stateDir, Stdout: &out,
				Args: []string{"/bin/sh", "-c", "echo $N > /n; cat /n"}, Env: []string{"N=" + strconv.Itoa(i)},
			})
			if err == nil && out.String() != strconv.Itoa(i)+"\n" {
				err = errors.New("wrong output " + out.String())
			}
			errs <- err
		}(i)
	}
	for i := 0; i < n; i++ {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestRunCancelledBeforeStart(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := Run(ctx, RunSpec{Rootfs: rootfs, Args: []string{"/bin/true"}})
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v", err)
	}
	sbAbsent(t, rootfs, "proc", "dev", "sys", "etc")
}
