// Command rbuild builds OCI images from Dockerfiles with no daemon and no
// root:
//
//	rbuild -t registry.example.com/app .
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/rbuild/rbuild/executor"
	"go.podman.io/storage/pkg/reexec"
)

func main() {
	// Order matters: storage's helpers re-exec rbuild under their own
	// names, and libcontainer re-execs it as "rbuild init" for each RUN.
	if reexec.Init() {
		return
	}
	executor.Init()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := newRootCommand().ExecuteContext(ctx)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
