package builder

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

// image assembles the OCI image of a built stage: its config (with the
// --label values), history and layers, read lazily from the blob store.
func (b *build) image(s *stage) (v1.Image, error) {
	cfg := s.cfg.DeepCopy()
	cfg.Created = v1.Time{Time: b.now()}
	if len(b.opts.Labels) > 0 && cfg.Config.Labels == nil {
		cfg.Config.Labels = map[string]string{}
	}
	for k, v := range b.opts.Labels {
		cfg.Config.Labels[k] = v
	}
	cfg.RootFS = v1.RootFS{Type: "layers", DiffIDs: []v1.Hash{}}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	layers := make([]v1.Layer, 0, len(s.layers))
	for _, l := range s.layers {
		layer, err := b.layer(l)
		if err != nil {
			return nil, err
		}
		layers = append(layers, layer)
		cfg.RootFS.DiffIDs = append(cfg.RootFS.DiffIDs, l.DiffID)
	}
	img, err := mutate.AppendLayers(img, layers...)
	if err != nil {
		return nil, err
	}
	return mutate.ConfigFile(img, cfg)
}

func envGetter(env []string) shell.EnvGetter { return shell.EnvsFromSlice(env) }
