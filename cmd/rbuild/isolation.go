package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/moby/sys/capability"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"go.podman.io/storage/pkg/reexec"
	"go.podman.io/storage/pkg/unshare"
	"golang.org/x/sys/unix"
)

// The isolation ladder, tried in order when --isolation=auto:
//
//  1. userns: RUN steps in user, mount, pid, ipc and uts namespaces over
//     overlay snapshots. Root uses them directly; an unprivileged user
//     first re-executes rbuild in a user namespace (its /etc/subuid range
//     through newuidmap, or its own uid only).
//  2. chroot: root in a container that may not create namespaces or mount
//     (no CAP_SYS_ADMIN, a seccomp profile blocking unshare): RUN steps are
//     chrooted into directory snapshots (vfs).
//  3. nothing works: stop before any work, naming what is missing.

const probeUserns = "rbuild-probe-userns"

func init() {
	reexec.Register(probeUserns, func() {
		// In a new user and mount namespace: can we mount? The mount
		// point is an existing directory, since the root file system may
		// be read-only (a pod with readOnlyRootFilesystem); the mount is
		// private to this namespace, which ends with this process.
		dir := os.TempDir()
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			dir = "/"
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", 0, ""); err != nil {
			fmt.Fprintln(os.Stderr, "mount:", err)
			os.Exit(1)
		}
		_ = unix.Unmount(dir, 0)
		os.Exit(0)
	})
}

// usernsWorks starts a child in a new user and mount namespace that mounts
// a tmpfs: the least RUN steps will need.
func usernsWorks() error {
	cmd := reexec.Command(probeUserns)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	cmd.Stdout = io.Discard
	uid, gid := os.Geteuid(), os.Getegid()
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Cloneflags:                 syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS,
		UidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: uid, Size: 1}},
		GidMappings:                []syscall.SysProcIDMap{{ContainerID: 0, HostID: gid, Size: 1}},
		GidMappingsEnableSetgroups: false,
	}
	if err := cmd.Run(); err != nil {
		if msg := strings.TrimSpace(stderr.String()); msg != "" {
			return errors.New(msg)
		}
		return err
	}
	return nil
}

func hasCap(c capability.Cap, which capability.CapType) bool {
	caps, err := capability.NewPid2(0)
	if err != nil || caps.Load() != nil {
		return false
	}
	return caps.Get(which, c)
}

// chooseIsolation picks the rung of the ladder and, for an unprivileged
// user, re-executes rbuild in a user namespace (this process then exits
// with the child's status). It says which mode it picked.
func chooseIsolation(flag string, log io.Writer) (string, error) {
	switch flag {
	case "", "auto", "userns", "chroot":
	default:
		return "", fmt.Errorf("--isolation %q: want auto, userns or chroot", flag)
	}
	if os.Geteuid() == 0 && unshare.IsRootless() && os.Getenv(unshare.UsernsEnvName) != "" {
		// The child of our own re-exec: the parent chose already.
		return "userns", reportUserns(log)
	}
	if flag == "chroot" {
		if os.Geteuid() != 0 {
			return "", errors.New("--isolation=chroot needs root: chroot(2) is a root-only call")
		}
		fmt.Fprintln(log, "isolation: chroot (forced): RUN steps are chrooted into directory snapshots, without /proc or namespaces")
		return "chroot", nil
	}
	probe := usernsWorks()
	if os.Geteuid() == 0 {
		if probe == nil && hasCap(capability.CAP_SYS_ADMIN, capability.EFFECTIVE) {
			fmt.Fprintln(log, "isolation: root; RUN steps in identity-mapped user, mount, pid, ipc and uts namespaces")
			return "userns", nil
		}
		if flag == "userns" {
			return "", fmt.Errorf("--isolation=userns: namespaces cannot be used here (%v); without CAP_SYS_ADMIN or with unshare blocked, use --isolation=chroot", probeErr(probe))
		}
		if !hasCap(capability.CAP_SYS_CHROOT, capability.EFFECTIVE) {
			return "", fmt.Errorf("cannot isolate RUN steps: user namespaces are not available (%v) and chroot is not permitted (no CAP_SYS_CHROOT). Give the pod CAP_SYS_CHROOT (Docker's default set has it), or allow user namespaces (Kubernetes: hostUsers: false)", probeErr(probe))
		}
		fmt.Fprintf(log, "isolation: chroot (user namespaces unavailable: %v): RUN steps are chrooted into directory snapshots, without /proc or namespaces\n", probeErr(probe))
		return "chroot", nil
	}
	if probe != nil {
		return "", fmt.Errorf("cannot isolate RUN steps as uid %d: creating a user namespace failed (%v). Allow user namespaces: in Kubernetes set hostUsers: false, or a seccomp profile that permits unshare and mount (e.g. seccompProfile: {type: Unconfined}) with AppArmor unconfined; on a host, sysctl kernel.unprivileged_userns_clone=1 and user.max_user_namespaces > 0. Or run rbuild as root (chroot isolation)", os.Geteuid(), probe)
	}
	prepareUserLookup()
	// Neither returns in this process: the child in the new namespace runs
	// the build and this process exits with its status.
	if !haveIDMapTools() {
		reexecSingleUID()
	}
	unshare.MaybeReexecUsingUserNamespace(false)
	return "userns", reportUserns(log)
}

