package builder

import (
	"context"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/snapshot"
	"golang.org/x/sync/errgroup"
)

// sharedEntry is a hit candidate from an imported cache.
type sharedEntry struct {
	entry *cache.Entry
	store cache.Store
}

// produced is a step result this build can export.
type produced struct {
	stage *stage
	key   cache.Key
	entry *cache.Entry
}

// importCaches probes every --cache-from store at once. A store that
// cannot be read costs a warning, never the build.
func (b *build) importCaches(ctx context.Context) {
	if len(b.opts.CacheFrom) == 0 || b.opts.NoCache {
		return
	}
	idxs := make([]*cache.Index, len(b.opts.CacheFrom))
	var g errgroup.Group
	for i, st := range b.opts.CacheFrom {
		g.Go(func() error {
			idx, err := st.Load(ctx)
			if err != nil {
				b.warn("cache %s not used: %v", st, err)
				return nil
			}
			idxs[i] = idx
			return nil
		})
	}
	_ = g.Wait()
	for i, idx := range idxs {
		if idx == nil {
			continue
		}
		for k, e := range idx.Entries {
			if _, ok := b.shared[k]; !ok {
				b.shared[k] = sharedEntry{entry: e, store: b.opts.CacheFrom[i]}
			}
		}
		b.logf("cache %s: %d entries", b.opts.CacheFrom[i], len(idx.Entries))
	}
}

// sharedHit looks key up in the imported caches and registers where its
// blob can be fetched.
func (b *build) sharedHit(key cache.Key) (*snapshot.Layer, cache.Store, bool) {
	se, ok := b.shared[key]
	if !ok {
		return nil, nil, false
	}
	e := se.entry
	if !e.Empty {
		src := blobSource{open: func() (v1.Layer, error) { return se.store.Layer(e) }}
		if rs, ok := se.store.(*cache.Registry); ok {
			in := rs.Ref.Context().Digest(e.Digest.String())
			src.repo = &in
		}
		b.addSource(e.Digest, src)
	}
	return &snapshot.Layer{Empty: e.Empty, DiffID: e.DiffID, Digest: e.Digest, Size: e.Size, MediaType: e.MediaType}, se.store, true
}

func (b *build) record(s *stage, key cache.Key, l *snapshot.Layer) {
	e := layerEntry(l)
	e.SnapshotID = ""
	e.Created = time.Now().UTC()
	b.mu.Lock()
	b.produced = append(b.produced, produced{stage: s, key: key, entry: e})
	b.mu.Unlock()
}

// exportCaches writes the build's entries to every --cache-to store,
// merged with what the store holds. Failures are warnings: the image is
// built and delivered already.
func (b *build) exportCaches(ctx context.Context, target *stage) {
	for _, ex := range b.opts.CacheTo {
		chain := map[*stage]bool{}
		for s := target; s != nil; s = s.baseOf {
			chain[s] = true
		}
		idx := cache.NewIndex()
		for _, p := range b.produced {
			if ex.Mode == "max" || chain[p.stage] {
				idx.Entries[p.key] = p.entry
			}
		}
		old, err := ex.Store.Load(ctx)
		if err != nil {
			b.warn("cache %s: existing entries not kept: %v", ex.Store, err)
		} else {
			idx.Merge(old)
		}
		err = ex.Store.Save(ctx, idx, func(e *cache.Entry) (v1.Layer, error) {
			return b.layer(snapshot.Layer{Digest: e.Digest, DiffID: e.DiffID, Size: e.Size, MediaType: e.MediaType})
		})
		if err != nil {
			b.warn("exporting cache to %s: %v", ex.Store, err)
			continue
		}
		b.logf("exported %d cache entries to %s", len(idx.Entries), ex.Store)
	}
}

// pushed records that the image's layers are in repo now: a later upload
// to the same registry (a --cache-to there) mounts them from it rather
// than uploading them again. A layer that has a source keeps it.
func (b *build) pushed(repo name.Repository, layers []snapshot.Layer) {
	for _, l := range layers {
		if l.Empty {
			continue
		}
		in := repo.Digest(l.Digest.String())
		b.addSource(l.Digest, blobSource{
			open: func() (v1.Layer, error) { return remote.Layer(in, b.reg.RemoteOptions()...) },
			repo: &in,
		})
	}
}
