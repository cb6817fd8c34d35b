package builder

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/executor"
	"github.com/rbuild/rbuild/output"
	"github.com/rbuild/rbuild/registry"
	"github.com/rbuild/rbuild/snapshot"
)

// build is the state of one Build call.
type build struct {
	opts     Options
	df       *dockerfile
	store    *snapshot.Store
	reg      *registry.Client
	cache    *cache.Local
	platform v1.Platform
	// globalArgs are the ARGs before the first FROM, with build-arg
	// overrides and the automatic platform args.
	globalArgs map[string]string
	// usedArgs records build args some ARG declared, to warn about the rest.
	usedArgs map[string]bool
	excluded func(string) bool
	stages   []*stage
	log      *progress
	warnOut  io.Writer
	stateDir string

	mu sync.Mutex // guards usedArgs, pulls, sources and produced
	// pulls shares one pull of each base image between the stages that
	// name it.
	pulls map[string]*pullOnce
	// sources tells where blobs that are not in the blob store can be
	// fetched, and which repository a push can mount them from: base
	// image layers, layers of a cache registry, layers this build pushed.
	sources map[v1.Hash]blobSource
	// ctx is the whole build's context: registry handles that outlive one
	// stage's goroutine (layers fetched at export) are bound to it.
	ctx context.Context
	// shared holds the entries of the imported caches; produced the
	// entries this build can export.
	shared   map[cache.Key]sharedEntry
	produced []produced
	noCache  map[string]bool
	// layerLocks serializes storing one layer (by store ID).
	layerLocks sync.Map
	// epoch is SOURCE_DATE_EPOCH: image and history times, and the mtime
	// clamp of new layers.
	epoch *time.Time
}

// now is the time recorded in the image: the epoch of a reproducible
// build, the wall clock otherwise.
func (b *build) now() time.Time {
	if b.epoch != nil {
		return *b.epoch
	}
	return time.Now().UTC()
}

// Build runs a build and delivers the image to opts.Outputs.
func Build(ctx context.Context, opts Options) (*Result, error) {
	b, err := newBuild(&opts)
	if err != nil {
		return nil, err
	}
	defer b.close()
	return b.execute(ctx)
}

