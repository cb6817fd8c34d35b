package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/sync/errgroup"
)

// Media types of the cache index in a registry: an OCI image manifest whose
// config blob is the Index as JSON and whose layers are every blob the
// index references (so registry garbage collection keeps them).
const (
	ArtifactType    = "application/vnd.rbuild.cache.v1"
	ConfigMediaType = "application/vnd.rbuild.cache.index.v1+json"
)

// Registry is a cache kept in a registry repository, under one tag.
type Registry struct {
	Ref     name.Reference
	Options []remote.Option
}

func (r *Registry) String() string { return r.Ref.String() }

// Load fetches the manifest and the index blob: two requests for all keys.
func (r *Registry) Load(ctx context.Context) (*Index, error) {
	// Clip: never append into the caller's backing array.
	opts := append(slices.Clip(r.Options), remote.WithContext(ctx))
	desc, err := remote.Get(r.Ref, opts...)
	if err != nil {
		var terr *transport.Error
		if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
			return NewIndex(), nil
		}
		return nil, err
	}
	var m v1.Manifest
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		return nil, fmt.Errorf("%s: not an rbuild cache (manifest: %v)", r.Ref, err)
	}
	if m.Config.MediaType != ConfigMediaType {
		return nil, fmt.Errorf("%s: not an rbuild cache (config type %q)", r.Ref, m.Config.MediaType)
	}
	if m.Config.Size > 64<<20 {
		return nil, fmt.Errorf("%s: cache index of %d bytes is too large", r.Ref, m.Config.Size)
	}
	l, err := remote.Layer(r.Ref.Context().Digest(m.Config.Digest.String()), opts...)
	if err != nil {
		return nil, err
	}
	rc, err := l.Compressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return decodeIndex(rc, m.Config.Digest, r.String())
}

// Layer reads a cached layer from the repository; a push to the same
// registry mounts it instead of copying its bytes.
func (r *Registry) Layer(e *Entry) (v1.Layer, error) {
	ref := r.Ref.Context().Digest(e.Digest.String())
	inner, err := remote.Layer(ref, r.Options...)
	if err != nil {
		return nil, err
	}
	return &remote.MountableLayer{Layer: &describedLayer{e: e, inner: inner}, Reference: ref}, nil
}

// Save uploads the blobs the repository lacks (in parallel), then the index
// and the manifest.
func (r *Registry) Save(ctx context.Context, idx *Index, layer func(*Entry) (v1.Layer, error)) error {
	opts := append(slices.Clip(r.Options), remote.WithContext(ctx))
	repo := r.Ref.Context()
	idx.Trim()
	blobs := distinctBlobs(idx)
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for _, e := range blobs {
		g.Go(func() error {
			// Each goroutine its own slice: appending to the shared
			// opts would write one backing array concurrently.
			o := append(slices.Clip(opts), remote.WithContext(gctx))
			// Entries merged from the repository's own index have
			// their blob here already, and this build may never have
			// had it: do not ask for it.
			if rl, err := remote.Layer(repo.Digest(e.Digest.String()), o...); err == nil {
				if ok, err := partial.Exists(rl); err == nil && ok {
					return nil
				}
			}
			l, err := layer(e)
			if err != nil {
				return err
			}
			// WriteLayer asks the registry first and mounts blobs that
			// live in another repository of the same registry.
			return remote.WriteLayer(repo, l, o...)
		})
	}
	if err := g.Wait(); err != nil {
		return err
	}
	data, err := json.Marshal(idx)
	if err != nil {
		return err
	}
	cfg := static.NewLayer(data, ConfigMediaType)
	if err := remote.WriteLayer(repo, cfg, opts...); err != nil {
		return err
	}
	cfgDigest, _ := cfg.Digest()
	m := v1.Manifest{
		SchemaVersion: 2,
		MediaType:     types.OCIManifestSchema1,
		Config:        v1.Descriptor{MediaType: ConfigMediaType, Size: int64(len(data)), Digest: cfgDigest},
	}
	for _, e := range blobs {
		m.Layers = append(m.Layers, v1.Descriptor{MediaType: e.MediaType, Size: e.Size, Digest: e.Digest})
	}
	raw, err := json.Marshal(struct {
		v1.Manifest
		ArtifactType string `json:"artifactType"`
	}{m, ArtifactType})
	if err != nil {
		return err
	}
	return remote.Put(r.Ref, rawManifest(raw), opts...)
}

type rawManifest []byte

func (m rawManifest) RawManifest() ([]byte, error)        { return m, nil }
func (m rawManifest) MediaType() (types.MediaType, error) { return types.OCIManifestSchema1, nil }

// distinctBlobs lists the layer blobs an index references, once each, in
// a stable order.
func distinctBlobs(idx *Index) []*Entry {
	seen := map[v1.Hash]bool{}
	var out []*Entry
	for _, k := range sortedKeys(idx) {
		e := idx.Entries[k]
		if e.Empty || seen[e.Digest] {
			continue
		}
		seen[e.Digest] = true
		out = append(out, e)
	}
	return out
}

// decodeIndex reads an index blob, checking its digest and dropping
// malformed entries: a cache is a hint, never trusted blindly.
func decodeIndex(r interface{ Read([]byte) (int, error) }, want v1.Hash, where string) (*Index, error) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r); err != nil {
		return nil, err
	}
	got, _, err := v1.SHA256(bytes.NewReader(buf.Bytes()))
	if err != nil {
		return nil, err
	}
	if want.Hex != "" && got != want {
		return nil, fmt.Errorf("%s: cache index digest mismatch", where)
	}
	// Entries are decoded one by one, so that one that does not parse
	// (a digest "md5:...") is dropped like any other malformed entry
	// instead of costing the whole index.
	var raw struct {
		Version int                     `json:"version"`
		Entries map[Key]json.RawMessage `json:"entries"`
	}
	if err := json.Unmarshal(buf.Bytes(), &raw); err != nil {
		return nil, fmt.Errorf("%s: corrupt cache index: %v", where, err)
	}
	if raw.Version != indexVersion {
		return nil, fmt.Errorf("%s: cache index version %d not understood", where, raw.Version)
	}
	idx := NewIndex()
	for k, data := range raw.Entries {
		var e *Entry
		if len(k) != 64 || json.Unmarshal(data, &e) != nil || !e.valid() {
			continue
		}
		e.SnapshotID = ""
		idx.Entries[k] = e
	}
	return idx, nil
}
