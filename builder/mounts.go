package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"syscall"

	"github.com/moby/buildkit/frontend/dockerfile/instructions"
	"github.com/rbuild/rbuild/executor"
)

// Secret is a build secret (--secret): RUN --mount=type=secret exposes it
// to one step, never to a layer, the cache key or the history.
type Secret struct {
	ID string
	// Src is a file with the value; Env names an environment variable
	// holding it (one of the two).
	Src string
	Env string
}

// runMounts reads the RUN --mount list: bind mounts of the context, a
// stage or an image; persistent cache directories; tmpfs; secrets. It
// returns the text the mounts add to the step's cache key, computed without
// mounting anything, and prepare, which sets the mounts up when the step
// really runs (a cache hit never materializes a bind source).
func (b *build) runMounts(ctx context.Context, s *stage, c *instructions.RunCommand) (key []string, prepare func() ([]executor.Mount, []string, func(), error), err error) {
	mounts := instructions.GetMounts(c)
	froms := make([]*fromSource, len(mounts))
	for i, m := range mounts {
		switch m.Type {
		case instructions.MountTypeBind:
			k, src, err := b.bindKey(ctx, s, m)
			if err != nil {
				return nil, nil, err
			}
			froms[i] = src
			key = append(key, k)
		case instructions.MountTypeCache:
			key = append(key, fmt.Sprintf("cache target=%s id=%s", m.Target, m.CacheID))
		case instructions.MountTypeTmpfs:
			key = append(key, fmt.Sprintf("tmpfs target=%s size=%d", m.Target, m.SizeLimit))
		case instructions.MountTypeSecret:
			// Only the secret's name and place enter the key, never its value.
			key = append(key, fmt.Sprintf("secret id=%s target=%s", m.CacheID, m.Target))
		case instructions.MountTypeSSH:
			return nil, nil, errors.New("RUN --mount=type=ssh is not supported: pass credentials as a secret")
		default:
			return nil, nil, fmt.Errorf("unsupported mount type %q", m.Type)
		}
	}
	prepare = func() (out []executor.Mount, env []string, release func(), err error) {
		var releases []func()
		release = func() {
			for i := len(releases) - 1; i >= 0; i-- {
				releases[i]()
			}
		}
		defer func() {
			if err != nil {
				release()
			}
		}()
		tmp, err := os.MkdirTemp(b.stateDir, "mounts-")
		if err != nil {
			return nil, nil, release, err
		}
		releases = append(releases, func() { _ = os.RemoveAll(tmp) })
		for i, m := range mounts {
			switch m.Type {
			case instructions.MountTypeBind:
				mnt, rel, err := b.bindMount(ctx, m, froms[i], filepath.Join(tmp, fmt.Sprintf("bind-%d", i)))
				if err != nil {
					return nil, nil, release, err
				}
				releases = append(releases, rel)
				out = append(out, mnt)
			case instructions.MountTypeCache:
				mnt, rel, err := b.cacheMount(ctx, s, m)
				if err != nil {
					return nil, nil, release, err
				}
				releases = append(releases, rel)
				out = append(out, mnt)
			case instructions.MountTypeTmpfs:
				out = append(out, executor.Mount{Type: "tmpfs", Target: m.Target, Size: m.SizeLimit})
			case instructions.MountTypeSecret:
				mnt, e, err := b.secretMount(m, filepath.Join(tmp, fmt.Sprintf("secret-%d", i)))
				if err != nil {
					return nil, nil, release, err
				}
				if mnt != nil {
					out = append(out, *mnt)
				}
				env = append(env, e...)
			}
		}
		return out, env, release, nil
	}
	return key, prepare, nil
}

// bindKey is a bind mount's part of the cache key: the content digest of
// the source in the build context, or the key of the stage or image it
// comes from (which fixes its content).
func (b *build) bindKey(ctx context.Context, s *stage, m *instructions.Mount) (string, *fromSource, error) {
	src := m.Source
	if src == "" {
		src = "/"
	}
	if m.From != "" {
		from, err := b.fromSource(ctx, s, m.From)
		if err != nil {
			return "", nil, err
		}
		return fmt.Sprintf("bind from:%s:%s target=%s ro=%v", from.key, src, m.Target, m.ReadOnly), from, nil
	}
	digest, err := executor.SourceDigest(executor.CopySpec{SrcRoot: b.opts.ContextDir, Sources: []string{src}, Dest: "/", WorkDir: "/", Excluded: b.excluded, PreserveOwnership: true})
	if err != nil {
		return "", nil, fmt.Errorf("--mount=type=bind,source=%s: %w", m.Source, err)
	}
	return fmt.Sprintf("bind context:%s digest=%s target=%s ro=%v", src, digest, m.Target, m.ReadOnly), nil, nil
}

