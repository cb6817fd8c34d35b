package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"unsafe"

	"github.com/opencontainers/runc/libcontainer/exeseal"
	"golang.org/x/sys/unix"
)

// sealedEnv marks a process that tried to run from a sealed copy of its
// binary already, so that a failed attempt is never repeated.
const sealedEnv = "_RBUILD_SEALED_EXE"

// sealSelf re-executes the build process, once, from a sealed in-memory
// copy of the rbuild binary (a memfd, as runc makes).
//
// Every RUN step starts its sandbox's init by executing rbuild's own
// binary, and libcontainer must not let the step reach that file (the
// runc CVE-2019-5736 attack overwrites it through /proc/self/exe): unless
// /proc/self/exe is a sealed memfd already, it seals a copy per step, with
// a private overlay mount where it can and otherwise by copying the whole
// binary into a new memfd. In a rootless build the overlay way fails (the
// binary reached through storage's read-only bind mount has no path), so
// each RUN paid for a copy of the binary: about a tenth of a small step's
// CPU time in the bench profile. One copy at the start makes every step
// skip it, with the same protection.
//
// It returns only when it does not exec: already sealed, or not possible
// here (then libcontainer seals per step, as before).
func sealSelf() {
	if exeseal.IsSelfExeCloned() || os.Getenv(sealedEnv) != "" {
		return
	}
	self, err := os.Open("/proc/self/exe")
	if err != nil {
		return
	}
	defer self.Close()
	st, err := self.Stat()
	if err != nil {
		return
	}
	mem, err := exeseal.CloneBinary(self, st.Size(), "/proc/self/exe", os.TempDir())
	if err != nil || !exeseal.IsCloned(mem) {
		if mem != nil {
			mem.Close()
		}
		return
	}
	if err := os.Setenv(sealedEnv, "1"); err != nil {
		mem.Close()
		return
	}
	path := filepath.Join("/proc/self/fd", fmt.Sprint(mem.Fd()))
	_ = unix.Exec(path, os.Args, os.Environ())
	// Still here: exec failed; go on unsealed.
	mem.Close()
	_ = os.Unsetenv(sealedEnv)
}

// init names a process that was executed from a memfd "rbuild": ps and top
// would show the file descriptor's number ("8"), the base name of the path
// it was executed as. It runs in init because prctl names only the calling
// thread, and package initialization runs on the main thread. (A RUN
// step's init is named by runc before Go starts, and keeps its name.)
func init() {
	b, err := os.ReadFile("/proc/self/comm")
	if name := strings.TrimSpace(string(b)); err != nil || name == "" || strings.Trim(name, "0123456789") != "" {
		return
	}
	name := []byte("rbuild\x00")
	_ = unix.Prctl(unix.PR_SET_NAME, uintptr(unsafe.Pointer(&name[0])), 0, 0, 0)
}
