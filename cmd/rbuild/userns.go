package main

import (
	"fmt"
	"os"

	"go.podman.io/storage/pkg/unshare"
)

// enterUserNamespace re-executes an unprivileged rbuild inside a user
// namespace (with the user's /etc/subuid range through newuidmap, or only
// its own uid when it has none), where it may mount overlay and own files
// as any mapped uid. Root stays where it is. It says which mode it picked.
func enterUserNamespace() error {
	if os.Geteuid() == 0 && !unshare.IsRootless() {
		fmt.Fprintln(os.Stderr, "isolation: running as root; RUN steps use an identity-mapped user namespace")
		return nil
	}
	if !unshare.IsRootless() || os.Geteuid() != 0 {
		// Does not return in this process: the child in the new namespace
		// runs the build and this process exits with its status.
		unshare.MaybeReexecUsingUserNamespace(false)
	}
	uids, _, err := unshare.GetHostIDMappings("")
	if err != nil {
		return fmt.Errorf("reading user namespace mappings: %w", err)
	}
	var n uint32
	for _, m := range uids {
		n += m.Size
	}
	if n <= 1 {
		fmt.Fprintln(os.Stderr, "WARNING: no /etc/subuid range for this user: only one uid is mapped, so files owned by other users lose their ownership and chown in RUN fails")
		fmt.Fprintln(os.Stderr, "isolation: rootless, single-uid user namespace")
		return nil
	}
	fmt.Fprintf(os.Stderr, "isolation: rootless user namespace with %d uids\n", n)
	return nil
}
