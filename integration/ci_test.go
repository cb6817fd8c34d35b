package integration

// rbuild inside CI-like containers. Each scenario of TestContainers starts
// Debian's runc (`runc run` with a bundle generated here) on a minimal root
// filesystem — the static rbuild, the CA bundle, busybox, /tmp — with the
// context bound read-only at /context and the host's network namespace
// (the test registry is on 127.0.0.1). Inside, rbuild builds ci/context/
// and pushes; the image is pulled back with go-containerregistry and held
// to ci/expect.json (the case.json schema), and the build log must name
// the isolation rbuild picked. The scenarios are the pods of docs/ci.md:
//
//   userns:   uid 1000 in a container with its own user namespace
//             (Kubernetes hostUsers: false), unshare permitted, /proc
//             unmasked (procMount: Unmasked); userns-masked-proc: the
//             same with the runtime's default masked /proc paths;
//   chroot:   root without CAP_SYS_ADMIN, seccomp refusing unshare,
//             mount, setns and namespace clone flags (Docker's default);
//   anyuid:   uid 123456, gid 0, no passwd entry, HOME unset (OpenShift);
//   readonly: uid 1000 in a user namespace, read-only root file system,
//             state on a nosuid,nodev volume at /state (RBUILD_ROOT);
//   stop:     uid 1000 where seccomp refuses user namespaces: rbuild must
//             refuse before any work, naming the fix.

import (
	"debug/elf"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/rbuild/rbuild/internal/testenv"
)

// ciDir holds the build every container scenario runs: context/ (with its
// Dockerfile) and expect.json.
const ciDir = "ci"

// containerTimeout bounds one containerised build.
const containerTimeout = 4 * time.Minute

// Ids 0-65535 of a user-namespaced container are host ids from
// ciHostIDBase on, as a runtime with hostUsers: false would map them.
const (
	ciHostIDBase = 400000
	ciIDRange    = 65536
)

// The non-root user of the containers' root file systems; rbuild's own
// image has the same one.
const (
	containerUID  = 1000
	containerHome = "/home/rbuild"
)

// dockerCaps is Docker's (and containerd's) default capability set: no
// CAP_SYS_ADMIN.
var dockerCaps = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_NET_RAW", "CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// ciScenario is one kind of CI container.
type ciScenario struct {
	name string
	uid  uint32
	gid  uint32
	// userns gives the container its own user namespace, ids mapped from
	// ciHostIDBase.
	userns bool
	// seccomp installs blockNamespacesProfile.
	seccomp bool
	// readonly makes the root file system read-only and binds a writable
	// volume (nosuid,nodev) at /state, with RBUILD_ROOT=/state.
	readonly bool
	// unsetHome starts rbuild with no HOME at all (runc would set HOME=/
	// for a uid without passwd entry), through busybox env -u.
	unsetHome bool
	// unmaskedProc leaves /proc without the runtime's masked and read-only
	// paths (Kubernetes procMount: Unmasked, Docker --security-opt
	// systempaths=unconfined). With them the kernel refuses a fresh proc
	// mount in a user namespace, which a RUN sandbox makes.
	unmaskedProc bool
	// noCaps runs the container with an empty capability set (Kubernetes
	// capabilities: drop: [ALL]) instead of Docker's default set.
	noCaps bool
	// isolation must appear in the build log.
	isolation *regexp.Regexp
	// stop, when set, makes this a scenario where rbuild must refuse to
	// build: exit non-zero before any work, with stop in its error.
	stop *regexp.Regexp
}

