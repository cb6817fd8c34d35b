package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path"
	"sort"
	"strconv"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/moby/sys/signal"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/executor"
	"github.com/rbuild/rbuild/snapshot"
)

// dispatch runs one instruction of stage s.
func (b *build) dispatch(ctx context.Context, s *stage, cmd instructions.Command, n, total int) error {
	loc := 0
	if l, ok := cmd.(interface{ Location() []parser.Range }); ok {
		loc = line(l.Location())
	}
	wrap := func(err error) error {
		if err == nil {
			return nil
		}
		var se *stepError
		if errors.As(err, &se) {
			return err
		}
		return &stepError{file: b.df.name, line: loc, inst: strings.ToUpper(cmd.Name()), err: err}
	}
	if _, isArg := cmd.(*instructions.ArgCommand); !isArg {
		env := shell.EnvsFromSlice(s.env())
		if ex, ok := cmd.(instructions.SupportsSingleWordExpansion); ok {
			if err := ex.Expand(func(word string) (string, error) {
				w, _, err := b.newLex().ProcessWord(word, env)
				return w, err
			}); err != nil {
				return wrap(err)
			}
		}
		if ex, ok := cmd.(instructions.SupportsSingleWordExpansionRaw); ok {
			raw := shell.NewLex(b.df.escape)
			raw.SkipProcessQuotes = true
			if err := ex.ExpandRaw(func(word string) (string, error) {
				w, _, err := raw.ProcessWord(word, env)
				return w, err
			}); err != nil {
				return wrap(err)
			}
		}
	}
	s.step = fmt.Sprintf("[%s %d/%d]", s.label(), n, total)
	b.logf("%s %s", s.step, cmd)
	cfg := &s.cfg.Config
	switch c := cmd.(type) {
	case *instructions.RunCommand:
		return wrap(b.run(ctx, s, c))
	case *instructions.CopyCommand:
		// Like FROM, --from sees the global args only (BuildKit).
		from, _, err := b.newLex().ProcessWord(c.From, shell.EnvsFromSlice(envList(b.globalArgs)))
		if err != nil {
			return wrap(err)
		}
		return wrap(b.copy(ctx, s, copyArgs{
			srcs: c.SourcesAndDest, from: from, chown: c.Chown, chmod: c.Chmod,
			excludes: c.ExcludePatterns, parents: c.Parents, name: "COPY",
		}))
	case *instructions.AddCommand:
		return wrap(b.copy(ctx, s, copyArgs{
			srcs: c.SourcesAndDest, chown: c.Chown, chmod: c.Chmod,
			excludes: c.ExcludePatterns, add: true, name: "ADD",
		}))
	case *instructions.WorkdirCommand:
		return wrap(b.workdir(ctx, s, c.Path))
	case *instructions.EnvCommand:
		msg := "ENV"
		for _, kv := range c.Env {
			cfg.Env = setEnv(cfg.Env, kv.Key, kv.Value)
			msg += " " + kv.String()
		}
		s.history(msg, true)
	case *instructions.ArgCommand:
		return wrap(b.arg(s, c))
	case *instructions.LabelCommand:
		msg := "LABEL"
		if cfg.Labels == nil {
			cfg.Labels = map[string]string{}
		}
		for _, kv := range c.Labels {
			cfg.Labels[kv.Key] = kv.Value
			msg += " " + kv.String()
		}
		s.history(msg, true)
	case *instructions.MaintainerCommand:
		s.cfg.Author = c.Maintainer
		s.history("MAINTAINER "+c.Maintainer, true)
	case *instructions.CmdCommand:
		args := c.CmdLine
		if c.PrependShell {
			args = withShell(cfg.Shell, args)
		}
		cfg.Cmd = args
		cfg.ArgsEscaped = true
		s.cmdSet = true
		s.history(fmt.Sprintf("CMD %q", args), true)
	case *instructions.EntrypointCommand:
		args := c.CmdLine
		if c.PrependShell {
			args = withShell(cfg.Shell, args)
		}
		cfg.Entrypoint = args
		if !s.cmdSet {
			cfg.Cmd = nil
		}
		s.history(fmt.Sprintf("ENTRYPOINT %q", args), true)
	case *instructions.HealthCheckCommand:
		h := c.Health
		cfg.Healthcheck = &v1.HealthConfig{
			Test: h.Test, Interval: h.Interval, Timeout: h.Timeout,
			StartPeriod: h.StartPeriod, Retries: h.Retries,
		}
		s.history(fmt.Sprintf("HEALTHCHECK %+v", *h), true)
	case *instructions.ExposeCommand:
		ports, err := exposedPorts(b.newLex(), c.Ports, s.env())
		if err != nil {
			return wrap(err)
		}
		if cfg.ExposedPorts == nil {
			cfg.ExposedPorts = map[string]struct{}{}
		}
		for _, p := range ports {
			cfg.ExposedPorts[p] = struct{}{}
		}
		s.history(fmt.Sprintf("EXPOSE %v", ports), true)
	case *instructions.UserCommand:
		cfg.User = c.User
		s.history("USER "+c.User, true)
	case *instructions.VolumeCommand:
		if cfg.Volumes == nil {
			cfg.Volumes = map[string]struct{}{}
		}
		for _, v := range c.Volumes {
			if v == "" {
				return wrap(errors.New("VOLUME specified can not be an empty string"))
			}
			cfg.Volumes[v] = struct{}{}
		}
		s.history(fmt.Sprintf("VOLUME %v", c.Volumes), true)
	case *instructions.StopSignalCommand:
		if _, err := signal.ParseSignal(c.Signal); err != nil {
			return wrap(err)
		}
		cfg.StopSignal = c.Signal
		s.history("STOPSIGNAL "+c.Signal, true)
	case *instructions.ShellCommand:
		cfg.Shell = c.Shell
		s.history(fmt.Sprintf("SHELL %v", c.Shell), true)
	case *instructions.OnbuildCommand:
		// Recorded in the config only: BuildKit writes no history for it.
		cfg.OnBuild = append(cfg.OnBuild, c.Expression)
	default:
		return wrap(fmt.Errorf("instruction not supported"))
	}
	return nil
}

