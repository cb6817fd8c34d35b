package executor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"go.podman.io/storage/pkg/reexec"
	"golang.org/x/sys/unix"
)

// Chroot isolation is the rung of the isolation ladder for root in a
// container that may neither create namespaces nor mount (Docker's default
// seccomp profile without CAP_SYS_ADMIN): the command runs chrooted into
// the step's root filesystem, with its own process group. There is no
// /proc, no separate pid, network or mount namespace; /dev gets the basic
// device nodes when mknod is allowed, and /etc/hosts and /etc/resolv.conf
// are provided when the image lacks them. Nothing of that reaches a layer.

const chrootInit = "rbuild-chroot-run"

func init() {
	reexec.Register(chrootInit, chrootMain)
}

// chrootRequest is what the parent hands the re-executed child (on fd 3).
type chrootRequest struct {
	Rootfs string   `json:"rootfs"`
	Dir    string   `json:"dir"`
	Args   []string `json:"args"`
	Env    []string `json:"env"`
	UID    uint32   `json:"uid"`
	GID    uint32   `json:"gid"`
	Groups []uint32 `json:"groups"`
}

// basic device nodes: name, major, minor.
var chrootDevices = []struct {
	name         string
	major, minor uint32
}{
	{"null", 1, 3}, {"zero", 1, 5}, {"full", 1, 7}, {"random", 1, 8}, {"urandom", 1, 9}, {"tty", 5, 0},
}

// runChroot runs spec with chroot isolation.
func runChroot(ctx context.Context, spec RunSpec) (retErr error) {
	if len(spec.Mounts) > 0 {
		return errors.New("run: RUN --mount needs mount privileges, which chroot isolation does not have")
	}
	if spec.Network == "none" {
		return errors.New("run: --network=none needs a network namespace, which chroot isolation does not have")
	}
	rootfs, err := filepath.Abs(spec.Rootfs)
	if err == nil {
		rootfs, err = filepath.EvalSymlinks(rootfs)
	}
	if err != nil {
		return fmt.Errorf("run: rootfs: %w", err)
	}
	uid, gid, groups, err := ResolveUser(rootfs, spec.User)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	dir := spec.Dir
	if dir == "" {
		dir = "/"
	}
	if full, err := securejoin.SecureJoin(rootfs, dir); err != nil {
		return fmt.Errorf("run: working directory: %w", err)
	} else if err := os.MkdirAll(full, 0o755); err != nil {
		return fmt.Errorf("run: working directory: %w", err)
	}

	targets := []string{"/etc/hosts", "/etc/resolv.conf", "/dev"}
	dirs := []bool{false, false, true}
	for _, d := range chrootDevices {
		targets = append(targets, "/dev/"+d.name)
		dirs = append(dirs, false)
	}
	stubs, err := createMountStubs(rootfs, targets, dirs)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer func() {
		if err := stubs.cleanup(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("run: removing sandbox files: %w", err))
		}
	}()
	hostname := spec.Hostname
	if hostname == "" {
		hostname = defaultHostname
	}
	for _, f := range []struct{ target, content string }{
		{"/etc/hosts", fmt.Sprintf("127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost ip6-loopback\n", hostname)},
		{"/etc/resolv.conf", hostResolvConf()},
	} {
		p, _ := securejoin.SecureJoin(rootfs, f.target)
		if stubs.isCreated(p) {
			if err := os.WriteFile(p, []byte(f.content), 0o644); err != nil {
				return fmt.Errorf("run: %w", err)
			}
			stubs.force(p)
		}
	}
	for _, d := range chrootDevices {
		p, _ := securejoin.SecureJoin(rootfs, "/dev/"+d.name)
		if !stubs.isCreated(p) {
			continue
		}
		_ = os.Remove(p)
		if err := unix.Mknod(p, unix.S_IFCHR|0o666, int(unix.Mkdev(d.major, d.minor))); err != nil {
			// No CAP_MKNOD: the step runs without that node.
			_ = os.WriteFile(p, nil, 0o644)
			continue
		}
		_ = os.Chmod(p, 0o666)
		stubs.force(p)
	}
	if err := stubs.setupDone(); err != nil {
		return fmt.Errorf("run: %w", err)
	}

	env := spec.Env
	if !hasEnv(env, "PATH") {
		env = append(env, defaultPath)
	}
	req, err := json.Marshal(chrootRequest{Rootfs: rootfs, Dir: dir, Args: spec.Args, Env: env, UID: uid, GID: gid, Groups: groups})
	if err != nil {
		return err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	defer pr.Close()
	tail := &tailBuffer{}
	cmd := reexec.Command(chrootInit)
	cmd.Stdout, cmd.Stderr = combinedWriters(spec.Stdout, spec.Stderr, tail)
	cmd.ExtraFiles = []*os.File{pr}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		pw.Close()
		return fmt.Errorf("run: starting %q: %w", spec.Args, err)
	}
	_, werr := pw.Write(req)
	pw.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		return fmt.Errorf("run: %w", ctx.Err())
	}
	if werr != nil && err == nil {
		return fmt.Errorf("run: %w", werr)
	}
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return &ExitError{Code: exitCode(ee.ProcessState), Tail: tail.lastLines(10)}
		}
		return fmt.Errorf("run: %w", err)
	}
	return nil
}

// chrootMain is the re-executed child: it enters the root filesystem,
// becomes the step's user and executes the command.
func chrootMain() {
	fail := func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "rbuild: "+format+"\n", args...)
		os.Exit(127)
	}
	var req chrootRequest
	f := os.NewFile(3, "request")
	if err := json.NewDecoder(f).Decode(&req); err != nil {
		fail("reading the step: %v", err)
	}
	f.Close()
	if err := unix.Chroot(req.Rootfs); err != nil {
		fail("chroot: %v", err)
	}
	if err := unix.Chdir(req.Dir); err != nil {
		fail("working directory %s: %v", req.Dir, err)
	}
	groups := make([]int, len(req.Groups))
	for i, g := range req.Groups {
		groups[i] = int(g)
	}
	if err := unix.Setgroups(groups); err != nil {
		fail("setgroups: %v", err)
	}
	if err := unix.Setresgid(int(req.GID), int(req.GID), int(req.GID)); err != nil {
		fail("setgid: %v", err)
	}
	if err := unix.Setresuid(int(req.UID), int(req.UID), int(req.UID)); err != nil {
		fail("setuid: %v", err)
	}
	unix.Umask(0o022)
	path := req.Args[0]
	if !strings.Contains(path, "/") {
		for _, e := range req.Env {
			if v, ok := strings.CutPrefix(e, "PATH="); ok {
				for _, d := range filepath.SplitList(v) {
					if st, err := os.Stat(filepath.Join(d, path)); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
						path = filepath.Join(d, path)
						break
					}
				}
			}
		}
	}
	if err := unix.Exec(path, req.Args, req.Env); err != nil {
		fail("exec %s: %v", req.Args[0], err)
	}
}

func hostResolvConf() string {
	data, err := os.ReadFile("/etc/resolv.conf")
	if err != nil {
		return ""
	}
	return string(data)
}