var ciScenarios = []ciScenario{
	// (a) Kubernetes hostUsers: false, runAsUser 1000, procMount: Unmasked,
	// capabilities dropped: the Job of docs/ci.md.
	{name: "userns", uid: containerUID, gid: containerUID, userns: true, unmaskedProc: true, noCaps: true,
		isolation: regexp.MustCompile(`(?m)^isolation: rootless`)},
	// (a') the same pod with the default procMount.
	{name: "userns-masked-proc", uid: containerUID, gid: containerUID, userns: true,
		isolation: regexp.MustCompile(`(?m)^isolation: rootless`)},
	// (b) root, Docker's default capabilities and a seccomp profile that
	// refuses namespaces and mounts.
	{name: "chroot", uid: 0, gid: 0, seccomp: true,
		isolation: regexp.MustCompile(`(?m)^isolation: chroot \(user namespaces unavailable`)},
	// (c) OpenShift-style arbitrary uid (host users; Docker: -u 123456
	// --security-opt seccomp=unconfined --security-opt systempaths=unconfined).
	{name: "anyuid", uid: 123456, gid: 0, unsetHome: true, unmaskedProc: true,
		isolation: regexp.MustCompile(`(?m)^isolation: rootless`)},
	// (d) readOnlyRootFilesystem with an emptyDir-like volume for the state.
	{name: "readonly", uid: containerUID, gid: containerUID, userns: true, readonly: true, unmaskedProc: true,
		isolation: regexp.MustCompile(`(?m)^isolation: rootless`)},
	// The last rung: non-root where seccomp refuses user namespaces (a pod
	// with seccompProfile RuntimeDefault). Nothing can isolate RUN.
	{name: "stop", uid: containerUID, gid: containerUID, seccomp: true,
		stop: regexp.MustCompile(`cannot isolate RUN steps as uid 1000: creating a user namespace failed \(.*operation not permitted\)\. Allow user namespaces: in Kubernetes set hostUsers: false`)},
}

// hostID is the host id that the container's id maps to.
func (s ciScenario) hostID(id uint32) int {
	if s.userns {
		return int(ciHostIDBase + id)
	}
	return int(id)
}

func TestContainers(t *testing.T) {
	skipE2E(t)
	if os.Geteuid() != 0 {
		t.Skip("runc run with a generated bundle needs root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Fatal("runc is missing (see scripts/test-deps.sh)")
	}
	want, err := loadCIExpect()
	if err != nil {
		t.Fatal(err)
	}
	bin := staticBinary(t)
	reg, bases := h.registry(t)
	work := filepath.Join(h.workDir(t), "containers")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}
	ctxDir := filepath.Join(work, "context")
	if err := copyTree(filepath.Join(ciDir, "context"), ctxDir); err != nil {
		t.Fatal(err)
	}

	for _, s := range ciScenarios {
		t.Run(s.name, func(t *testing.T) {
			t.Parallel()
			dir := filepath.Join(work, s.name)
			ref := fmt.Sprintf("%s/ci/%s:latest", reg.Addr, s.name)
			release := h.acquire()
			res, err := runCIContainer(dir, bin, ctxDir, s, []string{
				"build", "--progress", "plain",
				"-t", ref, "--build-arg", "REGISTRY=" + reg.Addr,
				"/context",
			})
			release()
			if err != nil {
				t.Fatalf("%v\n%s", err, res.report())
			}
			if s.stop != nil {
				if res.ExitCode == 0 || !s.stop.MatchString(res.Stderr) {
					t.Fatalf("want a non-zero exit and an error matching %q\n%s", s.stop, res.report())
				}
				if strings.Contains(res.Stderr, "FROM") || strings.Contains(res.Stderr, "resolved") {
					t.Errorf("rbuild started working before it stopped\n%s", res.report())
				}
				if err := checkAbsentFromRegistry(ref); err != nil {
					t.Error(err)
				}
				t.Logf("stopped as it should: %s", firstLine(res.Stderr, "error:"))
				return
			}
			if res.ExitCode != 0 {
				t.Fatalf("rbuild exited with %d in the %s container\n%s", res.ExitCode, s.name, res.report())
			}
			t.Logf("built in %s; %s", res.Took.Round(100*time.Millisecond), firstLine(res.Stderr, "isolation:"))
			if !s.isolation.MatchString(res.Stderr) {
				t.Errorf("the build log does not match %q\n%s", s.isolation, res.report())
			}
			v, err := pullImage(ref)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range checkImage(want, v, bases.Known) {
				t.Error(p)
			}
		})
	}
}

