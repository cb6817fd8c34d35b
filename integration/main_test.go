// Package integration holds rbuild's end-to-end tests: the rbuild binary
// builds the Dockerfiles under cases/ as root and as an unprivileged user,
// pushes to a real registry (Debian's docker-registry) on 127.0.0.1, and an
// independent reader (go-containerregistry, skopeo, umoci and runc) checks
// the images against the expectations in each case.json. See README.md.
//
// Product code never imports this package; it has only tests.
package integration

import (
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/rbuild/rbuild/internal/testenv"
)

// Environment variables that steer the harness (all optional).
const (
	envBinary = "RBUILD_TEST_BINARY" // use this rbuild binary instead of building one
	envBin    = "RBUILD_BIN"         // the same, as the Makefile spells it
	envKeep   = "RBUILD_TEST_KEEP"   // "1": keep the work directory (printed at the end)
	envJobs   = "RBUILD_TEST_JOBS"   // builds at once (default 4)
	envSkip   = "RBUILD_TEST_SKIP_E2E"
)

// harness is the shared state of one test process. Every part is made on
// first use, so running only the unit tests (go test -run TestCaseFiles)
// starts no registry and builds no binary.
type harness struct {
	workOnce sync.Once
	work     string // 0755 temporary directory for everything the tests make
	workErr  error

	binOnce sync.Once
	bin     string
	binErr  error

	regOnce sync.Once
	reg     *testenv.Registry
	bases   *baseImages
	regErr  error

	debianOnce sync.Once
	debianErr  error

	userOnce sync.Once
	user     *account
	userErr  error

	// slots bounds the builds running at once (each one unpacks, runs and
	// compresses layers: 2 cores are busy with a few).
	slots chan struct{}
}

var h = &harness{}

func TestMain(m *testing.M) {
	flag.Parse()
	// The cases are many and each build waits on I/O and subprocesses:
	// run more tests at once than GOMAXPROCS (the jobs bound applies
	// inside), and give a cold first run (mmdebstrap, go build) time.
	setDefaultFlag("test.parallel", "16")
	setDefaultFlag("test.timeout", "40m")
	jobs := 4
	if v, err := strconv.Atoi(os.Getenv(envJobs)); err == nil && v > 0 {
		jobs = v
	}
	h.slots = make(chan struct{}, jobs)

	code := m.Run()
	h.teardown()
	os.Exit(code)
}

// setDefaultFlag sets a testing flag unless the command line did.
func setDefaultFlag(name, value string) {
	set := false
	flag.Visit(func(f *flag.Flag) {
		if f.Name == name {
			set = true
		}
	})
	if !set {
		if f := flag.Lookup(name); f != nil {
			_ = f.Value.Set(value)
		}
	}
}

func (h *harness) teardown() {
	if h.reg != nil {
		h.reg.Stop()
	}
	if h.work == "" {
		return
	}
	if os.Getenv(envKeep) == "1" {
		fmt.Fprintf(os.Stderr, "integration: work directory kept: %s\n", h.work)
		return
	}
	if err := os.RemoveAll(h.work); err != nil {
		fmt.Fprintf(os.Stderr, "integration: cleaning %s: %v\n", h.work, err)
	}
}

// workDir returns the process's work directory, readable by everyone so the
// unprivileged user can reach the binary and its own run directories.
func (h *harness) workDir(t testing.TB) string {
	h.workOnce.Do(func() {
		dir, err := os.MkdirTemp("", "rbuild-it-")
		if err == nil {
			err = os.Chmod(dir, 0o755)
		}
		h.work, h.workErr = dir, err
	})
	if h.workErr != nil {
		t.Fatalf("work directory: %v", h.workErr)
	}
	return h.work
}

// skipE2E skips tests that build images when asked to.
func skipE2E(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end builds are skipped with -short")
	}
	if os.Getenv(envSkip) == "1" {
		t.Skip(envSkip + "=1")
	}
}

// binary returns the rbuild binary, building it once per test process.
func (h *harness) binary(t testing.TB) string {
	t.Helper()
	h.binOnce.Do(func() {
		p := os.Getenv(envBinary)
		if p == "" {
			p = os.Getenv(envBin)
		}
		dir := filepath.Join(h.workDir(t), "bin")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			h.binErr = err
			return
		}
		bin := filepath.Join(dir, "rbuild")
		if p != "" {
			// Copy it where the unprivileged user can reach it: the
			// checkout may be under a directory it cannot enter.
			b, err := os.ReadFile(p)
			if err == nil {
				err = os.WriteFile(bin, b, 0o755)
			}
			h.bin, h.binErr = bin, err
			return
		}
		start := time.Now()
		cmd := exec.Command(goTool(), "build",
			"-tags", "exclude_graphdriver_btrfs netgo osusergo",
			"-o", bin, "./cmd/rbuild")
		cmd.Dir = moduleRoot()
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		out, err := cmd.CombinedOutput()
		if err != nil {
			h.binErr = fmt.Errorf("go build ./cmd/rbuild: %v\n%s", err, out)
			return
		}
		if err := os.Chmod(bin, 0o755); err != nil {
			h.binErr = err
			return
		}
		h.bin = bin
		fmt.Fprintf(os.Stderr, "integration: built %s in %s\n", bin, time.Since(start).Round(time.Second))
	})
	if h.binErr != nil {
		t.Fatalf("rbuild binary: %v", h.binErr)
	}
	return h.bin
}

// registry returns the running registry and the base images in it.
func (h *harness) registry(t testing.TB) (*testenv.Registry, *baseImages) {
	t.Helper()
	h.regOnce.Do(func() {
		dir := filepath.Join(h.workDir(t), "registry")
		if err := os.MkdirAll(dir, 0o755); err != nil {
			h.regErr = err
			return
		}
		reg, err := testenv.StartRegistry(dir, "")
		if err != nil {
			h.regErr = err
			return
		}
		h.reg = reg
		h.bases, h.regErr = pushBaseImages(reg.Addr)
	})
	if h.regErr != nil {
		t.Fatalf("registry: %v", h.regErr)
	}
	if !h.reg.Alive() {
		t.Fatalf("the registry on %s has exited:\n%s", h.reg.Addr, testenv.Tail(h.reg.AccessLog(), 20))
	}
	return h.reg, h.bases
}

// debian pushes REGISTRY/debian:bookworm on first use.
func (h *harness) debian(t testing.TB) {
	t.Helper()
	_, bases := h.registry(t)
	h.debianOnce.Do(func() {
		h.debianErr = bases.pushDebian(func(format string, a ...any) {
			fmt.Fprintf(os.Stderr, "integration: "+format+"\n", a...)
		})
	})
	if h.debianErr != nil {
		t.Fatalf("debian base image: %v", h.debianErr)
	}
}

// testUser returns the unprivileged account for rootless runs.
func (h *harness) testUser(t testing.TB) *account {
	t.Helper()
	h.userOnce.Do(func() {
		h.user, h.userErr = ensureTestUser()
	})
	if h.userErr != nil {
		t.Fatalf("test user: %v", h.userErr)
	}
	return h.user
}

// acquire takes a build slot; the returned function gives it back.
func (h *harness) acquire() func() {
	h.slots <- struct{}{}
	return func() { <-h.slots }
}

// moduleRoot is the repository root (tests run in the package directory).
func moduleRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		panic(err)
	}
	return filepath.Dir(wd)
}

func goTool() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	return "go"
}
