package integration

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// registryBinary is Debian's build of distribution 2.8 (package
// docker-registry).
const registryBinary = "/usr/bin/docker-registry"

// testRegistry is a docker-registry process serving 127.0.0.1:PORT with
// filesystem storage in a temporary directory.
type testRegistry struct {
	Addr string // 127.0.0.1:PORT
	dir  string
	cmd  *exec.Cmd
	done chan error
	log  *os.File
}

// startRegistry starts docker-registry in dir on a free loopback port and
// waits until /v2/ answers.
func startRegistry(dir string) (*testRegistry, error) {
	return startRegistryWith(dir, "")
}

// startRegistryWith starts a registry that, when htpasswd names a file,
// requires basic authentication with its (bcrypt) credentials.
func startRegistryWith(dir, htpasswd string) (*testRegistry, error) {
	if _, err := os.Stat(registryBinary); err != nil {
		return nil, fmt.Errorf("%s missing (install docker-registry, see scripts/test-deps.sh): %w", registryBinary, err)
	}
	var lastErr error
	// The port is chosen by binding :0 and closing; another process could
	// take it in between, so try a few times.
	for attempt := 0; attempt < 5; attempt++ {
		r, err := tryStartRegistry(dir, attempt, htpasswd)
		if err == nil {
			return r, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func tryStartRegistry(dir string, attempt int, htpasswd string) (*testRegistry, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	storage := filepath.Join(dir, fmt.Sprintf("storage-%d", attempt))
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, err
	}
	// The access log goes to stdout (one line a request); tests that count
	// requests can read registry.log.
	config := fmt.Sprintf(`version: 0.1
log:
  level: warn
  formatter: text
  accesslog:
    disabled: false
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: %s
  headers:
    X-Content-Type-Options: [nosniff]
`, storage, addr)
	if htpasswd != "" {
		config += fmt.Sprintf("auth:\n  htpasswd:\n    realm: rbuild-test\n    path: %s\n", htpasswd)
	}
	cfgPath := filepath.Join(dir, fmt.Sprintf("config-%d.yml", attempt))
	if err := os.WriteFile(cfgPath, []byte(config), 0o644); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(registryBinary, "serve", cfgPath)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group, so that a signal to the test's group (Ctrl-C)
	// does not race our orderly stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	r := &testRegistry{Addr: addr, dir: dir, cmd: cmd, done: make(chan error, 1), log: logf}
	go func() { r.done <- cmd.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.waitReady(ctx); err != nil {
		r.Stop()
		b, _ := os.ReadFile(logf.Name())
		return nil, fmt.Errorf("docker-registry on %s: %w\n%s", addr, err, tail(string(b), 20))
	}
	return r, nil
}

func (r *testRegistry) waitReady(ctx context.Context) error {
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		select {
		case err := <-r.done:
			r.done <- err
			return fmt.Errorf("exited early: %v", err)
		default:
		}
		resp, err := client.Get("http://" + r.Addr + "/v2/")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
			err = fmt.Errorf("GET /v2/: %s", resp.Status)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Stop kills exactly the registry's process and waits for it.
func (r *testRegistry) Stop() {
	if r == nil || r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
	r.log.Close()
}

// Alive reports whether the process is still running.
func (r *testRegistry) Alive() bool {
	select {
	case err := <-r.done:
		r.done <- err
		return false
	default:
		return true
	}
}

// AccessLog returns the registry's log so far.
func (r *testRegistry) AccessLog() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "registry.log"))
	return string(b)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// tail returns the last n lines of s.
func tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