// loadCIExpect reads ci/expect.json as a case, expectations only.
func loadCIExpect() (*Case, error) {
	b, err := os.ReadFile(filepath.Join(ciDir, "expect.json"))
	if err != nil {
		return nil, err
	}
	c := &Case{Name: "ci"}
	if err := strictUnmarshal(b, c); err != nil {
		return nil, fmt.Errorf("ci/expect.json: %w", err)
	}
	return c, nil
}

func firstLine(s, prefix string) string {
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			return l
		}
	}
	return "(no " + prefix + " line)"
}

// containerRun is what one container printed.
type containerRun struct {
	Args     []string
	Stdout   string
	Stderr   string
	ExitCode int
	Took     time.Duration
	Dir      string
}

func (r *containerRun) report() string {
	if r == nil {
		return ""
	}
	var b strings.Builder
	fmt.Fprintf(&b, "container bundle: %s\n$ %s\n", r.Dir, strings.Join(r.Args, " "))
	if r.Stdout != "" {
		fmt.Fprintf(&b, "--- stdout (tail)\n%s\n", testenv.Tail(r.Stdout, 30))
	}
	if r.Stderr != "" {
		fmt.Fprintf(&b, "--- stderr (tail)\n%s\n", testenv.Tail(r.Stderr, 40))
	}
	return b.String()
}

var (
	staticOnce sync.Once
	staticBin  string
	staticErr  error
)

// staticBinary returns a statically linked rbuild for the containers' root
// file systems: the harness's binary when it is static (make integration
// passes bin/rbuild), else one built here with the Makefile's flags.
func staticBinary(t testing.TB) string {
	t.Helper()
	bin := h.binary(t)
	staticOnce.Do(func() {
		ok, err := isStatic(bin)
		if err != nil || ok {
			staticBin, staticErr = bin, err
			return
		}
		dir := filepath.Join(h.workDir(t), "static")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			staticErr = err
			return
		}
		out := filepath.Join(dir, "rbuild")
		start := time.Now()
		cmd := exec.Command(goTool(), "build", "-trimpath",
			"-tags", "exclude_graphdriver_btrfs netgo osusergo",
			"-ldflags", "-s -w -extldflags -static",
			"-o", out, "./cmd/rbuild")
		cmd.Dir = moduleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if b, err := cmd.CombinedOutput(); err != nil {
			staticErr = fmt.Errorf("static go build ./cmd/rbuild: %v\n%s", err, b)
			return
		}
		if ok, err := isStatic(out); err != nil || !ok {
			staticErr = fmt.Errorf("%s is not statically linked (%v)", out, err)
			return
		}
		fmt.Fprintf(os.Stderr, "integration: built a static %s in %s\n", out, time.Since(start).Round(time.Second))
		staticBin = out
	})
	if staticErr != nil {
		t.Fatalf("static rbuild binary: %v", staticErr)
	}
	return staticBin
}

// isStatic reports whether the ELF file at path has no program interpreter.
func isStatic(path string) (bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return false, err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return false, nil
		}
	}
	return true, nil
}

