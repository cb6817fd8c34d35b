package executor

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/opencontainers/runc/libcontainer/configs"
	"github.com/opencontainers/runc/libcontainer/specconv"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// defaultPath is what Docker puts in the environment when the image and the
// Dockerfile set no PATH.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// defaultHostname is the sandbox's hostname when RunSpec.Hostname is empty:
// fixed, so that a RUN step does not see (and bake into a layer) the name of
// the machine that built it.
const defaultHostname = "rbuild"

// defaultCapabilities is Docker's default capability set (moby's
// oci/caps.DefaultCapabilities). specconv.Example grants only three, which
// breaks ordinary package installs (chown, setuid helpers, ...).
var defaultCapabilities = []string{
	"CAP_CHOWN",
	"CAP_DAC_OVERRIDE",
	"CAP_FSETID",
	"CAP_FOWNER",
	"CAP_MKNOD",
	"CAP_NET_RAW",
	"CAP_SETGID",
	"CAP_SETUID",
	"CAP_SETFCAP",
	"CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE",
	"CAP_SYS_CHROOT",
	"CAP_KILL",
	"CAP_AUDIT_WRITE",
}

var specconvMu sync.Mutex

// Docker's default masked and read-only paths: host information the sandbox
// has no business reading or changing even through its own /proc and /sys.
var (
	maskedPaths = []string{
		"/proc/asound",
		"/proc/acpi",
		"/proc/interrupts",
		"/proc/kcore",
		"/proc/keys",
		"/proc/latency_stats",
		"/proc/timer_list",
		"/proc/timer_stats",
		"/proc/sched_debug",
		"/proc/scsi",
		"/sys/firmware",
		"/sys/devices/virtual/powercap",
	}
	readonlyPaths = []string{
		"/proc/bus",
		"/proc/fs",
		"/proc/irq",
		"/proc/sys",
		"/proc/sysrq-trigger",
	}
)

// idMaps are the uid and gid mappings of the sandbox's user namespace.
type idMaps struct {
	uids, gids []specs.LinuxIDMapping
}

// identityMaps returns, for the user namespace the process is in, an
// identity mapping (sandbox id N = our id N) of every range that is mapped
// here. As real root in the initial namespace that is 0-4294967294 in one
// range, so files keep their real ownership; after
// unshare.MaybeReexecUsingUserNamespace it is the user's own uid as 0 plus
// the /etc/subuid range (or only 0 when the user has none).
//
// A nested user namespace is needed even though we are already "root" in
// one: runc may create and mount in new mount, pid, ipc, uts (and net)
// namespaces only from a user namespace that owns them, and a fresh userns
// gives the sandbox its own capability set.
func identityMaps() (idMaps, error) {
	uids, err := readIDMap("/proc/self/uid_map")
	if err != nil {
		return idMaps{}, err
	}
	gids, err := readIDMap("/proc/self/gid_map")
	if err != nil {
		return idMaps{}, err
	}
	return idMaps{uids: uids, gids: gids}, nil
}

// readIDMap parses a /proc/PID/{uid,gid}_map file into identity mappings of
// the inside ranges it lists.
func readIDMap(path string) ([]specs.LinuxIDMapping, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []specs.LinuxIDMapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 3 {
			return nil, fmt.Errorf("%s: malformed line %q", path, sc.Text())
		}
		inside, err1 := strconv.ParseUint(fields[0], 10, 32)
		size, err2 := strconv.ParseUint(fields[2], 10, 32)
		if err1 != nil || err2 != nil || size == 0 {
			return nil, fmt.Errorf("%s: malformed line %q", path, sc.Text())
		}
		out = append(out, specs.LinuxIDMapping{
			ContainerID: uint32(inside),
			HostID:      uint32(inside),
			Size:        uint32(size),
		})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s is empty: this process's user namespace has no mapping", path)
	}
	return out, nil
}

// filesystemSupported reports whether the kernel lists fstype in
// /proc/filesystems.
func filesystemSupported(fstype string) bool {
	data, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) > 0 && fields[len(fields)-1] == fstype {
			return true
		}
	}
	return false
}

// containsID reports whether id is inside one of the mapped ranges.
func containsID(m []specs.LinuxIDMapping, id uint32) bool {
	for _, r := range m {
		if uint64(id) >= uint64(r.ContainerID) && uint64(id) < uint64(r.ContainerID)+uint64(r.Size) {
			return true
		}
	}
	return false
}

// sandboxSpec holds everything newConfig needs, already validated.
type sandboxSpec struct {
	rootfs    string
	hostname  string
	netNone   bool
	hostsFile string
	resolv    string
	mounts    []Mount // targets absolute
	maps      idMaps
	// procBind binds the host's /proc (rbind, read as the runtime masked
	// it) where a new proc mount is refused.
	procBind bool
}

