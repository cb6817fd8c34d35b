package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"strconv"
	"strings"
)

// benchUser runs the rootless builders (rbuild, buildah). It gets a range
// of 65536 subordinate ids, as rootless container tools need.
const benchUser = "rbuildbench"

// setupInfo records what the setup installed and what it could not.
type setupInfo struct {
	Installed []string          `json:"installed,omitempty"`
	Failed    map[string]string `json:"failed,omitempty"`
}

// packagesFor lists the Debian packages a run needs: the registry, the
// base images' inputs, and the peers.
func packagesFor(builders []string) []string {
	pk := []string{"docker-registry", "busybox-static", "mmdebstrap", "uidmap", "runc"}
	for _, b := range builders {
		switch b {
		case "docker":
			pk = append(pk, "docker.io")
		case "buildah":
			pk = append(pk, "buildah", "podman")
		}
	}
	return pk
}

func installed(pkg string) bool {
	out, err := exec.Command("dpkg-query", "-W", "-f=${Status}", pkg).Output()
	return err == nil && strings.Contains(string(out), "install ok installed")
}

// ensureDeps installs the missing packages with apt-get; a package that
// fails to install is recorded and its builder skipped later.
func ensureDeps(builders []string) setupInfo {
	var s setupInfo
	var missing []string
	for _, p := range packagesFor(builders) {
		if !installed(p) {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return s
	}
	logf("installing %s", strings.Join(missing, " "))
	env := append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	aptGet := func(args ...string) error {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("apt-get %s: %v: %s", strings.Join(args, " "), err, lastLines(string(out), 5))
		}
		return nil
	}
	if err := aptGet("update", "-qq"); err != nil {
		logf("%v", err)
	}
	if err := aptGet(append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)...); err == nil {
		s.Installed = missing
		return s
	}
	// One at a time, so one unavailable package does not stop the others.
	s.Failed = map[string]string{}
	for _, p := range missing {
		if err := aptGet("install", "-y", "-qq", "--no-install-recommends", p); err != nil {
			s.Failed[p] = err.Error()
			logf("could not install %s: %v", p, err)
			continue
		}
		s.Installed = append(s.Installed, p)
	}
	return s
}

// ensureUser makes the unprivileged user and its subordinate id ranges
// when missing, and returns its uid and gid.
func ensureUser(name string) (int, int, error) {
	if _, err := user.Lookup(name); err != nil {
		logf("adding user %s", name)
		out, err := exec.Command("useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
			"--shell", "/usr/sbin/nologin", name).CombinedOutput()
		if err != nil {
			return 0, 0, fmt.Errorf("useradd: %v: %s", err, out)
		}
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, 0, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	hasUID, endUID := subIDs("/etc/subuid", name)
	hasGID, endGID := subIDs("/etc/subgid", name)
	if !hasUID || !hasGID {
		start := max(endUID, endGID, 200000)
		rng := fmt.Sprintf("%d-%d", start, start+65535)
		logf("adding subordinate ids %s for %s", rng, name)
		var args []string
		if !hasUID {
			args = append(args, "--add-subuids", rng)
		}
		if !hasGID {
			args = append(args, "--add-subgids", rng)
		}
		out, err := exec.Command("usermod", append(args, name)...).CombinedOutput()
		if err != nil {
			return 0, 0, fmt.Errorf("usermod: %v: %s", err, out)
		}
	}
	return uid, gid, nil
}

// subIDs reports whether file has a range for name, and the end of the
// highest range of anyone (where a new range may start).
func subIDs(file, name string) (bool, int) {
	b, _ := os.ReadFile(file)
	has, end := false, 0
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Split(strings.TrimSpace(line), ":")
		if len(f) != 3 {
			continue
		}
		s, err1 := strconv.Atoi(f[1])
		n, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		if f[0] == name && n >= 65536 {
			has = true
		}
		end = max(end, s+n)
	}
	return has, end
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
