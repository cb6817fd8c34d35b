package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
)

// benchEnv is what builders share: the configuration, the work directory,
// the registry and the unprivileged user.
type benchEnv struct {
	cfg      config
	work     string
	reg      *registry
	uid, gid int
}

// mode says what a build does with a registry cache.
type mode int

const (
	// modePlain builds and pushes.
	modePlain mode = iota
	// modeExport also leaves a cache in the registry (the unmeasured
	// build before the registry-cache phase).
	modeExport
	// modeImport builds using the cache in the registry.
	modeImport
)

type buildReq struct {
	Case    *benchCase
	Context string
	// Ref is where the image is pushed: REGISTRY/bench-CASE-BUILDER-rN:latest.
	Ref string
	// CacheRepo is the registry cache's repository for builders that keep
	// the cache apart from the image.
	CacheRepo string
	Mode      mode
	Log       *stampWriter
	// LogPath is the log's file; profiles go beside it.
	LogPath string
}

// builder is one image builder under test.
type builder interface {
	Name() string
	Info() builderInfo
	// Reset gives the builder an empty local state.
	Reset(ctx context.Context) error
	// Build builds the case and pushes the image, and returns what it cost
	// and the commands it ran.
	Build(ctx context.Context, r buildReq) (usage, []string, error)
	// RegistryCache tells whether the builder can rebuild from a cache in
	// the registry on an empty local state, and how (or why not).
	RegistryCache() (bool, string)
	// RunTime sums the seconds spent in RUN steps, from the stamped log.
	RunTime(log string) float64
	Close()
}

type builderInfo struct {
	Version  string   `json:"version"`
	Commands []string `json:"commands"`
	Notes    []string `json:"notes,omitempty"`
}

// errNotAvailable is why a builder is skipped.
var errNotAvailable = errors.New("not available")

// makeBuilders starts the builders that can run here; the others are
// returned with the reason.
func makeBuilders(ctx context.Context, env *benchEnv, setup setupInfo) ([]builder, map[string]string) {
	skipped := map[string]string{}
	var out []builder
	for _, name := range env.cfg.Builders {
		var b builder
		var err error
		switch name {
		case "rbuild":
			b, err = newRbuild(env)
		case "docker":
			if msg, ok := setup.Failed["docker.io"]; ok {
				err = fmt.Errorf("docker.io did not install: %s", msg)
				break
			}
			b, err = newDocker(ctx, env)
		case "buildah":
			if msg, ok := setup.Failed["buildah"]; ok {
				err = fmt.Errorf("buildah did not install: %s", msg)
				break
			}
			b, err = newBuildah(env)
		case "kaniko":
			b, err = newKaniko(ctx, env)
		}
		if err != nil {
			skipped[name] = err.Error()
			logf("builder %s skipped: %v", name, err)
			continue
		}
		logf("builder %s: %s", name, b.Info().Version)
		out = append(out, b)
	}
	return out, skipped
}

// The phases, in the order they run.
const (
	phaseCold     = "cold"
	phaseNoChange = "no-change"
	phaseOneFile  = "one-file"
	phaseRegistry = "registry-cache"
)

var phases = []string{phaseCold, phaseNoChange, phaseOneFile, phaseRegistry}

// sample is one measured build.
type sample struct {
	Case    string `json:"case"`
	Builder string `json:"builder"`
	Phase   string `json:"phase"`
	Rep     int    `json:"rep"`
	OK      bool   `json:"ok"`
	// NA is why the phase does not apply to the builder.
	NA    string `json:"na,omitempty"`
	Error string `json:"error,omitempty"`

	WallSec float64 `json:"wall_s"`
	UserSec float64 `json:"user_s"`
	SysSec  float64 `json:"sys_s"`
	CPUSec  float64 `json:"cpu_s"`
	// RunSec is how long RUN commands ran, from /proc (the same method
	// for every builder).
	RunSec float64 `json:"run_s"`
	// RunLogSec is the time in RUN steps as the builder's log shows it:
	// BuildKit's RUN vertex durations; for rbuild and buildah from a RUN
	// step's header line to the next step's, its commit included.
	RunLogSec float64 `json:"run_log_s"`
	// PeakRSSMiB is the peak RSS of the builder's own processes.
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	// TreeMaxRSSMiB is ru_maxrss: the largest process of the tree, RUN
	// commands included (for Docker, only the CLI).
	TreeMaxRSSMiB float64  `json:"tree_max_rss_mib"`
	PulledBytes   int64    `json:"pulled_bytes"`
	PushedBytes   int64    `json:"pushed_bytes"`
	Requests      int64    `json:"requests"`
	Commands      []string `json:"commands,omitempty"`
	Log           string   `json:"log,omitempty"`
}