// makeCIRootfs lays out the container's root file system in dir: rbuild,
// the CA bundle, busybox (for env -u and for debugging), /etc/passwd with
// root and rbuild (uid 1000, home /home/rbuild, owned by it), /tmp, and the
// mount points.
func makeCIRootfs(dir, bin string, s ciScenario) error {
	for _, d := range []string{"usr/local/bin", "etc/ssl/certs", "bin", "proc", "dev", "sys", "context", "state", "home"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Mkdir(filepath.Join(dir, "tmp"), 0o755); err != nil {
		return err
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), os.ModeSticky|0o777); err != nil {
		return err
	}
	home := filepath.Join(dir, containerHome)
	if err := os.Mkdir(home, 0o755); err != nil {
		return err
	}
	if err := os.Chown(home, s.hostID(containerUID), s.hostID(containerUID)); err != nil {
		return err
	}
	for src, dst := range map[string]string{
		bin:                                  "usr/local/bin/rbuild",
		busyboxBinary:                        "bin/busybox",
		"/etc/ssl/certs/ca-certificates.crt": "etc/ssl/certs/ca-certificates.crt",
	} {
		b, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		mode := os.FileMode(0o755)
		if strings.HasSuffix(dst, ".crt") {
			mode = 0o644
		}
		if err := os.WriteFile(filepath.Join(dir, dst), b, mode); err != nil {
			return err
		}
	}
	if err := os.Symlink("busybox", filepath.Join(dir, "bin/sh")); err != nil {
		return err
	}
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\nrbuild:x:1000:1000:rbuild:/home/rbuild:/bin/sh\n",
		"etc/group":  "root:x:0:\nrbuild:x:1000:\n",
	}
	for p, content := range files {
		if err := os.WriteFile(filepath.Join(dir, p), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

// runCIContainer runs rbuild with args in a container of kind s whose
// bundle it writes under dir, and waits (at most containerTimeout).
func runCIContainer(dir, bin, ctxDir string, s ciScenario, args []string) (*containerRun, error) {
	rootfs := filepath.Join(dir, "rootfs")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := makeCIRootfs(rootfs, bin, s); err != nil {
		return nil, fmt.Errorf("root file system: %w", err)
	}
	argv := append([]string{"/usr/local/bin/rbuild"}, args...)
	if s.unsetHome {
		argv = append([]string{"/bin/busybox", "env", "-u", "HOME"}, argv...)
	}
	return runBundle(dir, ctxDir, s, argv, nil)
}

// runBundle writes the runtime configuration of scenario s next to
// dir/rootfs and runs argv there.
func runBundle(dir, ctxDir string, s ciScenario, argv, env []string) (*containerRun, error) {
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		return nil, err
	}
	if err := os.Chown(state, s.hostID(s.uid), s.hostID(s.gid)); err != nil {
		return nil, err
	}
	spec := ciSpec(s, argv, ctxDir, state)
	spec.Process.Env = mergeEnv(spec.Process.Env, env)
	b, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), b, 0o644); err != nil {
		return nil, err
	}
	return runcRun(dir, fmt.Sprintf("rbuild-ci-%d-%s", os.Getpid(), s.name), argv)
}

// runcRun runs the bundle in dir in the foreground and removes the
// container afterwards; standard output and error go to files in dir.
func runcRun(dir, id string, argv []string) (*containerRun, error) {
	res := &containerRun{Args: argv, Dir: dir}
	stdout, err := os.Create(filepath.Join(dir, "stdout.log"))
	if err != nil {
		return nil, err
	}
	defer stdout.Close()
	stderr, err := os.Create(filepath.Join(dir, "stderr.log"))
	if err != nil {
		return nil, err
	}
	defer stderr.Close()
	runcRoot := filepath.Join(dir, "runc-state")
	cmd := exec.Command("runc", "--root", runcRoot, "run", "--bundle", dir, id)
	cmd.Stdout, cmd.Stderr = stdout, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	// runc run stays in the foreground until the container's process
	// exits; on timeout kill the container itself, not just runc.
	timer := time.AfterFunc(containerTimeout, func() {
		_ = exec.Command("runc", "--root", runcRoot, "kill", "--all", id, "KILL").Run()
	})
	err = cmd.Wait()
	timedOut := !timer.Stop()
	res.Took = time.Since(start)
	_ = exec.Command("runc", "--root", runcRoot, "delete", "--force", id).Run()
	o, _ := os.ReadFile(stdout.Name())
	e, _ := os.ReadFile(stderr.Name())
	res.Stdout, res.Stderr = string(o), string(e)
	if timedOut {
		return res, fmt.Errorf("container %s killed after %s", id, containerTimeout)
	}
	if ee, ok := err.(*exec.ExitError); ok {
		res.ExitCode = ee.ExitCode()
		return res, nil
	}
	return res, err
}

