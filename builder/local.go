package builder

import (
	"errors"
	"fmt"
	"os"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/rbuild/rbuild/registry"
	"github.com/rbuild/rbuild/snapshot"
)

// localImage finds ref in the local image store (images built with a tag
// that names no registry, or with --push=false). As with docker build, a
// local image is used without asking a registry unless --pull is given.
func (b *build) localImage(ref name.Reference, platform v1.Platform) (v1.Image, bool, error) {
	if b.opts.Pull {
		return nil, false, nil
	}
	p, err := layout.FromPath(snapshot.ImageDir(b.opts.Root))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil, false, nil
		}
		return nil, false, fmt.Errorf("local image store: %w", err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		return nil, false, fmt.Errorf("local image store: %w", err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		return nil, false, fmt.Errorf("local image store: %w", err)
	}
	for _, d := range m.Manifests {
		if d.Annotations["io.containerd.image.name"] != registry.ImageName(ref) {
			continue
		}
		img, err := idx.Image(d.Digest)
		if err != nil {
			return nil, false, fmt.Errorf("local image %s: %w", ref.Name(), err)
		}
		cfg, err := img.ConfigFile()
		if err != nil {
			return nil, false, fmt.Errorf("local image %s: %w", ref.Name(), err)
		}
		if cfg.Architecture != platform.Architecture || cfg.OS != platform.OS {
			continue
		}
		return img, true, nil
	}
	return nil, false, nil
}