// runCase builds one case with every builder, BENCH_REPEAT times; builders
// take turns in a rotating order so no one always runs first.
func runCase(ctx context.Context, env *benchEnv, c *benchCase, builders []builder) ([]sample, error) {
	dir := filepath.Join(env.work, "ctx", c.Name)
	logf("case %s: preparing the context", c.Name)
	if err := prepareContext(c, dir); err != nil {
		return nil, err
	}
	defer removeTree(dir)
	if err := os.Chmod(filepath.Join(env.work, "ctx"), 0o755); err != nil {
		return nil, err
	}
	var out []sample
	for rep := 1; rep <= env.cfg.Repeat; rep++ {
		for i := range builders {
			if ctx.Err() != nil {
				return out, ctx.Err()
			}
			b := builders[(i+rep-1)%len(builders)]
			out = append(out, runPhases(ctx, env, c, b, rep, dir)...)
		}
	}
	return out, nil
}

// runPhases runs the four phases of one case for one builder.
func runPhases(ctx context.Context, env *benchEnv, c *benchCase, b builder, rep int, dir string) []sample {
	var out []sample
	ref := fmt.Sprintf("%s/bench-%s-%s-r%d:latest", env.reg.Addr, c.Name, b.Name(), rep)
	cacheRepo := fmt.Sprintf("%s/bench-cache-%s-%s-r%d", env.reg.Addr, c.Name, b.Name(), rep)
	logDir := filepath.Join(env.work, "logs", c.Name)
	if err := os.MkdirAll(logDir, 0o755); err != nil {
		return []sample{{Case: c.Name, Builder: b.Name(), Rep: rep, Phase: phaseCold, Error: err.Error()}}
	}
	failRest := func(from int, why string) {
		for _, p := range phases[from:] {
			out = append(out, sample{Case: c.Name, Builder: b.Name(), Phase: p, Rep: rep, Error: why})
		}
	}

	measure := func(phase string, m mode) sample {
		s := sample{Case: c.Name, Builder: b.Name(), Phase: phase, Rep: rep}
		logPath := filepath.Join(logDir, fmt.Sprintf("%s-r%d-%s.log", b.Name(), rep, phase))
		if env.cfg.Keep {
			s.Log = logPath
		}
		f, err := os.Create(logPath)
		if err != nil {
			s.Error = err.Error()
			return s
		}
		defer f.Close()
		log := newStampWriter(f)
		env.reg.reset()
		logf("%s/%s rep %d: %s", c.Name, b.Name(), rep, phase)
		u, cmds, err := b.Build(ctx, buildReq{Case: c, Context: dir, Ref: ref, CacheRepo: cacheRepo, Mode: m, Log: log, LogPath: logPath})
		log.Flush()
		t := env.reg.traffic()
		if rep == 1 {
			// The exact commands, once per case, builder and phase.
			s.Commands = cmds
		}
		s.WallSec = u.Wall.Seconds()
		s.UserSec = u.User.Seconds()
		s.SysSec = u.Sys.Seconds()
		s.CPUSec = s.UserSec + s.SysSec
		s.PeakRSSMiB = float64(u.BuilderRSS) / 1024
		s.RunSec = u.Run.Seconds()
		s.TreeMaxRSSMiB = float64(u.TreeMaxRSS) / 1024
		s.PulledBytes, s.PushedBytes, s.Requests = t.Pulled, t.Pushed, t.Requests
		if err != nil {
			s.Error = err.Error()
			logf("%s/%s rep %d: %s failed: %v (log %s)", c.Name, b.Name(), rep, phase, err, logPath)
			return s
		}
		s.OK = true
		if text, err := os.ReadFile(logPath); err == nil {
			s.RunLogSec = b.RunTime(string(text))
		}
		logf("%s/%s rep %d: %s %.1fs wall, %.1fs CPU, %.0f MiB, pulled %s, pushed %s",
			c.Name, b.Name(), rep, phase, s.WallSec, s.CPUSec, s.PeakRSSMiB, human(t.Pulled), human(t.Pushed))
		return s
	}

	if err := b.Reset(ctx); err != nil {
		failRest(0, "reset: "+err.Error())
		return out
	}
	cold := measure(phaseCold, modePlain)
	out = append(out, cold)
	if !cold.OK {
		failRest(1, "cold build failed")
		return out
	}
	out = append(out, measure(phaseNoChange, modePlain))

	changed := filepath.Join(dir, c.Change.Path)
	orig, err := os.ReadFile(changed)
	if err != nil {
		failRest(2, err.Error())
		return out
	}
	defer func() {
		if err := os.WriteFile(changed, orig, 0o644); err != nil {
			logf("restoring %s: %v", changed, err)
		}
	}()
	// A new line per repeat, so every repeat's edit is a real change.
	edit := append(append([]byte{}, orig...), strings.ReplaceAll(c.Change.Append, "{{REP}}", strconv.Itoa(rep))...)
	if err := os.WriteFile(changed, edit, 0o644); err != nil {
		failRest(2, err.Error())
		return out
	}
	out = append(out, measure(phaseOneFile, modePlain))

	ok, note := b.RegistryCache()
	if !ok {
		out = append(out, sample{Case: c.Name, Builder: b.Name(), Phase: phaseRegistry, Rep: rep, NA: note})
		return out
	}
	// Leave the cache in the registry (not measured), then rebuild the
	// same context on an empty local state from it.
	exp := measure(phaseRegistry+"-export", modeExport)
	if !exp.OK {
		failRest(3, "cache export build failed: "+exp.Error)
		return out
	}
	if err := b.Reset(ctx); err != nil {
		failRest(3, "reset: "+err.Error())
		return out
	}
	out = append(out, measure(phaseRegistry, modeImport))
	return out
}