func newBuild(opts *Options) (*build, error) {
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.Warnings == nil {
		opts.Warnings = opts.Progress
	}
	if opts.ContextDir == "" {
		return nil, errors.New("no build context given")
	}
	if fi, err := os.Stat(opts.ContextDir); err != nil {
		return nil, fmt.Errorf("build context: %w", err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("build context %s is not a directory", opts.ContextDir)
	}
	data, name, err := readDockerfile(opts)
	if err != nil {
		return nil, err
	}
	df, err := parseDockerfile(name, data)
	if err != nil {
		return nil, err
	}
	b := &build{
		opts:     *opts,
		df:       df,
		usedArgs: map[string]bool{},
		log:      newProgress(opts.Progress, opts.ProgressTTY, opts.ProgressWidth),
		warnOut:  opts.Warnings,
		pulls:    map[string]*pullOnce{},
		sources:  map[v1.Hash]blobSource{},
		shared:   map[cache.Key]sharedEntry{},
		noCache:  map[string]bool{},
	}
	for _, w := range df.warnings {
		b.warn("%s", w)
	}
	if b.platform, err = parsePlatform(opts.Platform); err != nil {
		return nil, err
	}
	if b.epoch, err = sourceDateEpoch(opts); err != nil {
		return nil, err
	}
	// A Dockerfile from standard input has no Dockerfile-specific ignore
	// file next to it.
	dfPath := opts.Dockerfile
	if dfPath == "" && opts.DockerfileContent == nil {
		dfPath = filepath.Join(opts.ContextDir, "Dockerfile")
	}
	if opts.DockerfileContent != nil {
		dfPath = ""
	}
	if b.excluded, err = executor.LoadIgnore(opts.ContextDir, dfPath); err != nil {
		return nil, err
	}
	if err := b.evalGlobalArgs(); err != nil {
		return nil, err
	}
	if err := b.plan(); err != nil {
		return nil, err
	}
	if opts.Root == "" {
		return nil, errors.New("no state directory (--root)")
	}
	b.stateDir = filepath.Join(opts.Root, "exec")
	if err := os.MkdirAll(b.stateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state directory: %w", err)
	}
	if b.cache, err = cache.OpenLocal(filepath.Join(opts.Root, "cache")); err != nil {
		return nil, err
	}
	driver := opts.Driver
	if opts.Isolation == "chroot" {
		// Overlay needs mounts, which chroot isolation does not have.
		driver = "vfs"
	}
	b.store, err = snapshot.Open(snapshot.Options{Root: opts.Root, Driver: driver, Compression: opts.Compression, Epoch: b.epoch})
	if err != nil {
		return nil, err
	}
	if d := b.store.Driver(); d != "overlay" {
		b.warn("layer store uses the %s driver (overlay cannot mount here): each step's changes are found by comparing whole trees, which is slower", d)
	}
	b.reg = registry.New(registry.Options{Insecure: opts.InsecureRegistries, Keychain: opts.Keychain})
	return b, nil
}

func (b *build) close() {
	if b.store != nil {
		_ = b.store.Close()
	}
}

// newLex returns a word expander for the Dockerfile's escape character. A
// Lex keeps state while it works, so concurrent stages each take their own.
func (b *build) newLex() *shell.Lex { return shell.NewLex(b.df.escape) }

func (b *build) logf(format string, args ...any) {
	b.log.printf(format, args...)
}

func (b *build) warn(format string, args ...any) {
	if b.warnOut == b.log.w {
		b.log.printf("WARNING: "+format, args...)
		return
	}
	fmt.Fprintf(b.warnOut, "WARNING: "+format+"\n", args...)
}

func (b *build) useArg(k string) {
	b.mu.Lock()
	b.usedArgs[k] = true
	b.mu.Unlock()
}

// sourceDateEpoch reads SOURCE_DATE_EPOCH from --build-arg, else from
// Options.SourceDateEpoch; Reproducible without either means the Unix
// epoch.
func sourceDateEpoch(opts *Options) (*time.Time, error) {
	v, ok := opts.BuildArgs["SOURCE_DATE_EPOCH"]
	if !ok {
		v = opts.SourceDateEpoch
	}
	if v == "" {
		if opts.Reproducible {
			t := time.Unix(0, 0).UTC()
			return &t, nil
		}
		return nil, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return nil, fmt.Errorf("SOURCE_DATE_EPOCH %q: want a number of seconds since 1970", v)
	}
	t := time.Unix(n, 0).UTC()
	return &t, nil
}

func parsePlatform(s string) (v1.Platform, error) {
	if s == "" {
		return v1.Platform{OS: "linux", Architecture: runtime.GOARCH}, nil
	}
	p, err := v1.ParsePlatform(s)
	if err != nil {
		return v1.Platform{}, fmt.Errorf("--platform %q: %w", s, err)
	}
	if p.OS != "linux" {
		return v1.Platform{}, fmt.Errorf("--platform %q: only linux images can be built", s)
	}
	return *p, nil
}

// platformArgs are BuildKit's automatic ARGs.
func platformArgs(target v1.Platform) map[string]string {
	host := v1.Platform{OS: "linux", Architecture: runtime.GOARCH}
	return map[string]string{
		"TARGETPLATFORM": target.OS + "/" + target.Architecture + variant(target),
		"TARGETOS":       target.OS,
		"TARGETARCH":     target.Architecture,
		"TARGETVARIANT":  target.Variant,
		"BUILDPLATFORM":  host.OS + "/" + host.Architecture,
		"BUILDOS":        host.OS,
		"BUILDARCH":      host.Architecture,
		"BUILDVARIANT":   "",
	}
}

func variant(p v1.Platform) string {
	if p.Variant == "" {
		return ""
	}
	return "/" + p.Variant
}

// evalGlobalArgs evaluates the ARGs before the first FROM: a --build-arg
// overrides a default; defaults may refer to earlier global args.
func (b *build) evalGlobalArgs() error {
	auto := platformArgs(b.platform)
	b.globalArgs = map[string]string{}
	for k, v := range auto {
		b.globalArgs[k] = v
	}
	for _, cmd := range b.df.metaArgs {
		for _, a := range cmd.Args {
			b.useArg(a.Key)
			if v, ok := b.opts.BuildArgs[a.Key]; ok {
				b.globalArgs[a.Key] = v
				continue
			}
			if a.Value == nil {
				if _, isAuto := auto[a.Key]; !isAuto {
					delete(b.globalArgs, a.Key)
				}
				continue
			}
			v, _, err := b.newLex().ProcessWord(*a.Value, shell.EnvsFromSlice(envList(b.globalArgs)))
			if err != nil {
				return &stepError{file: b.df.name, line: line(cmd.Location()), inst: "ARG", err: err}
			}
			b.globalArgs[a.Key] = v
		}
	}
	return nil
}

func envList(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k, v := range m {
		out = append(out, k+"="+v)
	}
	sort.Strings(out)
	return out
}

func line(loc []parser.Range) int {
	if len(loc) == 0 {
		return 0
	}
	return loc[0].Start.Line
}

// execute builds the stages the target needs, in order, and writes the
// outputs.
func (b *build) execute(ctx context.Context) (*Result, error) {
	b.ctx = ctx
	for _, n := range b.opts.NoCacheFilter {
		if b.stageByName(n) == nil {
			return nil, fmt.Errorf("--no-cache-filter: no stage %q in %s", n, b.df.name)
		}
		b.noCache[strings.ToLower(n)] = true
	}
	b.importCaches(ctx)
	target := b.stages[len(b.stages)-1]
	if b.opts.Target != "" {
		target = b.stageByName(b.opts.Target)
		if target == nil {
			return nil, fmt.Errorf("target stage %q not found in %s", b.opts.Target, b.df.name)
		}
	}
	if err := b.buildTarget(ctx, target); err != nil {
		return nil, err
	}
	b.warnUnusedArgs()
	img, err := b.image(target)
	if err != nil {
		return nil, err
	}
	res := &Result{Image: img}
	if res.ImageID, err = img.ConfigName(); err != nil {
		return nil, err
	}
	if res.Digest, err = img.Digest(); err != nil {
		return nil, err
	}
	for _, o := range b.opts.Outputs {
		b.logf("exporting to %s", o)
		if err := o.Write(ctx, img); err != nil {
			return nil, err
		}
		if ro, ok := o.(*output.Registry); ok {
			b.pushed(ro.Ref.Context(), target.layers)
		}
	}
	b.exportCaches(ctx, target)
	return res, nil
}

func (b *build) warnUnusedArgs() {
	var unused []string
	for k := range b.opts.BuildArgs {
		if !b.usedArgs[k] && !predefinedArgs[k] {
			unused = append(unused, k)
		}
	}
	if len(unused) > 0 {
		sort.Strings(unused)
		b.warn("one or more build-args [%s] were not consumed", strings.Join(unused, " "))
	}
}

// predefinedArgs may be passed without an ARG, as in Docker (proxies).
var predefinedArgs = map[string]bool{
	"HTTP_PROXY": true, "http_proxy": true, "HTTPS_PROXY": true, "https_proxy": true,
	"FTP_PROXY": true, "ftp_proxy": true, "NO_PROXY": true, "no_proxy": true,
	"ALL_PROXY": true, "all_proxy": true, "SOURCE_DATE_EPOCH": true,
}

// stageByName finds a stage by name or index.
func (b *build) stageByName(n string) *stage {
	n = strings.ToLower(n)
	for _, s := range b.stages {
		if s.name == n {
			return s
		}
	}
	if i, err := strconv.Atoi(n); err == nil && i >= 0 && i < len(b.stages) {
		return b.stages[i]
	}
	return nil
}