// ciSpec is the OCI runtime configuration of scenario s: what a CI runner
// or a Kubernetes pod of that kind gets from its runtime (Docker's default
// capability set without CAP_SYS_ADMIN, masked /proc paths, no new
// privileges, the host's network namespace).
func ciSpec(s ciScenario, argv []string, ctxDir, state string) *specs.Spec {
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin", "TERM=dumb"}
	switch {
	case s.unsetHome:
	case s.uid == 0:
		env = append(env, "HOME=/root")
	default:
		env = append(env, "HOME="+containerHome)
	}
	if s.readonly {
		env = append(env, "RBUILD_ROOT=/state")
	}
	caps := dockerCaps
	if s.noCaps {
		caps = []string{}
	}
	umask := uint32(0o022)
	spec := &specs.Spec{
		Version: specs.Version,
		Root:    &specs.Root{Path: "rootfs", Readonly: s.readonly},
		Process: &specs.Process{
			Args: argv,
			Env:  env,
			Cwd:  "/",
			User: specs.User{UID: s.uid, GID: s.gid, Umask: &umask},
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  caps,
				Effective: caps,
				Permitted: caps,
			},
			NoNewPrivileges: true,
		},
		Hostname: "ci-" + s.name,
		Mounts: []specs.Mount{
			{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
			{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
			{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
			// The host's network namespace: a new sysfs would be refused
			// in a user namespace, so bind the host's, read-only.
			{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "ro"}},
			{Destination: "/context", Type: "bind", Source: ctxDir, Options: []string{"rbind", "ro"}},
		},
		Linux: &specs.Linux{
			Namespaces: []specs.LinuxNamespace{
				{Type: specs.PIDNamespace},
				{Type: specs.IPCNamespace},
				{Type: specs.UTSNamespace},
				{Type: specs.MountNamespace},
			},
			Resources: &specs.LinuxResources{
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
		},
	}
	if !s.unmaskedProc {
		// runc's and containerd's defaults (Kubernetes procMount: Default).
		spec.Linux.MaskedPaths = []string{
			"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
			"/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
			"/proc/sched_debug", "/sys/firmware", "/proc/scsi",
		}
		spec.Linux.ReadonlyPaths = []string{
			"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
		}
	}
	if s.readonly {
		spec.Mounts = append(spec.Mounts, specs.Mount{
			Destination: "/state", Type: "bind", Source: state,
			Options: []string{"rbind", "rw", "nosuid", "nodev"},
		})
	}
	if s.userns {
		spec.Linux.Namespaces = append(spec.Linux.Namespaces, specs.LinuxNamespace{Type: specs.UserNamespace})
		spec.Linux.UIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: ciHostIDBase, Size: ciIDRange}}
		spec.Linux.GIDMappings = []specs.LinuxIDMapping{{ContainerID: 0, HostID: ciHostIDBase, Size: ciIDRange}}
	}
	if s.seccomp {
		spec.Linux.Seccomp = blockNamespacesProfile()
	}
	return spec
}

// Namespace flags of clone(2).
const cloneNamespaceFlags = syscall.CLONE_NEWNS | syscall.CLONE_NEWCGROUP | syscall.CLONE_NEWUTS |
	syscall.CLONE_NEWIPC | syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID | syscall.CLONE_NEWNET