// withShell wraps a shell-form command line in the stage's SHELL.
func withShell(sh []string, args []string) []string {
	if len(sh) == 0 {
		sh = []string{"/bin/sh", "-c"}
	}
	return append(append([]string(nil), sh...), strings.Join(args, " "))
}

// arg declares a build arg in a stage, as BuildKit does: a --build-arg
// wins over the default; an ARG without default inherits the global value.
func (b *build) arg(s *stage, c *instructions.ArgCommand) error {
	var commit []string
	env := shell.EnvsFromSlice(s.env())
	for _, a := range c.Args {
		b.useArg(a.Key)
		var val *string
		if v, ok := b.opts.BuildArgs[a.Key]; ok {
			val = &v
		} else if a.Value != nil {
			v, _, err := b.newLex().ProcessWord(*a.Value, env)
			if err != nil {
				return err
			}
			val = &v
		} else if v, ok := b.globalArgs[a.Key]; ok {
			val = &v
		}
		s.args = append(s.args, stageArg{key: a.Key, value: val})
		if val != nil {
			commit = append(commit, a.Key+"="+*val)
		} else {
			commit = append(commit, a.Key)
		}
		env = shell.EnvsFromSlice(s.env())
	}
	s.history("ARG "+strings.Join(commit, " "), true)
	return nil
}

