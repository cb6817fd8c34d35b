package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
)

// rbuildBuilder runs rbuild rootless, as the bench user with its subuid
// range: the way it is meant to run in CI.
type rbuildBuilder struct {
	env     *benchEnv
	bin     string
	dir     string
	version string
	// registryCache: the binary has --cache-from and --cache-to.
	registryCache bool
}

func newRbuild(env *benchEnv) (builder, error) {
	binDir := filepath.Join(env.work, "bin")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return nil, err
	}
	bin := filepath.Join(binDir, "rbuild")
	if err := copyFile(env.cfg.Rbuild, bin, 0o755); err != nil {
		return nil, err
	}
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		return nil, err
	}
	b := &rbuildBuilder{env: env, bin: bin, dir: filepath.Join(env.work, "rbuild"), version: strings.TrimSpace(string(out))}
	// Registry caches came with issue 5; an older binary has none.
	if help, err := exec.Command(bin, "build", "--help").CombinedOutput(); err == nil {
		b.registryCache = strings.Contains(string(help), "--cache-from")
	}
	return b, os.MkdirAll(b.dir, 0o755)
}

func (b *rbuildBuilder) Name() string { return "rbuild" }

func (b *rbuildBuilder) Info() builderInfo {
	cacheNote := "no registry cache in this binary: the registry-cache phase is n/a (issue 5)"
	if b.registryCache {
		cacheNote = "registry cache: the export build adds --cache-to type=registry,ref=REGISTRY/bench-cache-CASE-rbuild-rN,mode=max, the measured build --cache-from type=registry,ref=REGISTRY/bench-cache-CASE-rbuild-rN"
	}
	return builderInfo{
		Version: b.version,
		Commands: []string{
			"rbuild build --root STATE --progress plain --insecure-registry REGISTRY -t REGISTRY/bench-CASE-rbuild-rN:latest --build-arg REGISTRY=REGISTRY -f CTX/Dockerfile CTX",
		},
		Notes: []string{
			"runs as the unprivileged user " + benchUser + " (subuid range, newuidmap), overlay storage; pushes as part of the build",
			cacheNote,
		},
	}
}

func (b *rbuildBuilder) state() string { return filepath.Join(b.dir, "state") }

func (b *rbuildBuilder) Reset(ctx context.Context) error {
	if err := removeTree(b.dir); err != nil {
		return err
	}
	if _, _, _, err := userDirs(b.dir, b.env.uid, b.env.gid); err != nil {
		return err
	}
	if err := os.MkdirAll(b.state(), 0o700); err != nil {
		return err
	}
	return os.Chown(b.state(), b.env.uid, b.env.gid)
}

func (b *rbuildBuilder) Build(ctx context.Context, r buildReq) (usage, []string, error) {
	reg := b.env.reg.Addr
	argv := []string{b.bin, "build", "--root", b.state(), "--progress", "plain", "--insecure-registry", reg,
		"-t", r.Ref, "--build-arg", "REGISTRY=" + reg}
	switch r.Mode {
	case modeExport:
		argv = append(argv, "--cache-to", "type=registry,ref="+r.CacheRepo+",mode=max")
	case modeImport:
		argv = append(argv, "--cache-from", "type=registry,ref="+r.CacheRepo)
	}
	spec := cmdSpec{
		Argv: append(argv, "-f", filepath.Join(r.Context, "Dockerfile"), r.Context),
		Env: []string{
			"HOME=" + filepath.Join(b.dir, "home"),
			"XDG_RUNTIME_DIR=" + filepath.Join(b.dir, "run"),
			"TMPDIR=" + filepath.Join(b.dir, "tmp"),
			defaultPath,
			"USER=" + benchUser, "LOGNAME=" + benchUser,
		},
		Dir:  r.Context,
		Cred: &syscall.Credential{Uid: uint32(b.env.uid), Gid: uint32(b.env.gid), Groups: []uint32{}},
	}
	if os.Getenv("BENCH_PERF") == "1" {
		// perf follows the whole tree; it runs as root (kernel stacks
		// too) and drops to the bench user for rbuild.
		prof := strings.TrimSuffix(r.LogPath, ".log") + ".perf.data"
		spec.Argv = append([]string{"perf", "record", "-q", "-F", "999", "-g", "-o", prof, "--",
			"setpriv", fmt.Sprintf("--reuid=%d", b.env.uid), fmt.Sprintf("--regid=%d", b.env.gid), "--clear-groups", "--"},
			spec.Argv...)
		spec.Cred = nil
	}
	u, err := runMeasured(ctx, spec, r.Log, []string{b.bin}, r.Case.timeout)
	return u, []string{spec.String()}, err
}

func (b *rbuildBuilder) RegistryCache() (bool, string) {
	if !b.registryCache {
		return false, "n/a (issue 5)"
	}
	return true, ""
}

// rbuild prints "[stage n/N] RUN ..." per step and indents the step's
// output, so a RUN step lasts until the next unindented line.
var (
	rbuildRun  = regexp.MustCompile(`^\[[^\]]+ \d+/\d+\] RUN `)
	rbuildNext = regexp.MustCompile(`^\S`)
)

func (b *rbuildBuilder) RunTime(log string) float64 { return stepTimes(log, rbuildRun, rbuildNext) }

func (b *rbuildBuilder) Close() {}