// blockNamespacesProfile is a seccomp profile that allows everything but
// what Docker's default profile refuses a container without CAP_SYS_ADMIN
// for namespaces and mounts: unshare, setns, mount and the new mount API
// fail with EPERM, clone with any namespace flag too, and clone3 (whose
// flags seccomp cannot see) with ENOSYS so that callers fall back to clone.
func blockNamespacesProfile() *specs.LinuxSeccomp {
	eperm := uint(syscall.EPERM)
	enosys := uint(syscall.ENOSYS)
	sc := &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32},
		Syscalls: []specs.LinuxSyscall{
			{
				Names: []string{
					"unshare", "setns", "mount", "umount", "umount2", "pivot_root",
					"fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
				},
				Action:   specs.ActErrno,
				ErrnoRet: &eperm,
			},
			{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		},
	}
	// One rule a flag: seccomp ORs the rules of a syscall, and has no
	// "masked value is not zero" comparison.
	for f := uint64(1); f != 0 && f <= cloneNamespaceFlags; f <<= 1 {
		if f&cloneNamespaceFlags == 0 {
			continue
		}
		sc.Syscalls = append(sc.Syscalls, specs.LinuxSyscall{
			Names:    []string{"clone"},
			Action:   specs.ActErrno,
			ErrnoRet: &eperm,
			Args:     []specs.LinuxSeccompArg{{Index: 0, Value: f, ValueTwo: f, Op: specs.OpMaskedEqual}},
		})
	}
	return sc
}

