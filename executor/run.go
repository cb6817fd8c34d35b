package executor

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/opencontainers/runc/libcontainer"
	"github.com/opencontainers/runc/libcontainer/configs"
	"golang.org/x/sys/unix"
)

// tailLines is how many lines of output ExitError.Tail keeps.
const tailLines = 10

// Run runs spec.Args in spec.Rootfs through runc's libcontainer, in-process
// (the sandbox's init is this same binary re-executed as "ARGV0 init", see
// Init), in new user, mount, pid, ipc and uts namespaces, plus a network
// namespace with only loopback for Network "none".
//
// The process must have euid 0: either real root, or root inside a user
// namespace set up by go.podman.io/storage's
// unshare.MaybeReexecUsingUserNamespace. The sandbox's user namespace maps
// every id available here to itself, so files keep the ownership they have
// here (see identityMaps).
//
// A non-zero exit gives *ExitError with the last lines of the combined
// output. Cancelling ctx kills the sandbox (every process in it) and Run
// returns ctx's error. The mountpoints the sandbox needed and the rootfs did
// not have are removed afterwards, so they never reach a layer.
func Run(ctx context.Context, spec RunSpec) (retErr error) {
	if len(spec.Args) == 0 {
		return errors.New("run: no command")
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if spec.Isolation == "chroot" {
		return runChroot(ctx, spec)
	}
	if os.Geteuid() != 0 {
		return errors.New("run: needs euid 0: run as root, or re-exec into a user namespace first (unshare.MaybeReexecUsingUserNamespace)")
	}
	netNone := false
	switch spec.Network {
	case "", "host":
	case "none":
		netNone = true
	default:
		return fmt.Errorf("run: unsupported network mode %q (want host or none)", spec.Network)
	}

	// libcontainer insists on an absolute rootfs path without symlinks.
	rootfs, err := filepath.Abs(spec.Rootfs)
	if err == nil {
		rootfs, err = filepath.EvalSymlinks(rootfs)
	}
	if err != nil {
		return fmt.Errorf("run: rootfs: %w", err)
	}
	if st, err := os.Stat(rootfs); err != nil || !st.IsDir() {
		return fmt.Errorf("run: rootfs %s is not a directory", rootfs)
	}

	uid, gid, sgids, err := ResolveUser(rootfs, spec.User)
	if err != nil {
		return fmt.Errorf("run: user %q: %w", spec.User, err)
	}
	maps, err := identityMaps()
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	if !containsID(maps.uids, uid) || !containsID(maps.gids, gid) {
		return fmt.Errorf("run: user %q is %d:%d, which is not mapped in this user namespace "+
			"(without an /etc/subuid and /etc/subgid range only root can be used)", spec.User, uid, gid)
	}
	var groups []int
	for _, g := range sgids {
		// An unmapped supplementary group would make setgroups fail; as
		// with a single-id mapping nothing but 0 exists, drop them.
		if containsID(maps.gids, g) {
			groups = append(groups, int(g))
		}
	}

	cwd := spec.Dir
	if cwd == "" {
		cwd = "/"
	}
	cwd = path.Join("/", cwd)

	// A private scratch directory for this run: runc's state, hosts and
	// resolv.conf. Removed at the end.
	if spec.StateDir != "" {
		if err := os.MkdirAll(spec.StateDir, 0o700); err != nil {
			return fmt.Errorf("run: state dir: %w", err)
		}
	}
	runDir, err := os.MkdirTemp(spec.StateDir, "run-")
	if err != nil {
		return fmt.Errorf("run: state dir: %w", err)
	}
	defer os.RemoveAll(runDir)

	hostname := spec.Hostname
	if hostname == "" {
		hostname = defaultHostname
	}
	hostsFile := filepath.Join(runDir, "hosts")
	resolvFile := filepath.Join(runDir, "resolv.conf")
	if err := writeNetworkFiles(hostname, hostsFile, resolvFile); err != nil {
		return fmt.Errorf("run: %w", err)
	}

	mounts := make([]Mount, 0, len(spec.Mounts))
	for _, m := range spec.Mounts {
		if m.Type != "" && m.Type != "bind" && m.Type != "tmpfs" {
			return fmt.Errorf("run: mount %+v: unknown type", m)
		}
		if (m.Source == "" && m.Type != "tmpfs") || m.Target == "" {
			return fmt.Errorf("run: mount %+v: source and target are required", m)
		}
		target := m.Target
		if !path.IsAbs(target) {
			// As BuildKit: a relative --mount target is relative to the
			// working directory.
			target = path.Join(cwd, target)
		}
		m.Target = path.Clean(target)
		mounts = append(mounts, m)
	}

	// Mountpoints that must not leak: create the missing ones now, remove
	// them after the run.
	targets := []string{"/proc", "/dev", "/sys", "/etc/hosts", "/etc/resolv.conf"}
	isDir := []bool{true, true, true, false, false}
	for _, m := range mounts {
		if m.Type == "tmpfs" {
			targets = append(targets, m.Target)
			isDir = append(isDir, true)
			continue
		}
		st, err := os.Stat(m.Source)
		if err != nil {
			return fmt.Errorf("run: mount source: %w", err)
		}
		targets = append(targets, m.Target)
		isDir = append(isDir, st.IsDir())
	}
	stubs, err := createMountStubs(rootfs, targets, isDir)
	if err != nil {
		return fmt.Errorf("run: %w", err)
	}
	defer func() {
		if err := stubs.cleanup(); err != nil {
			retErr = errors.Join(retErr, fmt.Errorf("run: removing sandbox mountpoints: %w", err))
		}
	}()

	env := append([]string(nil), spec.Env...)
	if !hasEnv(env, "PATH") {
		env = append(env, defaultPath)
	}

	tail := &tailBuffer{max: 16 << 10}
	stdout, stderr := combinedWriters(spec.Stdout, spec.Stderr, tail)

	// attempt creates the sandbox and runs the command in it. procBind
	// binds the host's /proc instead of mounting a new one.
	attempt := func(procBind bool) (state *os.ProcessState, waitErr, startErr error) {
		id := "rbuild-" + randomID()
		cfg, err := newConfig(sandboxSpec{
			rootfs:    rootfs,
			hostname:  hostname,
			netNone:   netNone,
			hostsFile: hostsFile,
			resolv:    resolvFile,
			mounts:    mounts,
			maps:      maps,
			procBind:  procBind,
		}, id)
		if err != nil {
			return nil, nil, fmt.Errorf("sandbox config: %w", err)
		}
		process := &libcontainer.Process{
			Args:             spec.Args,
			Env:              env,
			UID:              int(uid),
			GID:              int(gid),
			AdditionalGroups: groups,
			Cwd:              cwd,
			Stdin:            nil, // exec.Cmd opens /dev/null
			Stdout:           stdout,
			Stderr:           stderr,
			Init:             true,
		}
		if uid != 0 {
			// Docker clears the effective and permitted sets for a non-root
			// user (moby#36587): only the bounding set stays, for setuid
			// binaries such as sudo.
			process.Capabilities = &configs.Capabilities{Bounding: defaultCapabilities}
		}
		container, err := libcontainer.Create(filepath.Join(runDir, "runc"), id, cfg)
		if err != nil {
			return nil, nil, fmt.Errorf("creating sandbox: %w", err)
		}
		defer func() {
			if err := container.Destroy(); err != nil {
				startErr = errors.Join(startErr, fmt.Errorf("destroying sandbox: %w", err))
			}
		}()
		return runLocked(ctx, container, process)
	}

	procBind := procBindNeeded.Load()
	state, waitErr, err := attempt(procBind)
	if err != nil && !procBind && isProcMountDenied(err) {
		// A container runtime masked parts of /proc (Kubernetes
		// procMount: Default): the kernel then refuses a new proc mount in
		// a user namespace. Bind the visible /proc instead, from now on.
		procBindNeeded.Store(true)
		state, waitErr, err = attempt(true)
	}
	if err != nil {
		return fmt.Errorf("run: starting %q: %w", spec.Args, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("run: %w", ctx.Err())
	}
	if state == nil {
		return fmt.Errorf("run: waiting for %q: %w", spec.Args, waitErr)
	}
	if code := exitCode(state); code != 0 {
		return &ExitError{Code: code, Tail: tail.lastLines(tailLines)}
	}
	return nil
}

// procBindNeeded records that new proc mounts are refused here.
var procBindNeeded atomic.Bool

// isProcMountDenied recognizes libcontainer's failure to mount a new /proc.
func isProcMountDenied(err error) bool {
	msg := err.Error()
	return strings.Contains(msg, `mounting "proc"`) && (errors.Is(err, unix.EPERM) || strings.Contains(msg, "operation not permitted"))
}

// runLocked starts the sandbox and waits for it on one locked OS thread: the
// parent-death signal is tied to the thread that forked the sandbox, and Go
// may otherwise retire or reuse that thread. Cancelling ctx sends SIGKILL to
// the sandbox's init, which takes the whole pid namespace with it.
func runLocked(ctx context.Context, container *libcontainer.Container, process *libcontainer.Process) (*os.ProcessState, error, error) {
	type result struct {
		state *os.ProcessState
		err   error
	}
	started := make(chan error, 1)
	done := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := container.Run(process); err != nil {
			started <- err
			return
		}
		started <- nil
		st, err := process.Wait()
		done <- result{st, err}
	}()
	if err := <-started; err != nil {
		return nil, nil, err
	}
	select {
	case r := <-done:
		return r.state, r.err, nil
	case <-ctx.Done():
		_ = container.Signal(unix.SIGKILL)
		r := <-done
		return r.state, r.err, nil
	}
}

// exitCode gives the shell-style status: the exit code, or 128+signal.
func exitCode(st *os.ProcessState) int {
	if ws, ok := st.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return st.ExitCode()
}

func hasEnv(env []string, key string) bool {
	for _, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); k == key {
			return true
		}
	}
	return false
}

