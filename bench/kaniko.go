package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"
)

// kanikoTag is the kaniko release tried through the Go module proxy.
const kanikoTag = "v1.23.2"

const kanikoModule = "github.com/GoogleContainerTools/kaniko/cmd/executor"

// kanikoBuilder runs kaniko's executor, and only inside a runc bundle whose
// root file system holds just /kaniko (executor, CA bundle,
// .docker/config.json): kaniko unpacks base images into / and deletes files
// under / between stages, and this machine has a /.dockerenv, so started on
// the host it would wreck it.
type kanikoBuilder struct {
	env  *benchEnv
	dir  string
	exe  string
	n    int
	note string
}

// newKaniko builds the executor from its tagged module release, once per
// machine (cached), or uses BENCH_KANIKO_EXECUTOR.
func newKaniko(ctx context.Context, env *benchEnv) (builder, error) {
	if _, err := exec.LookPath("runc"); err != nil {
		return nil, fmt.Errorf("runc: %w", errNotAvailable)
	}
	exe := os.Getenv("BENCH_KANIKO_EXECUTOR")
	if exe == "" {
		exe = filepath.Join(env.cfg.CacheDir, "kaniko-executor-"+kanikoTag)
		if _, err := os.Stat(exe); err != nil {
			if err := installKaniko(ctx, env, exe); err != nil {
				return nil, err
			}
		}
	}
	b := &kanikoBuilder{env: env, dir: filepath.Join(env.work, "kaniko"), exe: exe}
	return b, os.MkdirAll(b.dir, 0o755)
}

func installKaniko(ctx context.Context, env *benchEnv, dst string) error {
	gobin := filepath.Join(env.work, "kaniko-gobin")
	logf("kaniko: go install %s@%s", kanikoModule, kanikoTag)
	ctx, cancel := context.WithTimeout(ctx, 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", kanikoModule+"@"+kanikoTag)
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "CGO_ENABLED=0", "GOFLAGS=")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("go install %s@%s failed: %s", kanikoModule, kanikoTag, lastLines(strings.TrimSpace(string(out)), 3))
	}
	return copyFile(filepath.Join(gobin, "executor"), dst, 0o755)
}

func (b *kanikoBuilder) Name() string { return "kaniko" }

func (b *kanikoBuilder) Info() builderInfo {
	return builderInfo{
		Version: "kaniko executor " + kanikoTag + " (go install)",
		Commands: []string{
			"runc --root STATE run --bundle BUNDLE ID   # rootfs: /kaniko/{executor,ssl/certs/ca-certificates.crt,.docker/config.json}; CTX bound read-only at /workspace; host network",
			"/kaniko/executor --context dir:///workspace --dockerfile /workspace/Dockerfile --destination REGISTRY/bench-CASE-kaniko-rN:latest --build-arg REGISTRY=REGISTRY --insecure --insecure-pull --skip-tls-verify --skip-tls-verify-pull --cache=true --cache-repo REGISTRY/bench-cache-CASE-kaniko-rN --force",
		},
		Notes: []string{"kaniko's only layer cache is the registry (--cache-repo), used in every phase"},
	}
}

func (b *kanikoBuilder) Reset(ctx context.Context) error { return nil }