// mergeEnv returns base with the KEY=VALUE entries of over added, an entry
// of over replacing base's for the same key.
func mergeEnv(base, over []string) []string {
	out := append([]string(nil), base...)
	for _, kv := range over {
		k, _, _ := strings.Cut(kv, "=")
		replaced := false
		for i, b := range out {
			if bk, _, _ := strings.Cut(b, "="); bk == k {
				out[i], replaced = kv, true
				break
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return out
}

// TestOwnImage builds rbuild's own image from the top-level Dockerfile as
// `make image` does (a context narrowed by .dockerignore, FROM scratch, an
// OCI layout), checks it against ci/image-expect.json, runs `rbuild
// version` in it with umoci and runc, and then uses it as a CI job would:
// unpacked into a container with its own user namespace (Kubernetes
// hostUsers: false, procMount: Unmasked), as the image's user 1000 with
// the image's environment, it builds ci/context and pushes.
func TestOwnImage(t *testing.T) {
	skipE2E(t)
	if os.Geteuid() != 0 {
		t.Skip("umoci unpack keeping ownership and runc run need root")
	}
	for _, tool := range []string{"runc", "umoci"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is missing (see scripts/test-deps.sh)", tool)
		}
	}
	want := &Case{Name: "own-image"}
	b, err := os.ReadFile(filepath.Join(ciDir, "image-expect.json"))
	if err == nil {
		err = strictUnmarshal(b, want)
	}
	if err != nil {
		t.Fatalf("ci/image-expect.json: %v", err)
	}
	bin := staticBinary(t)
	work := filepath.Join(h.workDir(t), "own-image")
	if err := os.MkdirAll(work, 0o755); err != nil {
		t.Fatal(err)
	}

	// The context: the repository's Dockerfile and .dockerignore, the
	// binary where `make build` puts it, the root file system the
	// Makefile stages, and something .dockerignore must keep out.
	ctx := filepath.Join(work, "context")
	root := moduleRoot()
	for _, f := range []string{"Dockerfile", ".dockerignore"} {
		b, err := os.ReadFile(filepath.Join(root, f))
		if err != nil {
			t.Fatal(err)
		}
		writeFile(t, filepath.Join(ctx, f), b, 0o644)
	}
	b, err = os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(ctx, "bin/rbuild"), b, 0o755)
	writeFile(t, filepath.Join(ctx, "go.mod"), []byte("module not/in/the/image\n"), 0o644)
	staged := filepath.Join(ctx, "out/image/rootfs")
	ca, err := os.ReadFile("/etc/ssl/certs/ca-certificates.crt")
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(staged, "etc/ssl/certs/ca-certificates.crt"), ca, 0o644)
	for _, d := range []string{"home", "usr/local/bin"} {
		if err := os.MkdirAll(filepath.Join(staged, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Mkdir(filepath.Join(staged, "tmp"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(filepath.Join(staged, "tmp"), os.ModeSticky|0o777); err != nil {
		t.Fatal(err)
	}

	layoutDir := filepath.Join(work, "layout")
	start := time.Now()
	cmd := exec.Command(bin, "build", "--root", filepath.Join(work, "state"), "--progress", "plain",
		"--push=false", "-t", "rbuild:test", "--output", "type=oci,dest="+layoutDir, ctx)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("building the image: %v\n%s", err, out)
	}
	t.Logf("image built in %s", time.Since(start).Round(100*time.Millisecond))
	p, err := layout.FromPath(layoutDir)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 1 {
		t.Fatalf("the layout holds %d manifests, want 1", len(im.Manifests))
	}
	img, err := idx.Image(im.Manifests[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	v, err := viewImage(img)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checkImage(want, v, nil) {
		t.Error(p)
	}

	// rbuild version, run the way the image says (user 1000).
	res, err := runImage(img, []string{"/usr/local/bin/rbuild", "version"}, filepath.Join(work, "version"))
	if err != nil {
		t.Fatalf("runc: %v\n%s", err, res.Stderr)
	}
	if res.ExitCode != 0 || !strings.Contains(res.Stdout, "rbuild") {
		t.Fatalf("rbuild version in the image: exit %d, stdout %q, stderr %q", res.ExitCode, res.Stdout, res.Stderr)
	}
	t.Logf("in the image: %s", strings.TrimSpace(res.Stdout))
	if t.Failed() {
		return
	}

	// A CI job with the image: unpack it with its ids shifted into the
	// container's user namespace, and build ci/context there.
	reg, bases := h.registry(t)
	ciWant, err := loadCIExpect()
	if err != nil {
		t.Fatal(err)
	}
	ciCtx := filepath.Join(work, "ci-context")
	if err := copyTree(filepath.Join(ciDir, "context"), ciCtx); err != nil {
		t.Fatal(err)
	}
	s := ciScenario{name: "own-image", uid: containerUID, gid: containerUID, userns: true, unmaskedProc: true}
	bundle := filepath.Join(work, "job")
	idmap := fmt.Sprintf("0:%d:%d", ciHostIDBase, ciIDRange)
	if out, err := exec.Command("umoci", "unpack", "--uid-map", idmap, "--gid-map", idmap,
		"--image", layoutDir+":test", bundle).CombinedOutput(); err != nil {
		t.Fatalf("umoci unpack: %v\n%s", err, out)
	}
	// umoci makes the bundle 0700: the container's root (host uid
	// ciHostIDBase) must reach its rootfs.
	if err := os.Chmod(bundle, 0o755); err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	ref := fmt.Sprintf("%s/ci/own-image:latest", reg.Addr)
	argv := append(append([]string{}, cf.Config.Entrypoint...),
		"build", "--progress", "plain", "-t", ref, "--build-arg", "REGISTRY="+reg.Addr, "/context")
	release := h.acquire()
	run, err := runBundle(bundle, ciCtx, s, argv, cf.Config.Env)
	release()
	if err != nil {
		t.Fatalf("%v\n%s", err, run.report())
	}
	if run.ExitCode != 0 {
		t.Fatalf("rbuild exited with %d in its own image\n%s", run.ExitCode, run.report())
	}
	t.Logf("built in its own image in %s; %s", run.Took.Round(100*time.Millisecond), firstLine(run.Stderr, "isolation:"))
	built, err := pullImage(ref)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checkImage(ciWant, built, bases.Known) {
		t.Error(p)
	}
}

func writeFile(t *testing.T, p string, b []byte, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, b, mode); err != nil {
		t.Fatal(err)
	}
}
