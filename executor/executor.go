// Package executor runs one build step: a RUN command inside a sandbox
// (runc's libcontainer, in new user, mount, pid, ipc and uts namespaces) and
// the file operations of COPY and ADD. It works on a root filesystem that the
// snapshot package has already mounted and knows nothing about registries,
// layers or caches.
package executor

import (
	"fmt"
	"io"
)

// RunSpec describes one RUN step.
type RunSpec struct {
	// Rootfs is the mounted, writable root filesystem of the step.
	Rootfs string
	// Args is the argv to execute (already wrapped in the SHELL for the
	// shell form).
	Args []string
	// Env is the full environment, KEY=value.
	Env []string
	// Dir is the working directory inside the rootfs; created when missing.
	Dir string
	// User is the Dockerfile USER value ("name", "uid", "name:group",
	// "uid:gid"), resolved against the rootfs' /etc/passwd and /etc/group.
	// Empty means root.
	User string
	// Network is "host" (the default when empty) or "none".
	Network string
	// Hostname of the sandbox; empty gives a fixed default.
	Hostname string
	// Mounts are extra bind mounts (cache, secret and bind mounts of
	// RUN --mount). They never reach a layer.
	Mounts []Mount
	// Isolation is "" (namespaces through libcontainer) or "chroot" (for
	// root where namespaces and mounts are not allowed; see chroot.go).
	Isolation string
	// StateDir is a private directory for the runtime's state.
	StateDir string
	// Stdout and Stderr receive the command's output.
	Stdout, Stderr io.Writer
}

// Mount is a bind mount of a host path, or a tmpfs, in the sandbox.
type Mount struct {
	// Type is "bind" (the default when empty) or "tmpfs" (Source unused).
	Type     string
	Source   string
	Target   string
	ReadOnly bool
	// Size limits a tmpfs, in bytes; 0 means the kernel's default.
	Size int64
}

// CopySpec describes one COPY or ADD step.
type CopySpec struct {
	// SrcRoot is the directory sources are relative to: the build context,
	// or the root filesystem of another stage or image for --from.
	SrcRoot string
	// Sources are the source arguments after variable expansion; they may
	// hold wildcards (filepath.Match syntax, as Docker). For ADD they may be
	// http(s) URLs.
	Sources []string
	// Dest is the destination after expansion; relative to WorkDir when not
	// absolute. A trailing slash, or several sources, make it a directory.
	Dest string
	// WorkDir is the stage's working directory at this step.
	WorkDir string
	// DstRoot is the mounted, writable root filesystem of the step.
	DstRoot string
	// Chown is the --chown value ("user", "user:group", "uid:gid"), resolved
	// against DstRoot's /etc/passwd and /etc/group; empty gives 0:0, or the
	// source owners with PreserveOwnership.
	Chown string
	// PreserveOwnership keeps the owners of the source files when Chown is
	// empty. Set it for COPY --from (a stage or an image): BuildKit keeps
	// their owners there (moby/moby#38599, moby/buildkit#1448), while files
	// of the build context always arrive as 0:0.
	PreserveOwnership bool
	// Chmod is the --chmod value (octal); empty keeps the source modes.
	Chmod string
	// Excluded reports whether a path relative to SrcRoot is excluded by
	// .dockerignore; nil excludes nothing (COPY --from). LoadIgnore makes
	// it.
	Excluded func(rel string) bool
	// Add selects ADD semantics: local tar archives are extracted, URLs
	// downloaded.
	Add bool
}

// ExitError is returned by Run when the command exits non-zero.
type ExitError struct {
	Code int
	// Tail holds the last lines of the command's combined output.
	Tail string
}

func (e *ExitError) Error() string {
	// The tail is not part of the one-line message; rbuild prints it
	// below the error.
	return fmt.Sprintf("exit code %d", e.Code)
}
