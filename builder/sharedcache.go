package builder

import (
	"context"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/output"
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
		b.addSource(e.Digest, func() (v1.Layer, error) { return se.store.Layer(e) })
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
	inImage := map[v1.Hash]bool{}
	for _, l := range target.layers {
		inImage[l.Digest] = true
	}
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
		pushedTo := b.pushedRepository(ex.Store)
		err = ex.Store.Save(ctx, idx, func(e *cache.Entry) (v1.Layer, error) {
			l, err := b.layer(snapshot.Layer{Digest: e.Digest, DiffID: e.DiffID, Size: e.Size, MediaType: e.MediaType})
			if err != nil || pushedTo == nil || !inImage[e.Digest] {
				return l, err
			}
			if _, ok := l.(*remote.MountableLayer); ok {
				return l, nil
			}
			// The image was pushed to the same registry a moment ago:
			// the cache repository mounts the blob from there.
			return &remote.MountableLayer{Layer: l, Reference: pushedTo.Digest(e.Digest.String())}, nil
		})
		if err != nil {
			b.warn("exporting cache to %s: %v", ex.Store, err)
			continue
		}
		b.logf("exported %d cache entries to %s", len(idx.Entries), ex.Store)
	}
}

// pushedRepository returns a repository this build pushed its image to on
// the registry of the cache store st, or nil: the cache export can mount
// the image's layers from it instead of uploading them again.
func (b *build) pushedRepository(st cache.Store) *name.Repository {
	rs, ok := st.(*cache.Registry)
	if !ok {
		return nil
	}
	for _, o := range b.opts.Outputs {
		if ro, ok := o.(*output.Registry); ok && ro.Ref.Context().RegistryStr() == rs.Ref.Context().RegistryStr() {
			repo := ro.Ref.Context()
			return &repo
		}
	}
	return nil
}
