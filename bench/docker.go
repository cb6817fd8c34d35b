package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// dockerBuilder is Docker's engine from Debian's docker.io (20.10, BuildKit
// built in), started as root with its data in the work directory, its own
// socket, exec root and containerd namespace, no bridge and no iptables.
// An empty local state is a new dockerd on a new data root.
type dockerBuilder struct {
	env     *benchEnv
	dir     string
	sock    string
	version string
	buildx  string
	gen     int

	pid    int
	exited chan struct{}
}

const dockerCLI = "/usr/bin/docker"

func newDocker(ctx context.Context, env *benchEnv) (builder, error) {
	for _, p := range []string{"/usr/sbin/dockerd", dockerCLI} {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("%s: %w", p, errNotAvailable)
		}
	}
	b := &dockerBuilder{env: env, dir: filepath.Join(env.work, "docker")}
	b.sock = filepath.Join(b.dir, "docker.sock")
	if err := os.MkdirAll(filepath.Join(b.dir, "config"), 0o700); err != nil {
		return nil, err
	}
	if err := b.start(ctx); err != nil {
		b.Close()
		return nil, err
	}
	out, err := exec.Command(dockerCLI, "-H", "unix://"+b.sock, "version", "--format", "{{.Server.Version}}").Output()
	if err != nil {
		b.Close()
		return nil, err
	}
	b.version = "Docker Engine " + strings.TrimSpace(string(out)) + " (docker.io), BuildKit built in"
	if out, err := exec.Command(dockerCLI, "buildx", "version").CombinedOutput(); err != nil {
		b.buildx = "no buildx plugin (`docker buildx version`: " + strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0] + "), so no --cache-to/--cache-from type=registry"
	} else {
		b.buildx = "buildx " + strings.TrimSpace(string(out)) + " is present but not used (the peer is the engine's built-in BuildKit)"
	}
	return b, nil
}

func (b *dockerBuilder) Name() string { return "docker" }

func (b *dockerBuilder) Info() builderInfo {
	return builderInfo{
		Version: b.version,
		Commands: []string{
			"dockerd --data-root DIR --exec-root DIR --pidfile FILE -H unix://SOCK --bridge=none --iptables=false --ip-forward=false --ip-masq=false --insecure-registry REGISTRY --containerd-namespace rbuild-bench --containerd-plugins-namespace rbuild-bench-plugins",
			"DOCKER_BUILDKIT=1 /usr/bin/docker -H unix://SOCK build --network host --progress plain -t REGISTRY/bench-CASE-docker-rN:latest --build-arg REGISTRY=REGISTRY -f CTX/Dockerfile CTX",
			"/usr/bin/docker -H unix://SOCK push REGISTRY/bench-CASE-docker-rN:latest",
		},
		Notes: []string{
			"CPU time is the docker CLI's plus the daemon tree's (dockerd, containerd and their reaped children) from /proc; peak RSS is dockerd's and containerd's VmHWM, reset before each build",
			"registry cache: " + b.buildx + "; docker build with BuildKit can only use the inline cache: the export build adds --build-arg BUILDKIT_INLINE_CACHE=1, the measured build --cache-from the image (inline cache holds the final stage only: mode=min)",
			"an empty local state is a new dockerd on an empty data root",
		},
	}
}