// bundle makes a fresh bundle: kaniko leaves its root file system full of
// the last image.
func (b *kanikoBuilder) bundle(r buildReq) (string, error) {
	b.n++
	bdir := filepath.Join(b.dir, fmt.Sprintf("bundle-%d", b.n))
	root := filepath.Join(bdir, "rootfs")
	for _, d := range []string{"kaniko/ssl/certs", "kaniko/.docker", "workspace", "proc", "dev", "sys", "etc", "tmp"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return "", err
		}
	}
	if err := copyFile(b.exe, filepath.Join(root, "kaniko", "executor"), 0o755); err != nil {
		return "", err
	}
	if err := copyFile(hostCABundle, filepath.Join(root, "kaniko", "ssl", "certs", "ca-certificates.crt"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, "kaniko", ".docker", "config.json"), []byte("{}\n"), 0o644); err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, "etc", "resolv.conf"), nil, 0o644); err != nil {
		return "", err
	}
	reg := b.env.reg.Addr
	args := []string{"/kaniko/executor",
		"--context", "dir:///workspace", "--dockerfile", "/workspace/Dockerfile",
		"--destination", r.Ref, "--build-arg", "REGISTRY=" + reg,
		"--insecure", "--insecure-pull", "--skip-tls-verify", "--skip-tls-verify-pull",
		"--cache=true", "--cache-repo", r.CacheRepo, "--force"}
	caps := []string{"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID",
		"CAP_SETUID", "CAP_SETPCAP", "CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_MKNOD", "CAP_AUDIT_WRITE", "CAP_SETFCAP"}
	spec := map[string]any{
		"ociVersion": "1.0.2",
		"process": map[string]any{
			"terminal": false,
			"user":     map[string]any{"uid": 0, "gid": 0},
			"args":     args,
			"env": []string{defaultPath + ":/kaniko", "HOME=/root", "DOCKER_CONFIG=/kaniko/.docker/",
				"SSL_CERT_DIR=/kaniko/ssl/certs", "container=kaniko"},
			"cwd": "/",
			"capabilities": map[string]any{
				"bounding": caps, "effective": caps, "permitted": caps,
			},
			// No rlimits: raising them needs CAP_SYS_RESOURCE, which this
			// machine does not grant.
			"noNewPrivileges": true,
		},
		"root":     map[string]any{"path": "rootfs", "readonly": false},
		"hostname": "kaniko",
		"mounts": []map[string]any{
			{"destination": "/proc", "type": "proc", "source": "proc"},
			{"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
			{"destination": "/sys", "type": "bind", "source": "/sys", "options": []string{"rbind", "nosuid", "noexec", "nodev", "ro"}},
			{"destination": "/workspace", "type": "bind", "source": r.Context, "options": []string{"rbind", "ro"}},
			{"destination": "/etc/resolv.conf", "type": "bind", "source": "/etc/resolv.conf", "options": []string{"bind", "ro"}},
		},
		"linux": map[string]any{
			// No network namespace: the registry is on the host's loopback.
			"namespaces":  []map[string]string{{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}},
			"maskedPaths": []string{"/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"},
		},
	}
	js, err := json.MarshalIndent(spec, "", "  ")
	if err != nil {
		return "", err
	}
	return bdir, os.WriteFile(filepath.Join(bdir, "config.json"), js, 0o644)
}

func (b *kanikoBuilder) Build(ctx context.Context, r buildReq) (usage, []string, error) {
	bdir, err := b.bundle(r)
	if err != nil {
		return usage{}, nil, err
	}
	defer removeTree(bdir)
	runc, _ := exec.LookPath("runc")
	state := filepath.Join(b.dir, "runc")
	spec := cmdSpec{
		Argv: []string{runc, "--root", state, "run", "--bundle", bdir, fmt.Sprintf("rbuild-bench-kaniko-%d", b.n)},
		Env:  []string{defaultPath},
		Dir:  bdir,
	}
	u, err := runMeasured(ctx, spec, r.Log, []string{filepath.Join(bdir, "rootfs", "kaniko", "executor"), "/kaniko/executor"}, r.Case.timeout)
	// runc leaves its state when the container was killed.
	_ = exec.Command(runc, "--root", state, "delete", "--force", fmt.Sprintf("rbuild-bench-kaniko-%d", b.n)).Run()
	return u, []string{spec.String()}, err
}

func (b *kanikoBuilder) RegistryCache() (bool, string) { return true, "" }

// kaniko logs "RUN ..." then "Taking snapshot of full filesystem..." when
// the command is done.
var (
	kanikoRun  = regexp.MustCompile(`level=info msg="RUN |INFO\[\d+\] RUN `)
	kanikoNext = regexp.MustCompile(`Taking snapshot|Pushing|INFO\[\d+\] (RUN|COPY|ENV|WORKDIR|FROM|CMD|ENTRYPOINT) `)
)

func (b *kanikoBuilder) RunTime(log string) float64 { return stepTimes(log, kanikoRun, kanikoNext) }

func (b *kanikoBuilder) Close() {}