// bindMount binds a path of the context, or of from (a stage or image). A
// read-write bind works on a copy: changes are discarded, as in BuildKit,
// and the user's context is never written to.
func (b *build) bindMount(ctx context.Context, m *instructions.Mount, from *fromSource, scratch string) (executor.Mount, func(), error) {
	root, release := b.opts.ContextDir, func() {}
	var excluded func(string) bool = b.excluded
	if from != nil {
		r, rel, err := from.mount()
		if err != nil {
			return executor.Mount{}, nil, err
		}
		root, release, excluded = r, rel, nil
	}
	src := m.Source
	if src == "" {
		src = "/"
	}
	full, err := secureJoin(root, src)
	if err != nil {
		release()
		return executor.Mount{}, nil, err
	}
	fi, err := os.Stat(full)
	if err != nil {
		release()
		return executor.Mount{}, nil, fmt.Errorf("--mount=type=bind,source=%s: %w", m.Source, err)
	}
	if m.ReadOnly {
		return executor.Mount{Source: full, Target: m.Target, ReadOnly: true}, release, nil
	}
	if err := os.MkdirAll(scratch, 0o755); err != nil {
		release()
		return executor.Mount{}, nil, err
	}
	dest := "/"
	if !fi.IsDir() {
		dest = "/" + path.Base(src)
	}
	err = executor.Copy(ctx, executor.CopySpec{SrcRoot: root, Sources: []string{src}, Dest: dest, WorkDir: "/", DstRoot: scratch, Excluded: excluded, PreserveOwnership: true})
	release()
	if err != nil {
		return executor.Mount{}, nil, fmt.Errorf("--mount=type=bind,source=%s: %w", m.Source, err)
	}
	return executor.Mount{Source: filepath.Join(scratch, filepath.FromSlash(dest)), Target: m.Target}, func() {}, nil
}

// cacheMount gives RUN a directory that persists between builds on this
// machine (under the state directory) and is never part of a layer.
// sharing=locked serializes the builds that use it; sharing=private gives
// a build its own directory when another one holds it.
func (b *build) cacheMount(ctx context.Context, s *stage, m *instructions.Mount) (executor.Mount, func(), error) {
	id := m.CacheID
	if id == "" {
		id = m.Target
	}
	sum := sha256.Sum256([]byte(id))
	dir := filepath.Join(b.opts.Root, "cachemounts", hex.EncodeToString(sum[:16]))
	lockFile, err := os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
			return executor.Mount{}, nil, err
		}
		if lockFile, err = os.OpenFile(dir+".lock", os.O_CREATE|os.O_RDWR, 0o600); err != nil {
			return executor.Mount{}, nil, err
		}
	}
	release := func() { lockFile.Close() }
	switch m.CacheSharing {
	case instructions.MountSharingLocked:
		if err := syscall.Flock(int(lockFile.Fd()), syscall.LOCK_EX); err != nil {
			release()
			return executor.Mount{}, nil, err
		}
	case instructions.MountSharingPrivate:
		if err := syscall.Flock(int(lockFile.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
			// In use: this build gets a throwaway directory.
			release()
			tmp, err := os.MkdirTemp(b.stateDir, "cache-private-")
			if err != nil {
				return executor.Mount{}, nil, err
			}
			if err := b.initCacheDir(ctx, s, m, tmp, false); err != nil {
				os.RemoveAll(tmp)
				return executor.Mount{}, nil, err
			}
			return executor.Mount{Source: tmp, Target: m.Target}, func() { os.RemoveAll(tmp) }, nil
		}
	default:
		// shared: several builds may write at once, as in BuildKit; the
		// lock is only held while the directory is created.
		if err := syscall.Flock(int(lockFile.Fd()), syscall.LOCK_SH); err != nil {
			release()
			return executor.Mount{}, nil, err
		}
	}
	_, statErr := os.Stat(dir)
	if err := b.initCacheDir(ctx, s, m, dir, statErr == nil); err != nil {
		release()
		return executor.Mount{}, nil, err
	}
	return executor.Mount{Source: dir, Target: m.Target}, release, nil
}