// haveIDMapTools reports whether newuidmap and newgidmap are on PATH.
// storage's re-exec needs both for an unprivileged user even when it ends up
// mapping the user's own ids only: without them it fails with "finding
// newgidmap". Container images (rbuild's own, FROM scratch) have neither.
func haveIDMapTools() bool {
	for _, tool := range []string{"newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(tool); err != nil {
			return false
		}
	}
	return true
}

// reexecSingleUID is storage's MaybeReexecUsingUserNamespace for a process
// without newuidmap: it re-executes rbuild in a new user and mount
// namespace where its own uid and gid are 0, written straight to the
// child's uid_map and gid_map (which an unprivileged process may do for its
// own ids, with setgroups denied). It exits with the child's status.
func reexecSingleUID() {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	// A name no reexec handler knows, so that the child runs main() again;
	// UsernsEnvName tells it that it is the child (see chooseIsolation).
	cmd := unshare.Command(append([]string{os.Args[0] + "-in-a-user-namespace"}, os.Args[1:]...)...)
	if err := os.Setenv(unshare.UsernsEnvName, "1"); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	cmd.UnshareFlags = syscall.CLONE_NEWUSER | syscall.CLONE_NEWNS
	cmd.UidMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(os.Geteuid()), Size: 1}}
	cmd.GidMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: uint32(os.Getegid()), Size: 1}}
	cmd.GidMappingsEnableSetgroups = false
	cmd.Cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	// Pass SIGHUP, SIGINT and SIGTERM on to the child, which does the work.
	signals := make(chan os.Signal, 16)
	signal.Notify(signals, syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM)
	cmd.Hook = func(int) error {
		go func() {
			for s := range signals {
				_ = cmd.Cmd.Process.Signal(s)
			}
		}()
		return nil
	}
	unshare.ExecRunnable(cmd, func() { signal.Stop(signals) })
}

func probeErr(err error) error {
	if err == nil {
		return errors.New("no CAP_SYS_ADMIN")
	}
	return err
}

// prepareUserLookup lets an arbitrary uid with no passwd entry and no HOME
// (OpenShift) through the user lookup of the user-namespace re-exec: the
// lookup falls back to $USER and $HOME.
func prepareUserLookup() {
	if os.Getenv("USER") == "" {
		os.Setenv("USER", fmt.Sprintf("uid-%d", os.Geteuid()))
	}
	if os.Getenv("HOME") == "" {
		os.Setenv("HOME", os.TempDir())
	}
}

func reportUserns(log io.Writer) error {
	uids, _, err := unshare.GetHostIDMappings("")
	if err != nil {
		return fmt.Errorf("reading user namespace mappings: %w", err)
	}
	var n uint32
	for _, m := range uids {
		n += m.Size
	}
	if n <= 1 {
		fmt.Fprintln(log, "WARNING: no /etc/subuid range for this user: only one uid is mapped, so files owned by other users lose their ownership and chown in RUN fails")
		fmt.Fprintln(log, "isolation: rootless, single-uid user namespace")
		return nil
	}
	fmt.Fprintf(log, "isolation: rootless user namespace with %d uids\n", n)
	return nil
}

// prepareRuntimeDir gives a rootless rbuild a runtime directory inside its
// state directory when XDG_RUNTIME_DIR is unset or names no directory.
// storage looks for one whenever it opens a store, even with an explicit
// run root, and without XDG_RUNTIME_DIR it wants /run/user/UID or $TMPDIR/storage-run-UID: in a
// pod with a read-only root file system it can make neither ("path
// /tmp/storage-run-1000 exists and it is not writeable only by the current
// user"), and the state directory is the one place that must be writable.
func prepareRuntimeDir(root string) error {
	if !unshare.IsRootless() {
		return nil
	}
	// One that is set but missing (a login's variable kept by su or sudo,
	// a CI image's ENV) would fail the store as surely as none.
	if v := os.Getenv("XDG_RUNTIME_DIR"); v != "" {
		if fi, err := os.Stat(v); err == nil && fi.IsDir() {
			return nil
		}
	}
	dir := filepath.Join(root, "xdg-run")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("runtime directory: %w", err)
	}
	return os.Setenv("XDG_RUNTIME_DIR", dir)
}