// stampedLine is one line of a stamped log.
type stampedLine struct {
	t    float64
	text string
}

func parseStamped(log string) []stampedLine {
	var out []stampedLine
	for _, l := range strings.Split(log, "\n") {
		l = strings.TrimLeft(l, " ")
		i := strings.IndexByte(l, ' ')
		if i < 0 {
			continue
		}
		t, err := strconv.ParseFloat(l[:i], 64)
		if err != nil {
			continue
		}
		out = append(out, stampedLine{t: t, text: l[i+1:]})
	}
	return out
}

// stepTimes sums, over the lines matching run, the time to the next line
// matching next (or the end of the log): the duration of RUN steps in
// builders that print a header line per step.
func stepTimes(log string, run, next *regexp.Regexp) float64 {
	lines := parseStamped(log)
	total := 0.0
	for i := 0; i < len(lines); i++ {
		if !run.MatchString(lines[i].text) {
			continue
		}
		end := lines[len(lines)-1].t
		for j := i + 1; j < len(lines); j++ {
			if next.MatchString(lines[j].text) {
				end = lines[j].t
				break
			}
		}
		total += end - lines[i].t
	}
	return total
}

func human(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.2f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.0f KiB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}

// chownTree gives dir to the bench user.
func chownTree(dir string, uid, gid int) error {
	return filepath.Walk(dir, func(p string, _ os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, uid, gid)
	})
}

// userDirs makes fresh HOME, XDG_RUNTIME_DIR and TMPDIR for the bench user
// under base.
func userDirs(base string, uid, gid int) (home, run, tmp string, err error) {
	home, run, tmp = filepath.Join(base, "home"), filepath.Join(base, "run"), filepath.Join(base, "tmp")
	for _, d := range []string{home, run, tmp} {
		if err = os.MkdirAll(d, 0o700); err != nil {
			return
		}
		if err = os.Chown(d, uid, gid); err != nil {
			return
		}
	}
	if err = os.Chmod(base, 0o755); err != nil {
		return
	}
	return
}