// initCacheDir creates a cache directory with the mount's uid, gid and mode
// (default 0:0 0755), seeded from from/source when given.
func (b *build) initCacheDir(ctx context.Context, s *stage, m *instructions.Mount, dir string, exists bool) error {
	if exists {
		return nil
	}
	// Builds sharing the cache may create it at once: each fills its own
	// directory and the first rename wins.
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".new-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if m.From != "" {
		root, _, rel, err := b.fromRoot(ctx, s, m.From)
		if err != nil {
			return err
		}
		src := m.Source
		if src == "" {
			src = "/"
		}
		err = executor.Copy(ctx, executor.CopySpec{SrcRoot: root, Sources: []string{src}, Dest: "/", WorkDir: "/", DstRoot: tmp, PreserveOwnership: true})
		rel()
		if err != nil {
			return err
		}
	}
	mode := os.FileMode(0o755)
	if m.Mode != nil {
		mode = os.FileMode(*m.Mode)
	}
	uid, gid := 0, 0
	if m.UID != nil {
		uid = int(*m.UID)
	}
	if m.GID != nil {
		gid = int(*m.GID)
	}
	if err := os.Chmod(tmp, mode); err != nil {
		return err
	}
	if err := os.Lchown(tmp, uid, gid); err != nil {
		// A user namespace with one uid cannot give the directory other
		// owners (EINVAL: unmapped); the step still runs, as root.
		if !errors.Is(err, syscall.EINVAL) {
			return err
		}
		b.warn("--mount=type=cache,target=%s: uid %d, gid %d cannot be set without a subordinate id range; the cache belongs to root", m.Target, uid, gid)
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, os.ErrExist) && !errors.Is(err, syscall.ENOTEMPTY) {
		return err
	}
	return nil
}

// secretMount exposes a secret as a read-only file (default
// /run/secrets/ID, mode 0400) and/or an environment variable (env=).
func (b *build) secretMount(m *instructions.Mount, file string) (*executor.Mount, []string, error) {
	id := m.CacheID
	if id == "" && m.Target != "" {
		id = path.Base(m.Target)
	}
	if id == "" {
		return nil, nil, errors.New("secret mount needs an id")
	}
	var value []byte
	found := false
	for _, sec := range b.opts.Secrets {
		if sec.ID != id {
			continue
		}
		var err error
		switch {
		case sec.Src != "":
			if value, err = os.ReadFile(sec.Src); err != nil {
				return nil, nil, fmt.Errorf("secret %q: %w", id, err)
			}
		case sec.Env != "":
			v, ok := os.LookupEnv(sec.Env)
			if !ok {
				return nil, nil, fmt.Errorf("secret %q: environment variable %s is not set", id, sec.Env)
			}
			value = []byte(v)
		}
		found = true
	}
	if !found {
		if m.Required {
			return nil, nil, fmt.Errorf("secret %q is required but was not given (--secret id=%s,src=FILE)", id, id)
		}
		return nil, nil, nil
	}
	var env []string
	if m.Env != nil && *m.Env != "" {
		env = append(env, *m.Env+"="+string(value))
		if m.Target == "" {
			return nil, env, nil
		}
	}
	target := m.Target
	if target == "" {
		target = "/run/secrets/" + id
	}
	mode := os.FileMode(0o400)
	if m.Mode != nil {
		mode = os.FileMode(*m.Mode)
	}
	if err := os.WriteFile(file, value, mode); err != nil {
		return nil, nil, err
	}
	if err := os.Chmod(file, mode); err != nil {
		return nil, nil, err
	}
	uid, gid := 0, 0
	if m.UID != nil {
		uid = int(*m.UID)
	}
	if m.GID != nil {
		gid = int(*m.GID)
	}
	if err := os.Lchown(file, uid, gid); err != nil {
		return nil, nil, err
	}
	return &executor.Mount{Source: file, Target: target, ReadOnly: true}, env, nil
}
