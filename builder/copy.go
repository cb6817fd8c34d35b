package builder

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/executor"
)

type copyArgs struct {
	name         string
	srcs         instructions.SourcesAndDest
	from         string
	chown, chmod string
	excludes     []string
	parents      bool
	add          bool
}

// copy runs COPY or ADD: the sources come from the build context, another
// stage or an image (--from), or inline heredocs.
func (b *build) copy(ctx context.Context, s *stage, a copyArgs) error {
	if len(a.excludes) > 0 {
		return errors.New("--exclude is not supported yet")
	}
	if a.parents {
		return errors.New("--parents is not supported yet")
	}
	spec := executor.CopySpec{
		Sources: a.srcs.SourcePaths,
		Dest:    a.srcs.DestPath,
		WorkDir: s.cfg.Config.WorkingDir,
		Chown:   a.chown,
		Chmod:   a.chmod,
		Add:     a.add,
	}
	if spec.WorkDir == "" {
		spec.WorkDir = "/"
	}
	var srcKey string
	// mountSrc, when set, mounts the source root filesystem: only when the
	// step really runs, so a cache hit never downloads the source stage.
	var mountSrc func() (string, func(), error)
	switch {
	case len(a.srcs.SourceContents) > 0:
		dir, err := os.MkdirTemp(b.stateDir, "inline-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		env := s.env()
		for _, sc := range a.srcs.SourceContents {
			data := sc.Data
			if sc.Expand {
				if data, err = b.expandWord(data, env); err != nil {
					return err
				}
			}
			if err := os.WriteFile(filepath.Join(dir, filepath.Base(sc.Path)), []byte(data), 0o644); err != nil {
				return err
			}
			spec.Sources = append(spec.Sources, filepath.Base(sc.Path))
		}
		spec.SrcRoot = dir
		srcKey = "inline"
	case a.from != "":
		src, err := b.fromSource(ctx, s, a.from)
		if err != nil {
			return err
		}
		mountSrc = src.mount
		// Files from another stage or image keep their owners (only the
		// context's files are reset to 0:0, as Docker's client does).
		spec.PreserveOwnership = true
		// The source's key fixes its whole content.
		srcKey = "from:" + src.key
	default:
		spec.SrcRoot = b.opts.ContextDir
		spec.Excluded = b.excluded
		srcKey = "context"
	}
	digest := ""
	if mountSrc == nil {
		// The digest covers what will be copied; --chown is resolved
		// against the rootfs, which the parent key already fixes, so it
		// enters as text.
		dspec := spec
		dspec.Chown = ""
		var err error
		if digest, err = executor.SourceDigest(dspec); err != nil {
			return err
		}
	}
	kb := cache.NewKey(s.key).
		Add("op", a.name).
		Add("src", srcKey).
		Add("digest", digest).
		AddList("sources", spec.Sources).
		Add("dest", spec.Dest).
		Add("workdir", spec.WorkDir).
		Add("chown", a.chown).
		Add("chmod", a.chmod)
	return b.step(ctx, s, kb.Key(), copyHistory(a), func(rootfs string) error {
		if mountSrc != nil {
			root, release, err := mountSrc()
			if err != nil {
				return err
			}
			defer release()
			spec.SrcRoot = root
		}
		spec.DstRoot = rootfs
		return executor.Copy(ctx, spec)
	})
}

// copyHistory is BuildKit's history text for COPY and ADD.
func copyHistory(a copyArgs) string {
	msg := a.name
	if a.chown != "" {
		msg += " --chown=" + a.chown
	}
	if a.chmod != "" {
		msg += " --chmod=" + a.chmod
	}
	for _, src := range a.srcs.SourcePaths {
		msg += " " + src
	}
	for _, sc := range a.srcs.SourceContents {
		msg += " <<" + sc.Path
	}
	return msg + " " + a.srcs.DestPath + " # buildkit"
}

// fromSource is the root filesystem named by --from: its cache key, and a
// function that mounts it (materializing its layers).
type fromSource struct {
	key   string
	mount func() (string, func(), error)
}

// fromSource resolves --from: a stage (by name or index, built on demand)
// or an image.
func (b *build) fromSource(ctx context.Context, s *stage, from string) (*fromSource, error) {
	if src := b.stageByName(from); src != nil {
		if _, numeric := strconv.Atoi(from); numeric == nil || src.name == strings.ToLower(from) {
			if src.index >= s.index {
				return nil, fmt.Errorf("cannot copy from stage %q, it needs to be defined before current stage %q", from, s.label())
			}
			if err := b.ensureStage(ctx, src); err != nil {
				return nil, err
			}
			return &fromSource{key: string(src.key), mount: func() (string, func(), error) {
				top, err := b.rootfs(ctx, src)
				if err != nil {
					return "", nil, err
				}
				return b.store.Mount(top)
			}}, nil
		}
	}
	img, err := b.pull(ctx, from, s.platform)
	if err != nil {
		return nil, fmt.Errorf("--from=%s: no stage of that name, and as an image: %w", from, err)
	}
	return &fromSource{key: img.digest.String(), mount: func() (string, func(), error) {
		top, err := b.materialize(ctx, img.layers)
		if err != nil {
			return "", nil, err
		}
		return b.store.Mount(top)
	}}, nil
}

// fromRoot mounts the root filesystem named by --from right away.
func (b *build) fromRoot(ctx context.Context, s *stage, from string) (root, key string, release func(), err error) {
	src, err := b.fromSource(ctx, s, from)
	if err != nil {
		return "", "", nil, err
	}
	root, release, err = src.mount()
	return root, src.key, release, err
}

func (b *build) expandWord(w string, env []string) (string, error) {
	out, _, err := b.newLex().ProcessWord(w, envGetter(env))
	return out, err
}