func (b *dockerBuilder) start(ctx context.Context) error {
	b.gen++
	data := filepath.Join(b.dir, fmt.Sprintf("data-%d", b.gen))
	exec_ := filepath.Join(b.dir, "exec")
	logFile, err := os.Create(filepath.Join(b.dir, fmt.Sprintf("dockerd-%d.log", b.gen)))
	if err != nil {
		return err
	}
	cmd := exec.Command("/usr/sbin/dockerd",
		"--data-root", data,
		"--exec-root", exec_,
		"--pidfile", filepath.Join(b.dir, "dockerd.pid"),
		"-H", "unix://"+b.sock,
		"--bridge=none", "--iptables=false", "--ip-forward=false", "--ip-masq=false",
		"--insecure-registry", b.env.reg.Addr,
		"--containerd-namespace", "rbuild-bench", "--containerd-plugins-namespace", "rbuild-bench-plugins",
	)
	cmd.Stdout = logFile
	cmd.Stderr = logFile
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(b.dir, "config"))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logFile.Close()
		return err
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); logFile.Close(); close(exited) }()
	b.pid, b.exited = cmd.Process.Pid, exited
	pid := b.pid
	atStop(func() { stopProcess(pid, exited, 60*time.Second) })

	deadline := time.Now().Add(90 * time.Second)
	for {
		if err := exec.CommandContext(ctx, dockerCLI, "-H", "unix://"+b.sock, "version").Run(); err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("dockerd exited; see %s", logFile.Name())
		default:
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return fmt.Errorf("dockerd did not start; see %s", logFile.Name())
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// stop stops this dockerd (it stops its containerd) and removes its data.
func (b *dockerBuilder) stop() {
	if b.pid == 0 {
		return
	}
	stopProcess(b.pid, b.exited, 60*time.Second)
	// dockerd stops the containerd it started; anything of its process
	// group that is left goes now.
	_ = syscall.Kill(-b.pid, syscall.SIGKILL)
	b.pid = 0
	if err := removeTree(filepath.Join(b.dir, fmt.Sprintf("data-%d", b.gen))); err != nil {
		logf("docker: %v", err)
	}
	_ = removeTree(filepath.Join(b.dir, "exec"))
}

func (b *dockerBuilder) Reset(ctx context.Context) error {
	b.stop()
	return b.start(ctx)
}

func (b *dockerBuilder) Build(ctx context.Context, r buildReq) (usage, []string, error) {
	host := "unix://" + b.sock
	reg := b.env.reg.Addr
	env := []string{"DOCKER_BUILDKIT=1", "DOCKER_CONFIG=" + filepath.Join(b.dir, "config"), "HOME=" + b.dir, defaultPath}
	build := []string{dockerCLI, "-H", host, "build", "--network", "host", "--progress", "plain",
		"-t", r.Ref, "--build-arg", "REGISTRY=" + reg}
	switch r.Mode {
	case modeExport:
		build = append(build, "--build-arg", "BUILDKIT_INLINE_CACHE=1")
	case modeImport:
		build = append(build, "--cache-from", r.Ref)
	}
	build = append(build, "-f", filepath.Join(r.Context, "Dockerfile"), r.Context)
	specs := []cmdSpec{
		{Argv: build, Env: env, Dir: r.Context},
		{Argv: []string{dockerCLI, "-H", host, "push", r.Ref}, Env: env, Dir: r.Context},
	}

	resetPeakRSS(b.pid)
	u0, s0 := treeCPU(b.pid)
	daemon := startSampler(func() []int { return []int{b.pid} }, []string{"/usr/sbin/dockerd", "/usr/bin/containerd"})
	var total usage
	var cmds []string
	var err error
	for _, s := range specs {
		cmds = append(cmds, s.String())
		var u usage
		u, err = runMeasured(ctx, s, r.Log, []string{dockerCLI}, r.Case.timeout)
		total.add(u)
		if err != nil {
			break
		}
	}
	peak, runTime := daemon.stop()
	total.BuilderRSS = max(total.BuilderRSS, peak)
	total.Run += runTime
	u1, s1 := treeCPU(b.pid)
	total.User += u1 - u0
	total.Sys += s1 - s0
	return total, cmds, err
}

func (b *dockerBuilder) RegistryCache() (bool, string) { return true, "" }

// BuildKit's plain progress ends each vertex with "#N DONE 1.2s"; a RUN
// step's vertex is named "[stage n/N] RUN ...". Vertices run in parallel,
// so sum their own durations instead of intervals between lines.
var (
	bkVertex = regexp.MustCompile(`^#(\d+) \[[^\]]+\] RUN `)
	bkDone   = regexp.MustCompile(`^#(\d+) DONE ([0-9.]+)s`)
)

func (b *dockerBuilder) RunTime(log string) float64 {
	runs := map[string]bool{}
	total := 0.0
	for _, l := range parseStamped(log) {
		if m := bkVertex.FindStringSubmatch(l.text); m != nil {
			runs[m[1]] = true
			continue
		}
		if m := bkDone.FindStringSubmatch(l.text); m != nil && runs[m[1]] {
			d, _ := strconv.ParseFloat(m[2], 64)
			total += d
			delete(runs, m[1])
		}
	}
	return total
}

func (b *dockerBuilder) Close() {
	b.stop()
	_ = os.Remove(b.sock)
}
