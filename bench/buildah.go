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

// buildahBuilder is Debian's buildah, rootless as the bench user: overlay
// storage and runc (crun fails on this cgroup v1 host), configured only
// through files in the work directory.
type buildahBuilder struct {
	env     *benchEnv
	dir     string
	version string
}

const buildahBin = "/usr/bin/buildah"

func newBuildah(env *benchEnv) (builder, error) {
	if _, err := os.Stat(buildahBin); err != nil {
		return nil, fmt.Errorf("%s: %w", buildahBin, errNotAvailable)
	}
	out, err := exec.Command(buildahBin, "--version").Output()
	if err != nil {
		return nil, err
	}
	b := &buildahBuilder{env: env, dir: filepath.Join(env.work, "buildah"), version: strings.TrimSpace(string(out))}
	return b, os.MkdirAll(b.dir, 0o755)
}

func (b *buildahBuilder) Name() string { return "buildah" }

func (b *buildahBuilder) Info() builderInfo {
	return builderInfo{
		Version: b.version,
		Commands: []string{
			"buildah build --layers --network host --tls-verify=false -t REGISTRY/bench-CASE-buildah-rN:latest --build-arg REGISTRY=REGISTRY -f CTX/Dockerfile CTX",
			"buildah push --tls-verify=false REGISTRY/bench-CASE-buildah-rN:latest",
		},
		Notes: []string{
			"runs as the unprivileged user " + benchUser + "; storage.conf: driver overlay, graphroot in the work directory; containers.conf: runtime runc, cgroupfs",
			"registry cache: the export build adds --cache-to REGISTRY/bench-cache-CASE-buildah-rN, the measured build --cache-from it",
		},
	}
}

const buildahStorage = `[storage]
driver = "overlay"
graphroot = "%s"
runroot = "%s"
`

const buildahContainers = `[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
image_copy_tmp_dir = "%s"
`

func (b *buildahBuilder) Reset(ctx context.Context) error {
	if err := removeTree(b.dir); err != nil {
		return err
	}
	_, _, tmp, err := userDirs(b.dir, b.env.uid, b.env.gid)
	if err != nil {
		return err
	}
	for _, d := range []string{"graph", "runroot"} {
		p := filepath.Join(b.dir, d)
		if err := os.MkdirAll(p, 0o700); err != nil {
			return err
		}
		if err := os.Chown(p, b.env.uid, b.env.gid); err != nil {
			return err
		}
	}
	files := map[string]string{
		"storage.conf":    fmt.Sprintf(buildahStorage, filepath.Join(b.dir, "graph"), filepath.Join(b.dir, "runroot")),
		"containers.conf": fmt.Sprintf(buildahContainers, tmp),
		"registries.conf": fmt.Sprintf("[[registry]]\nlocation = %q\ninsecure = true\n", b.env.reg.Addr),
	}
	for name, text := range files {
		if err := os.WriteFile(filepath.Join(b.dir, name), []byte(text), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func (b *buildahBuilder) Build(ctx context.Context, r buildReq) (usage, []string, error) {
	reg := b.env.reg.Addr
	env := []string{
		"HOME=" + filepath.Join(b.dir, "home"),
		"XDG_RUNTIME_DIR=" + filepath.Join(b.dir, "run"),
		"XDG_CONFIG_HOME=" + filepath.Join(b.dir, "home", ".config"),
		"TMPDIR=" + filepath.Join(b.dir, "tmp"),
		"CONTAINERS_STORAGE_CONF=" + filepath.Join(b.dir, "storage.conf"),
		"CONTAINERS_CONF=" + filepath.Join(b.dir, "containers.conf"),
		"CONTAINERS_REGISTRIES_CONF=" + filepath.Join(b.dir, "registries.conf"),
		defaultPath,
		"USER=" + benchUser, "LOGNAME=" + benchUser,
	}
	cred := &syscall.Credential{Uid: uint32(b.env.uid), Gid: uint32(b.env.gid), Groups: []uint32{}}
	build := []string{buildahBin, "build", "--layers", "--network", "host", "--tls-verify=false",
		"-t", r.Ref, "--build-arg", "REGISTRY=" + reg}
	switch r.Mode {
	case modeExport:
		build = append(build, "--cache-to", r.CacheRepo)
	case modeImport:
		build = append(build, "--cache-from", r.CacheRepo)
	}
	build = append(build, "-f", filepath.Join(r.Context, "Dockerfile"), r.Context)
	specs := []cmdSpec{
		{Argv: build, Env: env, Dir: r.Context, Cred: cred},
		{Argv: []string{buildahBin, "push", "--tls-verify=false", r.Ref}, Env: env, Dir: r.Context, Cred: cred},
	}
	var total usage
	var cmds []string
	for _, s := range specs {
		cmds = append(cmds, s.String())
		u, err := runMeasured(ctx, s, r.Log, []string{buildahBin}, r.Case.timeout)
		total.add(u)
		if err != nil {
			return total, cmds, err
		}
	}
	return total, cmds, nil
}

func (b *buildahBuilder) RegistryCache() (bool, string) { return true, "" }

// buildah prints "STEP n/N: RUN ..." per step ("[s/S] STEP ..." in a
// multi-stage build), then the output, then
// "--> ID" after the commit; a RUN step lasts to the next STEP or COMMIT
// line, the commit included (as for rbuild).
var (
	buildahRun  = regexp.MustCompile(`^(\[\d+/\d+\] )?STEP \d+/\d+: RUN `)
	buildahNext = regexp.MustCompile(`^(\[\d+/\d+\] )?(STEP \d+/\d+: |COMMIT)`)
)

func (b *buildahBuilder) RunTime(log string) float64 { return stepTimes(log, buildahRun, buildahNext) }

func (b *buildahBuilder) Close() {}
