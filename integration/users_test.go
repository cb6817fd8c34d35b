package integration

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// testUserName is the unprivileged account the rootless runs use.
const testUserName = "rbuildtest"

// subIDSize is the size of the subordinate uid/gid range given to the test
// user (what useradd gives by default: a full 16-bit range).
const subIDSize = 65536

// account is a user the harness runs rbuild as.
type account struct {
	Name     string
	UID, GID uint32
	Home     string
	// Self is set when the harness is not root and runs "rootless" builds
	// as its own user.
	Self bool
}

// Credential returns the process credential to run as this account, or nil
// when it is the harness's own user.
func (a *account) Credential() *syscall.Credential {
	if a.Self {
		return nil
	}
	return &syscall.Credential{Uid: a.UID, Gid: a.GID, Groups: []uint32{}}
}

// Chown gives path (recursively, without following symlinks) to the
// account, so that it can read its context and write its state.
func (a *account) Chown(path string) error {
	if a.Self {
		return nil
	}
	return filepath.Walk(path, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, int(a.UID), int(a.GID))
	})
}

// ensureTestUser creates rbuildtest with a home directory and subordinate
// uid/gid ranges when they are missing. Without root it returns the
// current user instead.
func ensureTestUser() (*account, error) {
	if os.Geteuid() != 0 {
		u, err := user.Current()
		if err != nil {
			return nil, err
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		return &account{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir, Self: true}, nil
	}
	if _, err := user.Lookup(testUserName); err != nil {
		out, err := exec.Command("useradd", "--create-home", "--shell", "/bin/sh", "--user-group", testUserName).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("useradd %s: %v: %s", testUserName, err, out)
		}
	}
	u, err := user.Lookup(testUserName)
	if err != nil {
		return nil, err
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	a := &account{Name: u.Username, UID: uint32(uid), GID: uint32(gid), Home: u.HomeDir}
	if err := os.MkdirAll(a.Home, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chown(a.Home, uid, gid); err != nil {
		return nil, err
	}
	for _, f := range []string{"/etc/subuid", "/etc/subgid"} {
		if err := ensureSubIDs(f, testUserName, subIDSize); err != nil {
			return nil, err
		}
	}
	for _, tool := range []string{"newuidmap", "newgidmap"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is missing (install uidmap, see scripts/test-deps.sh)", tool)
		}
	}
	return a, nil
}

// ensureSubIDs gives name a range of size ids in file (/etc/subuid or
// /etc/subgid) unless it has one of at least that size, starting past every
// range already given out, and at 100000 or later.
func ensureSubIDs(file, name string, size int) error {
	data, err := os.ReadFile(file)
	if err != nil && !os.IsNotExist(err) {
		return err
	}
	next := 100000
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		f := strings.Split(strings.TrimSpace(sc.Text()), ":")
		if len(f) != 3 {
			continue
		}
		start, err1 := strconv.Atoi(f[1])
		n, err2 := strconv.Atoi(f[2])
		if err1 != nil || err2 != nil {
			continue
		}
		if f[0] == name && n >= size {
			return nil
		}
		if start+n > next {
			next = start + n
		}
	}
	line := fmt.Sprintf("%s:%d:%d\n", name, next, size)
	if len(data) > 0 && !strings.HasSuffix(string(data), "\n") {
		line = "\n" + line
	}
	f, err := os.OpenFile(file, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
	if err != nil {
		return err
	}
	if _, err := f.WriteString(line); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
