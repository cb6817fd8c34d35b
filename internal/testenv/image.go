package testenv

import (
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Epoch is the time recorded in base images made here, so that they are
// the same image every time.
var Epoch = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)

// ImageSpec describes a base image assembled from layers.
type ImageSpec struct {
	// OCI selects OCI media types; Docker's schema 2 otherwise.
	OCI bool
	// History has one created_by text per layer.
	History []string
	Config  v1.Config
	// Architecture and Variant default to amd64 and none.
	Architecture, Variant string
}

// Image assembles an image of layers, with its history, config and
// platform, every time at Epoch.
func Image(layers []v1.Layer, spec ImageSpec) (v1.Image, error) {
	img := empty.Image
	if spec.OCI {
		img = mutate.MediaType(img, types.OCIManifestSchema1)
		img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	}
	for i, l := range layers {
		var err error
		img, err = mutate.Append(img, mutate.Addendum{
			Layer:   l,
			History: v1.History{CreatedBy: spec.History[i], Created: v1.Time{Time: Epoch}},
		})
		if err != nil {
			return nil, err
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.Architecture = spec.Architecture
	if cf.Architecture == "" {
		cf.Architecture = "amd64"
	}
	cf.Variant = spec.Variant
	cf.OS = "linux"
	cf.Created = v1.Time{Time: Epoch}
	cf.Config = spec.Config
	return mutate.ConfigFile(img, cf)
}
