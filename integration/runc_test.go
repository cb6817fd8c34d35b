package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/rbuild/rbuild/internal/testenv"
)

// runTimeout bounds one container run.
const runTimeout = 60 * time.Second

var runSeq atomic.Int64

// runResult is what a container printed and how it exited.
type runResult struct {
	Stdout, Stderr string
	ExitCode       int
}

// runImage runs img with runc, the way a user would run the built image:
// an OCI layout is written with go-containerregistry, umoci unpacks it
// into a bundle (as root, keeping ownership) and derives config.json from
// the image config; argv, when set, replaces the process arguments.
// It needs root.
func runImage(img v1.Image, argv []string, dir string) (*runResult, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("running images needs root (umoci unpack keeps ownership, runc as root)")
	}
	for _, tool := range []string{"umoci", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is missing (see scripts/test-deps.sh)", tool)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	oci := filepath.Join(dir, "oci")
	p, err := layout.Write(oci, empty.Index)
	if err != nil {
		return nil, err
	}
	img, err = asOCI(img)
	if err != nil {
		return nil, err
	}
	if err := p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": "run",
	})); err != nil {
		return nil, fmt.Errorf("writing OCI layout: %w", err)
	}
	bundle := filepath.Join(dir, "bundle")
	if out, err := exec.Command("umoci", "unpack", "--image", oci+":run", bundle).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("umoci unpack: %v: %s", err, out)
	}
	if err := editRuntimeConfig(filepath.Join(bundle, "config.json"), argv); err != nil {
		return nil, err
	}

	id := fmt.Sprintf("rbuild-it-%d-%d", os.Getpid(), runSeq.Add(1))
	state := filepath.Join(dir, "runc-state")
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "runc", "--root", state, "run", "--bundle", bundle, id)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	err = cmd.Run()
	// Remove the container whatever happened (no-op when runc already did).
	_ = exec.Command("runc", "--root", state, "delete", "--force", id).Run()
	res := &runResult{Stdout: stdout.String(), Stderr: stderr.String()}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("runc run timed out after %s", runTimeout)
	case errors.As(err, &ee):
		res.ExitCode = ee.ExitCode()
	case err != nil:
		return res, fmt.Errorf("runc run: %w", err)
	}
	return res, nil
}

// asOCI returns img with OCI media types throughout, manifest, config and
// layers (umoci reads nothing else). Mixed manifests are reported by
// checkMediaTypes; running still tests what the image does.
func asOCI(img v1.Image) (v1.Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	layers, err := img.Layers()
	if err != nil {
		return nil, err
	}
	out := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for _, l := range layers {
		lmt, err := l.MediaType()
		if err != nil {
			return nil, err
		}
		if lmt == types.DockerLayer {
			lmt = types.OCILayer
		}
		if out, err = mutate.Append(out, mutate.Addendum{Layer: l, MediaType: lmt}); err != nil {
			return nil, err
		}
	}
	return mutate.ConfigFile(out, cf)
}

// editRuntimeConfig adapts umoci's config.json to a batch run: no
// terminal, no rlimits (this machine may not raise them), optionally other
// arguments.
func editRuntimeConfig(path string, argv []string) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	var spec map[string]any
	if err := json.Unmarshal(b, &spec); err != nil {
		return err
	}
	proc, _ := spec["process"].(map[string]any)
	if proc == nil {
		return fmt.Errorf("%s has no process", path)
	}
	proc["terminal"] = false
	delete(proc, "rlimits")
	if len(argv) > 0 {
		proc["args"] = argv
	}
	b, err = json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, b, 0o644)
}

// checkRun runs the image and compares its output with the expectation.
func checkRun(img v1.Image, want *RunExpect, dir string) []string {
	res, err := runImage(img, want.Argv, dir)
	if err != nil {
		msg := "run: " + err.Error()
		if res != nil && res.Stderr != "" {
			msg += "\nstderr: " + testenv.Tail(res.Stderr, 10)
		}
		return []string{msg}
	}
	var probs []string
	if res.ExitCode != want.ExitCode {
		probs = append(probs, fmt.Sprintf("run %q: exit code %d, want %d; stderr: %s", want.Argv, res.ExitCode, want.ExitCode, testenv.Tail(res.Stderr, 10)))
	}
	if want.Stdout != nil && res.Stdout != *want.Stdout {
		probs = append(probs, fmt.Sprintf("run %q: stdout %q, want %q; stderr: %s", want.Argv, clip(res.Stdout), *want.Stdout, testenv.Tail(res.Stderr, 10)))
	}
	if want.StdoutContains != "" && !strings.Contains(res.Stdout, want.StdoutContains) {
		probs = append(probs, fmt.Sprintf("run %q: stdout %q lacks %q", want.Argv, clip(res.Stdout), want.StdoutContains))
	}
	return probs
}
