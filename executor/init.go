package executor

import (
	"os"

	"github.com/opencontainers/runc/libcontainer"

	// The C constructor of nsenter does the namespace set-up of the
	// sandbox's init before the Go runtime starts (it must be
	// single-threaded). Without it the parent fails with "can't get final
	// child's PID from pipe: EOF".
	_ "github.com/opencontainers/runc/libcontainer/nsenter"

	// Registers the cgroup device-rule manager. Without it, as real root
	// (where the device cgroup is writable), runc fails with "cgroup
	// manager is not configured to set device rules".
	_ "github.com/opencontainers/cgroups/devices"
)

// Init turns this process into the init of a RUN sandbox when it was started
// as one (os.Args[1] == "init": libcontainer re-executes the running binary
// that way); it then never returns. Otherwise it returns at once.
//
// Call it at the very start of main() (and of TestMain), in this order:
//
//	func main() {
//		if reexec.Init() { // go.podman.io/storage/pkg/reexec
//			return
//		}
//		executor.Init()
//		unshare.MaybeReexecUsingUserNamespace(false) // rootless only
//		... flags, logging, the rest ...
//	}
//
// Why this order:
//
//   - reexec.Init first: storage starts its own helpers (chrootarchive and
//     friends) as re-executions of this binary, recognised by os.Args[0].
//     They never have "init" as their first argument, and the sandbox init
//     never carries a registered helper name (its os.Args[0] is the parent's,
//     a normal rbuild or "...-in-a-user-namespace"), so the two checks do not
//     overlap; storage documents that reexec.Init comes first.
//   - Init before unshare.MaybeReexecUsingUserNamespace: the sandbox init
//     runs with a clean environment (no _CONTAINERS_ROOTLESS_UID) as uid 0 of
//     a fresh user namespace, so that function would take it for a new
//     rootless run and try to re-exec it into yet another namespace.
//   - Init before anything else: flag parsing would reject "init", and
//     logging set-up or goroutines would only get in the way of an init that
//     is about to execve the RUN command. The namespace work itself already
//     happened in nsenter's C constructor, before main.
func Init() {
	if len(os.Args) > 1 && os.Args[1] == "init" {
		libcontainer.Init() // never returns
	}
}
