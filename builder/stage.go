package builder

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/moby/buildkit/frontend/dockerfile/parser"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/snapshot"
	"golang.org/x/sync/errgroup"
)

// defaultPath is the PATH Docker gives a Linux image that sets none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// stage is one FROM block and, once built, its result.
type stage struct {
	index    int
	name     string
	inst     instructions.Stage
	base     string // FROM after expansion
	baseOf   *stage // FROM an earlier stage
	platform v1.Platform

	// once builds the stage a single time, whichever goroutine needs it
	// first; the others wait for it.
	once sync.Once
	err  error

	cfg    *v1.ConfigFile
	layers []snapshot.Layer
	// top is the store ID of the stage's current root filesystem, when
	// topValid; otherwise the store may lack some of layers and
	// b.rootfs materializes them first.
	top      string
	topValid bool
	// key is the cache key of the stage's filesystem state.
	key cache.Key
	// args are the ARGs declared in this stage so far, in order.
	args []stageArg
	// cmdSet records a CMD in this stage: ENTRYPOINT resets an inherited
	// CMD only.
	cmdSet bool
	// step names the instruction running, "[name n/N]", for the log.
	step string
	// now is the build's clock (SOURCE_DATE_EPOCH when set).
	now func() time.Time
}

type stageArg struct {
	key   string
	value *string
}

// plan creates the stages and resolves FROM references to earlier stages.
func (b *build) plan() error {
	seen := map[string]bool{}
	for i, st := range b.df.stages {
		s := &stage{index: i, name: strings.ToLower(st.Name), inst: st, now: b.now}
		if s.name != "" {
			if seen[s.name] {
				return fmt.Errorf("%s:%d: duplicate stage name %q", b.df.name, line(st.Location), st.Name)
			}
			seen[s.name] = true
		}
		genv := shell.EnvsFromSlice(envList(b.globalArgs))
		base, _, err := b.newLex().ProcessWord(st.BaseName, genv)
		if err != nil {
			return fmt.Errorf("%s:%d: FROM: %v", b.df.name, line(st.Location), err)
		}
		if base == "" {
			return fmt.Errorf("%s:%d: FROM: base name (%s) should not be blank", b.df.name, line(st.Location), st.BaseName)
		}
		s.base = base
		for _, prev := range b.stages {
			if prev.name != "" && prev.name == strings.ToLower(base) {
				s.baseOf = prev
			}
		}
		s.platform = b.platform
		if st.Platform != "" {
			p, _, err := b.newLex().ProcessWord(st.Platform, genv)
			if err != nil {
				return fmt.Errorf("%s:%d: FROM --platform: %v", b.df.name, line(st.Location), err)
			}
			if s.platform, err = parsePlatform(p); err != nil {
				return fmt.Errorf("%s:%d: FROM: %v", b.df.name, line(st.Location), err)
			}
		}
		b.stages = append(b.stages, s)
	}
	return nil
}

// ensureStage builds s once, waiting when another goroutine is building
// it. Stages only depend on earlier stages, so waiting cannot deadlock.
func (b *build) ensureStage(ctx context.Context, s *stage) error {
	s.once.Do(func() { s.err = b.buildStage(ctx, s) })
	return s.err
}

// buildTarget builds target and, concurrently, every stage it needs that
// can be found before running anything (FROM and COPY --from references).
func (b *build) buildTarget(ctx context.Context, target *stage) error {
	need := map[*stage]bool{}
	b.dependencies(target, need)
	g, gctx := errgroup.WithContext(ctx)
	for _, s := range b.stages {
		if need[s] && s != target {
			g.Go(func() error { return b.ensureStage(gctx, s) })
		}
	}
	g.Go(func() error { return b.ensureStage(gctx, target) })
	return g.Wait()
}

// dependencies adds to need the stages s needs, found statically.
func (b *build) dependencies(s *stage, need map[*stage]bool) {
	if need[s] {
		return
	}
	need[s] = true
	if s.baseOf != nil {
		b.dependencies(s.baseOf, need)
	}
	genv := shell.EnvsFromSlice(envList(b.globalArgs))
	for _, cmd := range s.inst.Commands {
		c, ok := cmd.(*instructions.CopyCommand)
		if !ok || c.From == "" {
			continue
		}
		from, _, err := b.newLex().ProcessWord(c.From, genv)
		if err != nil {
			continue // reported when the step runs
		}
		if dep := b.stageByName(from); dep != nil && dep.index < s.index {
			b.dependencies(dep, need)
		}
	}
}

