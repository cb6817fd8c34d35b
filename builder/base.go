package builder

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/rbuild/rbuild/snapshot"
	"golang.org/x/sync/errgroup"
)

// baseImage is an image pulled into the local store.
type baseImage struct {
	ref    string
	digest v1.Hash
	cfg    *v1.ConfigFile
	layers []snapshot.Layer
	// top is the store ID of the topmost layer ("" for an image with no
	// layers).
	top string
}

type pullOnce struct {
	once sync.Once
	img  *baseImage
	err  error
}

// pull resolves ref once per build and platform; stages that name the same
// image share the result.
func (b *build) pull(ctx context.Context, refStr string, platform v1.Platform) (*baseImage, error) {
	k := refStr + "|" + platform.String()
	b.mu.Lock()
	p := b.pulls[k]
	if p == nil {
		p = &pullOnce{}
		b.pulls[k] = p
	}
	b.mu.Unlock()
	p.once.Do(func() { p.img, p.err = b.pullImage(ctx, refStr, platform) })
	return p.img, p.err
}

// pullImage resolves ref for the build's platform and makes sure every layer is
// in the local store and blob store, downloading only the missing ones
// (concurrently) and storing each layer once, under its chain ID.
func (b *build) pullImage(ctx context.Context, refStr string, platform v1.Platform) (*baseImage, error) {
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
	}
	// Download missing blobs concurrently; apply in order, since each
	// layer is stored on top of its parent.
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(4)
	for i := range base.layers {
		l := base.layers[i]
		if b.store.Exists(l.ID) && b.store.Blobs.Has(l.Digest) {
			continue
		}
		g.Go(func() error {
			if b.store.Blobs.Has(l.Digest) {
				return nil
			}
			layer, err := img.LayerByDigest(l.Digest)
			if err != nil {
				return fmt.Errorf("%s: layer %s: %w", refStr, l.Digest, err)
			}
			rc, err := layer.Compressed()
			if err != nil {
				return fmt.Errorf("%s: fetching layer %s: %w", refStr, l.Digest, err)
			}
			defer rc.Close()
			if _, err := b.store.Blobs.Put(l.Digest, ctxReader{gctx, rc}); err != nil {
				return fmt.Errorf("%s: fetching layer %s: %w", refStr, l.Digest, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	parent := ""
	for _, l := range base.layers {
		if !b.store.Exists(l.ID) {
			if err := b.applyBlob(l, parent); err != nil {
				return nil, fmt.Errorf("%s: %w", refStr, err)
			}
		}
		parent = l.ID
	}
	base.top = parent
	return base, nil
}

// applyBlob unpacks a stored blob as a store layer, checking that the
// uncompressed stream matches the diffID the config promised.
func (b *build) applyBlob(l snapshot.Layer, parent string) error {
	rc, err := b.store.Blobs.V1(l).Uncompressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	h := sha256.New()
	if err := b.store.PutLayer(l.ID, parent, io.TeeReader(rc, h)); err != nil {
		return err
	}
	if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != l.DiffID.String() {
		// The store holds a layer whose content is not what the image
		// names: remove it so it is never used.
		_ = b.store.Delete(l.ID)
		return fmt.Errorf("layer %s: content does not match its diffID %s (got %s)", l.Digest, l.DiffID, got)
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