// writeNetworkFiles writes the sandbox's /etc/hosts (localhost and the
// hostname, as BuildKit) and /etc/resolv.conf (a copy of the host's, which
// is right for the host network; with "none" nothing resolves anyway).
func writeNetworkFiles(hostname, hostsFile, resolvFile string) error {
	hosts := fmt.Sprintf("127.0.0.1\tlocalhost %s\n::1\tlocalhost ip6-localhost ip6-loopback\n", hostname)
	if err := os.WriteFile(hostsFile, []byte(hosts), 0o644); err != nil {
		return err
	}
	resolv, err := os.ReadFile("/etc/resolv.conf")
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	return os.WriteFile(resolvFile, resolv, 0o644)
}

func randomID() string {
	b := make([]byte, 8)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// combinedWriters returns the writers for the sandbox's stdout and stderr:
// the caller's writers (or none) plus tail, which sees both. When the caller
// passes one writer for both, one combined writer is returned for both so
// that exec.Cmd uses one pipe and never writes to it concurrently.
func combinedWriters(stdout, stderr io.Writer, tail *tailBuffer) (io.Writer, io.Writer) {
	if stdout != nil && sameWriter(stdout, stderr) {
		w := io.MultiWriter(stdout, tail)
		return w, w
	}
	o, e := io.Writer(tail), io.Writer(tail)
	if stdout != nil {
		o = io.MultiWriter(stdout, tail)
	}
	if stderr != nil {
		e = io.MultiWriter(stderr, tail)
	}
	return o, e
}

func sameWriter(a, b io.Writer) (same bool) {
	defer func() {
		if recover() != nil { // uncomparable dynamic types
			same = false
		}
	}()
	return a == b
}

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu        sync.Mutex
	max       int
	buf       []byte
	truncated bool
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.buf = append(t.buf, p...)
	if over := len(t.buf) - t.max; over > 0 {
		t.buf = append(t.buf[:0], t.buf[over:]...)
		t.truncated = true
	}
	return len(p), nil
}

// lastLines returns the last n non-empty lines.
func (t *tailBuffer) lastLines(n int) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	buf := t.buf
	if t.truncated {
		// The first line was cut; leave it out.
		if i := bytes.IndexByte(buf, '\n'); i >= 0 {
			buf = buf[i+1:]
		}
	}
	lines := bytes.Split(bytes.TrimRight(buf, "\n"), []byte("\n"))
	var out []string
	for i := len(lines) - 1; i >= 0 && len(out) < n; i-- {
		if l := strings.TrimRight(string(lines[i]), "\r"); strings.TrimSpace(l) != "" {
			out = append(out, l)
		}
	}
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return strings.Join(out, "\n")
}