// newConfig builds the libcontainer configuration of a RUN sandbox. It goes
// through an OCI runtime spec and specconv (as runc does) so that mount
// options, devices and the cgroup configuration are parsed the way runc's
// own tests exercise them.
func newConfig(s sandboxSpec, cgroupName string) (*configs.Config, error) {
	// /dev/pts with gid=5 (tty) as Docker, but only when gid 5 exists in the
	// sandbox: with a single-id mapping the mount would fail with EINVAL.
	ptsOpts := []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}
	if containsID(s.maps.gids, 5) {
		ptsOpts = append(ptsOpts, "gid=5")
	}

	mounts := []specs.Mount{
		procMount(s.procBind),
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: ptsOpts},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
	}
	if filesystemSupported("mqueue") {
		// The sandbox always has its own IPC namespace, owned by its own
		// user namespace, so mqueue (FS_USERNS_MOUNT) may be mounted there
		// whenever the kernel has it.
		mounts = append(mounts, specs.Mount{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}})
	}
	if s.netNone {
		// sysfs may be mounted only by the owner of the network namespace:
		// with a private one, a real read-only sysfs.
		mounts = append(mounts, specs.Mount{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}})
	} else {
		// With the host's network namespace a new sysfs mount is refused
		// (EPERM), so bind the host's /sys, recursively read-only (rro:
		// plain ro would leave the cgroup submounts writable, and with the
		// identity mapping the sandbox's root is the owner of those files).
		mounts = append(mounts, specs.Mount{Destination: "/sys", Type: "bind", Source: "/sys", Options: []string{"rbind", "nosuid", "noexec", "nodev", "rro"}})
	}
	// Read-only as in BuildKit: a RUN step must not edit the sandbox's own
	// files, which never reach the image anyway.
	mounts = append(mounts,
		specs.Mount{Destination: "/etc/hosts", Type: "bind", Source: s.hostsFile, Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}},
		specs.Mount{Destination: "/etc/resolv.conf", Type: "bind", Source: s.resolv, Options: []string{"bind", "ro", "nosuid", "nodev", "noexec"}},
	)
	for _, m := range s.mounts {
		if m.Type == "tmpfs" {
			opts := []string{"nosuid", "nodev"}
			if m.Size > 0 {
				opts = append(opts, fmt.Sprintf("size=%d", m.Size))
			}
			mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "tmpfs", Source: "tmpfs", Options: opts})
			continue
		}
		opts := []string{"rbind"}
		if m.ReadOnly {
			opts = append(opts, "ro")
		}
		mounts = append(mounts, specs.Mount{Destination: m.Target, Type: "bind", Source: m.Source, Options: opts})
	}

	namespaces := []specs.LinuxNamespace{
		{Type: specs.UserNamespace},
		{Type: specs.MountNamespace},
		{Type: specs.PIDNamespace},
		{Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace},
	}
	if s.netNone {
		// specconv adds a loopback interface that runc brings up.
		namespaces = append(namespaces, specs.LinuxNamespace{Type: specs.NetworkNamespace})
	}

	umask := uint32(0o022)
	spec := &specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: s.rootfs},
		Hostname: s.hostname,
		Mounts:   mounts,
		Process: &specs.Process{
			User: specs.User{Umask: &umask},
			Capabilities: &specs.LinuxCapabilities{
				Bounding:  defaultCapabilities,
				Effective: defaultCapabilities,
				Permitted: defaultCapabilities,
			},
		},
		Linux: &specs.Linux{
			Namespaces:    namespaces,
			UIDMappings:   s.maps.uids,
			GIDMappings:   s.maps.gids,
			MaskedPaths:   maskedPaths,
			ReadonlyPaths: readonlyPaths,
			Resources: &specs.LinuxResources{
				// Deny every device first, then specconv appends the
				// default allow list (null, zero, full, tty, random,
				// urandom, pts). Only applied where the device cgroup is
				// writable (real root); rootless it is skipped.
				Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
			},
		},
	}

	// specconv shares its default device list between configs and writes
	// the host root's uid/gid into those shared entries: one conversion at
	// a time, and each config gets its own copies.
	specconvMu.Lock()
	defer specconvMu.Unlock()
	cfg, err := specconv.CreateLibcontainerConfig(&specconv.CreateOpts{
		CgroupName: cgroupName,
		Spec:       spec,
		// Run refuses a non-zero euid, so this is always false here.
		RootlessEUID: os.Geteuid() != 0,
		// Ignore cgroups that cannot be written (a user namespace, a
		// read-only cgroupfs in a CI container) instead of failing: RUN sets
		// no resource limits, the cgroup only helps clean-up.
		RootlessCgroups: true,
	})
	if err != nil {
		return nil, err
	}
	for i, d := range cfg.Devices {
		dup := *d
		cfg.Devices[i] = &dup
	}
	// Kill the sandbox if the thread that started it dies (rbuild killed):
	// nothing may keep writing into a rootfs that is about to be committed.
	cfg.ParentDeathSignal = int(unix.SIGKILL)
	return cfg, nil
}

func procMount(bind bool) specs.Mount {
	if bind {
		return specs.Mount{Destination: "/proc", Type: "bind", Source: "/proc", Options: []string{"rbind", "nosuid", "noexec", "nodev"}}
	}
	return specs.Mount{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}}
}
