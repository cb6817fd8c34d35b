package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sync"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/rbuild/rbuild/snapshot"
)

// baseImage is a resolved base image. Its layers are not downloaded yet:
// that happens only when a step needs the root filesystem (materialize),
// so a build whose steps are all cached never downloads a base layer.
type baseImage struct {
	ref    string
	digest v1.Hash
	cfg    *v1.ConfigFile
	// layers carry their chain IDs as store IDs; the store may not have
	// them yet.
	layers []snapshot.Layer
}

type pullOnce struct {
	once sync.Once
	img  *baseImage
	err  error
}

// pull resolves ref once per build and platform; stages that name the same
// image share the result.
func (b *build) pull(_ context.Context, refStr string, platform v1.Platform) (*baseImage, error) {
	k := refStr + "|" + platform.String()
	b.mu.Lock()
	p := b.pulls[k]
	if p == nil {
		p = &pullOnce{}
		b.pulls[k] = p
	}
	b.mu.Unlock()
	// The image handle serves layer fetches until the export, after the
	// stage that asked for it is done: bind it to the build's context.
	p.once.Do(func() { p.img, p.err = b.resolveImage(b.ctx, refStr, platform) })
	return p.img, p.err
}

// resolveImage reads ref's manifest and config (from the local image store,
// or the registry) and records where each layer blob can be fetched.
func (b *build) resolveImage(ctx context.Context, refStr string, platform v1.Platform) (*baseImage, error) {
	ref, err := b.reg.ParseReference(refStr)
	if err != nil {
		return nil, fmt.Errorf("invalid image reference %q: %w", refStr, err)
	}
	img, local, err := b.localImage(ref, platform)
	if err != nil {
		return nil, err
	}
	if !local {
		if img, err = b.reg.Image(ctx, ref, platform); err != nil {
			return nil, err
		}
	}
	digest, err := img.Digest()
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("%s: reading config: %w", refStr, err)
	}
	cfg = cfg.DeepCopy()
	manifest, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("%s: reading manifest: %w", refStr, err)
	}
	if len(manifest.Layers) != len(cfg.RootFS.DiffIDs) {
		return nil, fmt.Errorf("%s: manifest has %d layers but config lists %d", refStr, len(manifest.Layers), len(cfg.RootFS.DiffIDs))
	}
	where := ""
	if local {
		where = " (local image store)"
	}
	b.logf("resolved %s to %s@%s%s", refStr, ref.Context().String(), digest, where)
	base := &baseImage{ref: refStr, digest: digest, cfg: cfg}
	ids := chainIDs(cfg.RootFS.DiffIDs)
	base.layers = make([]snapshot.Layer, len(manifest.Layers))
	for i, d := range manifest.Layers {
		base.layers[i] = snapshot.Layer{
			ID:        ids[i],
			DiffID:    cfg.RootFS.DiffIDs[i],
			Digest:    d.Digest,
			Size:      d.Size,
			MediaType: ociMediaType(d.MediaType),
		}
		src := blobSource{open: func() (v1.Layer, error) { return img.LayerByDigest(d.Digest) }}
		if !local {
			in := ref.Context().Digest(d.Digest.String())
			src.repo = &in
		}
		b.addSource(d.Digest, src)
	}
	return base, nil
}

// blobSource is where a blob can be fetched when it is not local, and the
// registry repository that holds it, if any: a push to the same registry
// mounts the blob from there instead of uploading it (as Docker and buildah
// do), whether or not rbuild downloaded it.
type blobSource struct {
	open func() (v1.Layer, error)
	repo *name.Digest
}

// addSource records a blob's source; the first one recorded stays.
func (b *build) addSource(d v1.Hash, src blobSource) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if _, ok := b.sources[d]; !ok {
		b.sources[d] = src
	}
}

// layer returns a layer of the image being assembled: from the blob store
// when the blob is here, else from where it was found (a registry layer,
// which a push to the same registry mounts instead of copying).
func (b *build) layer(l snapshot.Layer) (v1.Layer, error) {
	b.mu.Lock()
	source, known := b.sources[l.Digest]
	b.mu.Unlock()
	if b.store.Blobs.Has(l.Digest) {
		local := b.store.Blobs.V1(l)
		if source.repo != nil {
			return &remote.MountableLayer{Layer: local, Reference: *source.repo}, nil
		}
		return local, nil
	}
	if !known {
		return nil, fmt.Errorf("layer %s is neither stored locally nor known in a registry", l.Digest)
	}
	src, err := source.open()
	if err != nil {
		return nil, err
	}
	mt, err := src.MediaType()
	if err != nil || mt == l.MediaType || l.MediaType == "" {
		return src, err
	}
	// A Docker base layer in an OCI image: same bytes, OCI media type.
	// Keep it mountable from its repository.
	if ml, ok := src.(*remote.MountableLayer); ok {
		return &remote.MountableLayer{Layer: retyped{ml.Layer, l.MediaType}, Reference: ml.Reference}, nil
	}
	return retyped{src, l.MediaType}, nil
}

// retyped is a layer presented under another media type.
type retyped struct {
	v1.Layer
	mt types.MediaType
}

func (r retyped) MediaType() (types.MediaType, error) { return r.mt, nil }

