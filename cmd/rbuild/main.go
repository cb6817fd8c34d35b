// Command rbuild builds OCI images from Dockerfiles with no daemon and no
// root:
//
//	rbuild -t registry.example.com/app .
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"strings"
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
		var exit *executor.ExitError
		if errors.As(err, &exit) && exit.Tail != "" {
			fmt.Fprintln(os.Stderr, "last output of the failed step:")
			for _, l := range strings.Split(strings.TrimRight(exit.Tail, "\n"), "\n") {
				fmt.Fprintln(os.Stderr, "  "+l)
			}
		}
		os.Exit(1)
	}
}
