// Package testenv holds what the end-to-end tests (integration/) and the
// benchmark harness (bench/) both stand on: a real registry server on the
// loopback interface, base images assembled here (no public registry is
// reachable), and case directories stored as data.
package testenv

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

// RegistryBinary is Debian's build of distribution 2.8 (package
// docker-registry).
const RegistryBinary = "/usr/bin/docker-registry"

// Registry is a docker-registry process serving 127.0.0.1:PORT with
// filesystem storage in a directory of its own.
type Registry struct {
	Addr string // 127.0.0.1:PORT
	dir  string
	cmd  *exec.Cmd
	done chan error
	log  *os.File
}

// StartRegistry starts docker-registry in dir on a free loopback port and
// waits until /v2/ answers. When htpasswd names a file, the registry
// requires basic authentication with its (bcrypt) credentials.
func StartRegistry(dir, htpasswd string) (*Registry, error) {
	if _, err := os.Stat(RegistryBinary); err != nil {
		return nil, fmt.Errorf("%s missing (install docker-registry, see scripts/test-deps.sh): %w", RegistryBinary, err)
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

func tryStartRegistry(dir string, attempt int, htpasswd string) (*Registry, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	storage := filepath.Join(dir, fmt.Sprintf("storage-%d", attempt))
	if err := os.MkdirAll(storage, 0o755); err != nil {
		return nil, err
	}
	// The access log goes to stdout (one line a request); tests that count
	// requests read it with AccessLog.
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
	cmd := exec.Command(RegistryBinary, "serve", cfgPath)
	cmd.Stdout = logf
	cmd.Stderr = logf
	// Its own process group, so that a signal to the caller's group
	// (Ctrl-C) does not race an orderly stop; gone with its parent.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, err
	}
	r := &Registry{Addr: addr, dir: dir, cmd: cmd, done: make(chan error, 1), log: logf}
	go func() { r.done <- cmd.Wait() }()

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.waitReady(ctx); err != nil {
		r.Stop()
		b, _ := os.ReadFile(logf.Name())
		return nil, fmt.Errorf("docker-registry on %s: %w\n%s", addr, err, Tail(string(b), 20))
	}
	return r, nil
}

func (r *Registry) waitReady(ctx context.Context) error {
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

// Stop ends exactly the registry's process and waits for it.
func (r *Registry) Stop() {
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

// Pid is the registry's process ID (0 once stopped).
func (r *Registry) Pid() int {
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

// Alive reports whether the process is still running.
func (r *Registry) Alive() bool {
	select {
	case err := <-r.done:
		r.done <- err
		return false
	default:
		return true
	}
}

// AccessLog returns the registry's log so far.
func (r *Registry) AccessLog() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "registry.log"))
	return string(b)
}

// RegistryVersion is the registry server's version line.
func RegistryVersion() string {
	out, err := exec.Command(RegistryBinary, "--version").CombinedOutput()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, "\n")
}