// buildStage runs the instructions of s on its base.
func (b *build) buildStage(ctx context.Context, s *stage) error {
	var triggers []string
	fromLine := line(s.inst.Location)
	switch {
	case s.baseOf != nil:
		if err := b.ensureStage(ctx, s.baseOf); err != nil {
			return err
		}
		p := s.baseOf
		s.cfg = p.cfg.DeepCopy()
		s.layers = append([]snapshot.Layer(nil), p.layers...)
		s.top, s.topValid, s.key = p.top, p.topValid, p.key
		triggers = p.cfg.Config.OnBuild
	case strings.EqualFold(s.base, "scratch"):
		// BuildKit's empty image config: working directory "/".
		s.cfg = &v1.ConfigFile{Config: v1.Config{WorkingDir: "/"}}
		s.topValid = true
		s.key = b.rootKey("scratch", s.platform)
	default:
		img, err := b.pull(ctx, s.base, s.platform)
		if err != nil {
			return &stepError{file: b.df.name, line: fromLine, inst: "FROM", err: err}
		}
		// The pull is shared with other stages: copy what gets changed.
		s.cfg = img.cfg.DeepCopy()
		s.layers = append([]snapshot.Layer(nil), img.layers...)
		s.key = b.rootKey(img.digest.String(), s.platform)
		triggers = img.cfg.Config.OnBuild
	}
	s.cfg.Config.OnBuild = nil
	s.cfg.OS = s.platform.OS
	s.cfg.Architecture = s.platform.Architecture
	s.cfg.Variant = s.platform.Variant
	if _, ok := lookupEnv(s.cfg.Config.Env, "PATH"); !ok {
		s.cfg.Config.Env = append(s.cfg.Config.Env, "PATH="+defaultPath)
	}
	b.logf("[%s] FROM %s", s.label(), s.base)

	cmds, err := b.onbuildCommands(s, triggers)
	if err != nil {
		return err
	}
	cmds = append(cmds, s.inst.Commands...)
	for i, cmd := range cmds {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := b.dispatch(ctx, s, cmd, i+1, len(cmds)); err != nil {
			return err
		}
	}
	return nil
}

// onbuildCommands parses the base image's ONBUILD triggers; they run
// before the stage's own instructions.
func (b *build) onbuildCommands(s *stage, triggers []string) ([]instructions.Command, error) {
	var cmds []instructions.Command
	for _, t := range triggers {
		res, err := parser.Parse(strings.NewReader(t))
		if err != nil {
			return nil, fmt.Errorf("%s:%d: ONBUILD trigger %q: %v", b.df.name, line(s.inst.Location), t, err)
		}
		if len(res.AST.Children) != 1 {
			return nil, fmt.Errorf("%s:%d: ONBUILD trigger %q: should be a single expression", b.df.name, line(s.inst.Location), t)
		}
		node := res.AST.Children[0]
		node.StartLine, node.EndLine = line(s.inst.Location), line(s.inst.Location)
		cmd, err := instructions.ParseCommand(node)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: ONBUILD trigger %q: %v", b.df.name, line(s.inst.Location), t, err)
		}
		cmds = append(cmds, cmd)
	}
	return cmds, nil
}

// rootKey is the key a stage's chain starts from. The epoch of a
// reproducible build enters it: layers made under SOURCE_DATE_EPOCH differ
// from the others (clamped mtimes) and must not be mixed up with them.
func (b *build) rootKey(base string, p v1.Platform) cache.Key {
	kb := cache.NewKey("").Add("from", base).Add("platform", p.String())
	if b.epoch != nil {
		kb.Add("epoch", fmt.Sprint(b.epoch.Unix()))
	}
	return kb.Key()
}

// rootfs returns the store ID of the stage's root filesystem, downloading
// and storing the layers it lacks.
func (b *build) rootfs(ctx context.Context, s *stage) (string, error) {
	if s.topValid {
		return s.top, nil
	}
	top, err := b.materialize(ctx, s.layers)
	if err != nil {
		return "", err
	}
	s.top, s.topValid = top, true
	return top, nil
}

func (s *stage) label() string {
	if s.name != "" {
		return s.name
	}
	return fmt.Sprintf("stage-%d", s.index)
}

// env is what word expansion and RUN see: the stage's build args, then
// the image's ENV, which wins over an ARG of the same name.
func (s *stage) env() []string {
	env := append([]string(nil), s.cfg.Config.Env...)
	for _, a := range s.args {
		if a.value == nil {
			continue
		}
		if _, ok := lookupEnv(env, a.key); ok {
			continue
		}
		env = append(env, a.key+"="+*a.value)
	}
	return env
}

// argEnv lists the stage's build args for RUN's history text, as
// BuildKit: every declared arg, an empty value for those without one.
func (s *stage) argEnv() []string {
	var out []string
	idx := map[string]int{}
	for _, a := range s.args {
		v := ""
		if a.value != nil {
			v = *a.value
		}
		if i, ok := idx[a.key]; ok {
			out[i] = a.key + "=" + v
			continue
		}
		idx[a.key] = len(out)
		out = append(out, a.key+"="+v)
	}
	return out
}

func lookupEnv(env []string, key string) (string, bool) {
	for i := len(env) - 1; i >= 0; i-- {
		k, v, _ := strings.Cut(env[i], "=")
		if k == key {
			return v, true
		}
	}
	return "", false
}

// setEnv replaces or appends key in env, keeping its position.
func setEnv(env []string, key, value string) []string {
	for i, e := range env {
		if k, _, _ := strings.Cut(e, "="); k == key {
			env[i] = key + "=" + value
			return env
		}
	}
	return append(env, key+"="+value)
}

// history appends a history entry for a step.
func (s *stage) history(createdBy string, empty bool) {
	s.cfg.History = append(s.cfg.History, v1.History{
		Created:    v1.Time{Time: s.now()},
		CreatedBy:  createdBy,
		Comment:    "buildkit.dockerfile.v0",
		EmptyLayer: empty,
	})
}
