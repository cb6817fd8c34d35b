// Command bench measures rbuild against BuildKit (Docker's engine), buildah
// and kaniko on the same machine in the same run, and writes
// docs/benchmarks.md and docs/benchmarks.json.
//
// Run it as root from the repository root (`make bench` does):
//
//	go run ./bench -rbuild bin/rbuild
//
// It installs the Debian packages it needs when they are missing, starts a
// registry on a free 127.0.0.1 port behind a byte-counting proxy, makes the
// base images on this machine, then builds every case under bench/cases
// with every builder in four phases (cold, no-change rebuild,
// one-file-changed rebuild, rebuild from the registry cache on an empty
// local state), each repeated. Everything it starts is stopped by PID and
// its temporary directory is removed at the end, also on SIGINT/SIGTERM.
//
// Environment:
//
//	BENCH_QUICK=1        the busybox cases only, one repeat
//	BENCH_REPEAT=N       repeats per case, builder and phase (default 3)
//	BENCH_CASES=a,b      only these cases
//	BENCH_BUILDERS=a,b   only these builders (rbuild, docker, buildah, kaniko)
//	BENCH_OUT=DIR        where benchmarks.md/json go (default docs)
//	BENCH_KEEP=1         keep the work directory (logs of every build)
//	BENCH_CACHE=DIR      cache for slow inputs (default /var/cache/rbuild-bench)
//	BENCH_PERF=1         record `perf record -g` of every rbuild build beside
//	                     its log (with BENCH_KEEP=1 and an unstripped -rbuild)
//
// `go run ./bench -render docs/benchmarks.json` rewrites the generated part
// of docs/benchmarks.md from the raw results without building anything;
// `go run ./bench -perf-summary X.perf.data -rbuild UNSTRIPPED` says where a
// profiled rbuild build's CPU time went.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// config is what a run measures, from flags and BENCH_* variables.
type config struct {
	Quick    bool
	Repeat   int
	Cases    []string
	Builders []string
	Out      string
	Keep     bool
	CacheDir string
	Rbuild   string
	CasesDir string
}

var allBuilders = []string{"rbuild", "docker", "buildah", "kaniko"}

func main() {
	rbuildBin := flag.String("rbuild", "bin/rbuild", "the rbuild binary to measure")
	casesDir := flag.String("cases", "bench/cases", "the case directory")
	render := flag.String("render", "", "only rewrite benchmarks.md (in BENCH_OUT) from this benchmarks.json")
	perfData := flag.String("perf-summary", "", "only summarize this perf.data of an rbuild build (BENCH_PERF=1); -rbuild names the unstripped binary")
	perfComms := flag.String("perf-comms", "rbuild,exe", "with -perf-summary: the processes to summarize (runc:[2:INIT] is a RUN step's init)")
	flag.Parse()
	if *perfData != "" {
		if err := perfSummary(os.Stdout, *perfData, *rbuildBin, splitList(*perfComms), 25); err != nil {
			fatalf("%v", err)
		}
		return
	}

	cfg := config{
		Quick:    os.Getenv("BENCH_QUICK") == "1",
		Repeat:   3,
		Builders: allBuilders,
		Out:      envOr("BENCH_OUT", "docs"),
		Keep:     os.Getenv("BENCH_KEEP") == "1",
		CacheDir: envOr("BENCH_CACHE", "/var/cache/rbuild-bench"),
		CasesDir: *casesDir,
	}
	if cfg.Quick {
		cfg.Repeat = 1
	}
	if v := os.Getenv("BENCH_REPEAT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			fatalf("BENCH_REPEAT=%q: want a positive number", v)
		}
		cfg.Repeat = n
	}
	if v := os.Getenv("BENCH_CASES"); v != "" {
		cfg.Cases = splitList(v)
	}
	if v := os.Getenv("BENCH_BUILDERS"); v != "" {
		cfg.Builders = splitList(v)
		for _, b := range cfg.Builders {
			if !contains(allBuilders, b) {
				fatalf("BENCH_BUILDERS: unknown builder %q (want %s)", b, strings.Join(allBuilders, ", "))
			}
		}
	}
	if *render != "" {
		if err := rerender(cfg, *render); err != nil {
			fatalf("%v", err)
		}
		return
	}
	abs, err := filepath.Abs(*rbuildBin)
	if err != nil {
		fatalf("%v", err)
	}
	cfg.Rbuild = abs
	if os.Geteuid() != 0 {
		fatalf("run as root: Docker's engine, runc and the unprivileged builders' user need it")
	}

	ctx, cancel := context.WithCancel(context.Background())
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		s := <-sigs
		logf("%v: stopping", s)
		cancel()
	}()

	err = run(ctx, cfg)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// run is the whole benchmark; every process and directory it makes is
// released by the deferred cleanups, whatever happens.
func run(ctx context.Context, cfg config) error {
	start := time.Now()
	cases, err := loadCases(cfg.CasesDir)
	if err != nil {
		return err
	}
	cases = selectCases(cases, cfg)
	if len(cases) == 0 {
		return fmt.Errorf("no case selected")
	}

	setup := ensureDeps(cfg.Builders)
	uid, gid, err := ensureUser(benchUser)
	if err != nil {
		return fmt.Errorf("user %s: %w", benchUser, err)
	}

	work, err := os.MkdirTemp("", "rbuild-bench-")
	if err != nil {
		return err
	}
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	logf("work directory %s", work)
	defer func() {
		stopAll()
		if cfg.Keep {
			logf("kept %s (BENCH_KEEP=1)", work)
			return
		}
		if err := removeTree(work); err != nil {
			logf("removing %s: %v", work, err)
		}
	}()

	reg, err := startRegistry(filepath.Join(work, "registry"))
	if err != nil {
		return err
	}

	needs := map[string]bool{}
	for _, c := range cases {
		for _, b := range c.Base {
			needs[b] = true
		}
	}
	if err := os.MkdirAll(cfg.CacheDir, 0o755); err != nil {
		return err
	}
	if err := pushBaseImages(ctx, reg.Direct, cfg.CacheDir, work, needs); err != nil {
		return err
	}

	env := &benchEnv{
		cfg:  cfg,
		work: work,
		reg:  reg,
		uid:  uid,
		gid:  gid,
	}
	builders, skipped := makeBuilders(ctx, env, setup)
	defer func() {
		for _, b := range builders {
			b.Close()
		}
	}()
	if len(builders) == 0 {
		return fmt.Errorf("no builder can run: %v", skipped)
	}

	res := &results{
		Started:  start.UTC(),
		Quick:    cfg.Quick,
		Repeat:   cfg.Repeat,
		Machine:  machineFacts(),
		Setup:    setup,
		Skipped:  skipped,
		Builders: map[string]builderInfo{},
	}
	for _, b := range builders {
		res.Builders[b.Name()] = b.Info()
	}
	for _, c := range cases {
		res.Cases = append(res.Cases, caseInfo{Name: c.Name, Description: c.Description})
	}

	for _, c := range cases {
		if err := ctx.Err(); err != nil {
			break
		}
		samples, err := runCase(ctx, env, c, builders)
		res.Samples = append(res.Samples, samples...)
		if err != nil {
			logf("case %s: %v", c.Name, err)
		}
	}
	res.Finished = time.Now().UTC()
	if err := ctx.Err(); err != nil {
		return err
	}
	return writeResults(cfg, res)
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench %s: %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
	os.Exit(2)
}