// exposedPorts normalizes EXPOSE values: "80" is "80/tcp", ranges expand.
func exposedPorts(lex *shell.Lex, words []string, env []string) ([]string, error) {
	var out []string
	for _, w := range words {
		ps, err := lex.ProcessWords(w, shell.EnvsFromSlice(env))
		if err != nil {
			return nil, err
		}
		for _, p := range ps {
			port, proto, _ := strings.Cut(p, "/")
			if proto == "" {
				proto = "tcp"
			}
			proto = strings.ToLower(proto)
			if proto != "tcp" && proto != "udp" && proto != "sctp" {
				return nil, fmt.Errorf("invalid proto: %s", proto)
			}
			if i := strings.LastIndex(port, ":"); i >= 0 {
				// ip:host:container mappings are not allowed in a Dockerfile.
				return nil, fmt.Errorf("invalid containerPort: %s", p)
			}
			lo, hi, isRange := strings.Cut(port, "-")
			start, err := strconv.ParseUint(lo, 10, 16)
			if err != nil {
				return nil, fmt.Errorf("invalid containerPort: %s", p)
			}
			end := start
			if isRange {
				if end, err = strconv.ParseUint(hi, 10, 16); err != nil || end < start {
					return nil, fmt.Errorf("invalid containerPort: %s", p)
				}
			}
			for q := start; q <= end; q++ {
				out = append(out, fmt.Sprintf("%d/%s", q, proto))
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// step runs a filesystem-changing step with the cache: on a hit the
// recorded layer is reused; otherwise mutate runs on a fresh snapshot,
// which is committed into a layer and recorded.
func (b *build) step(ctx context.Context, s *stage, key cache.Key, createdBy string, mutate func(rootfs string) error) error {
	if !b.opts.NoCache && !b.noCache[s.name] && !b.noCache[fmt.Sprint(s.index)] {
		if e, ok := b.cache.Get(key); ok && b.usable(e) {
			b.logf("%s CACHED", s.step)
			l := entryLayer(e)
			b.record(s, key, l)
			b.apply(s, key, createdBy, l)
			return nil
		}
		if l, from, ok := b.sharedHit(key); ok {
			b.logf("%s CACHED (%s)", s.step, from)
			b.record(s, key, l)
			b.apply(s, key, createdBy, l)
			return nil
		}
	}
	top, err := b.rootfs(ctx, s)
	if err != nil {
		return err
	}
	snap, err := b.store.Prepare(top)
	if err != nil {
		return err
	}
	if err := mutate(snap.Path); err != nil {
		_ = b.store.Remove(snap)
		return err
	}
	layer, err := b.store.Commit(ctx, snap)
	if err != nil {
		_ = b.store.Remove(snap)
		return err
	}
	if layer.Empty {
		// Docker keeps a layer for a step that changed nothing.
		if layer, err = b.store.EmptyLayer(layer.ID); err != nil {
			return err
		}
	}
	if err := b.cache.Put(key, layerEntry(layer)); err != nil {
		b.warn("recording cache entry: %v", err)
	}
	b.record(s, key, layer)
	b.apply(s, key, createdBy, layer)
	return nil
}

// usable checks that a cache entry's snapshot and blob are still present.
func (b *build) usable(e *cache.Entry) bool {
	if !b.store.Exists(e.SnapshotID) {
		return false
	}
	return e.Empty || b.store.Blobs.Has(e.Digest)
}

// apply makes l the stage's newest layer. A layer known only in a cache
// registry (no store ID) leaves the root filesystem to be materialized when
// a later step needs it.
func (b *build) apply(s *stage, key cache.Key, createdBy string, l *snapshot.Layer) {
	s.key = key
	if !l.Empty {
		s.layers = append(s.layers, *l)
	}
	switch {
	case l.ID != "":
		s.top, s.topValid = l.ID, true
	case !l.Empty:
		s.topValid = false
	}
	s.history(createdBy, l.Empty)
}

func entryLayer(e *cache.Entry) *snapshot.Layer {
	return &snapshot.Layer{ID: e.SnapshotID, Empty: e.Empty, DiffID: e.DiffID, Digest: e.Digest, Size: e.Size, MediaType: e.MediaType}
}

func layerEntry(l *snapshot.Layer) *cache.Entry {
	return &cache.Entry{SnapshotID: l.ID, Empty: l.Empty, DiffID: l.DiffID, Digest: l.Digest, Size: l.Size, MediaType: l.MediaType}
}

// workdir sets and creates the working directory (owned by USER, as
// BuildKit does).
func (b *build) workdir(ctx context.Context, s *stage, p string) error {
	wd := p
	if !path.IsAbs(wd) {
		base := s.cfg.Config.WorkingDir
		if base == "" {
			base = "/"
		}
		wd = path.Join(base, wd)
	}
	wd = path.Clean(wd)
	s.cfg.Config.WorkingDir = wd
	if wd == "/" {
		s.history("WORKDIR "+wd, true)
		return nil
	}
	user := s.cfg.Config.User
	key := cache.NewKey(s.key).Add("mkdir", wd).Add("user", user).Key()
	return b.step(ctx, s, key, "WORKDIR "+wd, func(rootfs string) error {
		return mkdirAll(rootfs, wd, user)
	})
}

// mkdirAll creates dir inside rootfs (resolving symlinks inside it) with
// the owner named by user, leaving existing directories alone.
func secureJoin(root, p string) (string, error) {
	return securejoin.SecureJoin(root, p)
}

func mkdirAll(rootfs, dir, user string) error {
	uid, gid := 0, 0
	if user != "" {
		u, g, _, err := executor.ResolveUser(rootfs, user)
		if err != nil {
			return err
		}
		uid, gid = int(u), int(g)
	}
	var created []string
	cur := "/"
	for _, part := range strings.Split(strings.Trim(dir, "/"), "/") {
		cur = path.Join(cur, part)
		full, err := secureJoin(rootfs, cur)
		if err != nil {
			return err
		}
		fi, err := os.Stat(full)
		if err == nil {
			if !fi.IsDir() {
				return fmt.Errorf("%s is not a directory", cur)
			}
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := os.Mkdir(full, 0o755); err != nil {
			return err
		}
		// The umask must not decide the mode Docker gives a WORKDIR.
		if err := os.Chmod(full, 0o755); err != nil {
			return err
		}
		created = append(created, full)
	}
	for _, c := range created {
		if err := os.Lchown(c, uid, gid); err != nil && !errors.Is(err, syscall.EINVAL) {
			return err
		}
	}
	return nil
}