// materialize makes sure the store holds the root filesystem of layers and
// returns the ID of its top layer ("" for no layers). Layers already in the
// store are used as they are; the others are downloaded (concurrently, only
// those whose blob is missing), verified and stored under their chain IDs.
func (b *build) materialize(ctx context.Context, layers []snapshot.Layer) (string, error) {
	start := 0
	for i := len(layers) - 1; i >= 0; i-- {
		if layers[i].ID != "" && b.store.Exists(layers[i].ID) {
			start = i + 1
			break
		}
	}
	if start == len(layers) {
		if start == 0 {
			return "", nil
		}
		return layers[start-1].ID, nil
	}
	diffIDs := make([]v1.Hash, len(layers))
	for i, l := range layers {
		diffIDs[i] = l.DiffID
	}
	ids := chainIDs(diffIDs)
	// Downloads run concurrently; each layer is unpacked as soon as it and
	// the layers below it are here, while the others keep downloading.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make([]chan error, len(layers))
	sem := make(chan struct{}, 4)
	for i := start; i < len(layers); i++ {
		done[i] = make(chan error, 1)
		go func(l snapshot.Layer, ch chan error) {
			select {
			case sem <- struct{}{}:
			case <-ctx.Done():
				ch <- ctx.Err()
				return
			}
			defer func() { <-sem }()
			ch <- b.fetchBlob(ctx, l)
		}(layers[i], done[i])
	}
	parent := ""
	if start > 0 {
		parent = layers[start-1].ID
	}
	onSnapshot := start > 0 && layers[start-1].ID != ids[start-1]
	for i := start; i < len(layers); i++ {
		if err := <-done[i]; err != nil {
			return "", err
		}
		id := ids[i]
		if onSnapshot {
			// The chain continues on a locally built snapshot: its chain
			// ID names other parents, so key the new layer on the
			// snapshot it really sits on.
			sum := sha256.Sum256([]byte(parent + " " + layers[i].DiffID.String()))
			id = hex.EncodeToString(sum[:])
		}
		if err := b.applyOnce(layers[i], id, parent); err != nil {
			return "", err
		}
		parent = id
	}
	return parent, nil
}

// applyOnce stores a layer unless it is there; stages materializing the
// same base at once take turns per layer instead of unpacking it twice.
func (b *build) applyOnce(l snapshot.Layer, id, parent string) error {
	mu, _ := b.layerLocks.LoadOrStore(id, &sync.Mutex{})
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	if b.store.Exists(id) {
		return nil
	}
	return b.applyBlob(l, id, parent)
}

// fetchBlob downloads a layer blob into the blob store, verifying its
// digest, unless it is there already.
func (b *build) fetchBlob(ctx context.Context, l snapshot.Layer) error {
	if b.store.Blobs.Has(l.Digest) {
		return nil
	}
	src, err := b.layer(l)
	if err != nil {
		return err
	}
	rc, err := src.Compressed()
	if err != nil {
		return fmt.Errorf("fetching layer %s: %w", l.Digest, err)
	}
	defer rc.Close()
	if _, err := b.store.Blobs.Put(l.Digest, ctxReader{ctx, rc}); err != nil {
		return fmt.Errorf("fetching layer %s: %w", l.Digest, err)
	}
	return nil
}

// applyBlob unpacks a stored blob as store layer id on parent, checking
// that the uncompressed stream matches the diffID the config promised and
// that no entry reaches outside the root.
func (b *build) applyBlob(l snapshot.Layer, id, parent string) error {
	rc, err := b.store.Blobs.V1(l).Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha256.New()
	// The entry check reads a copy of the stream as it is unpacked.
	pr, pw := io.Pipe()
	checked := make(chan error, 1)
	go func() {
		err := checkLayerEntries(pr)
		_, _ = io.Copy(io.Discard, pr)
		checked <- err
	}()
	stored, err := b.store.PutLayer(id, parent, io.TeeReader(io.TeeReader(rc, h), pw))
	pw.CloseWithError(err)
	bad := <-checked
	if err == nil && !stored {
		// Another build stored it meanwhile; it checked the content.
		return nil
	}
	if err != nil {
		if bad != nil {
			// The store stumbled over the entry the check names.
			_ = b.store.Delete(id)
			return fmt.Errorf("layer %s: %w", l.Digest, bad)
		}
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); bad == nil && got != l.DiffID.String() {
		bad = fmt.Errorf("content does not match its diffID %s (got %s)", l.DiffID, got)
	}
	if bad != nil {
		// The store holds a layer that must never be used: remove it.
		_ = b.store.Delete(id)
		return fmt.Errorf("layer %s: %w", l.Digest, bad)
	}
	return nil
}

// chainIDs computes the OCI chain ID of each layer, as hex store IDs.
func chainIDs(diffIDs []v1.Hash) []string {
	out := make([]string, len(diffIDs))
	prev := ""
	for i, d := range diffIDs {
		if i == 0 {
			prev = d.String()
		} else {
			sum := sha256.Sum256([]byte(prev + " " + d.String()))
			prev = "sha256:" + hex.EncodeToString(sum[:])
		}
		out[i] = prev[len("sha256:"):]
	}
	return out
}

// ociMediaType maps Docker's layer media types to OCI's: the blob bytes
// are identical, and an OCI manifest should name OCI types.
func ociMediaType(mt types.MediaType) types.MediaType {
	switch mt {
	case types.DockerLayer:
		return types.OCILayer
	case types.DockerUncompressedLayer:
		return types.OCIUncompressedLayer
	case types.DockerForeignLayer:
		return types.OCIRestrictedLayer
	}
	return mt
}

// ctxReader stops a download when the build is canceled.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
