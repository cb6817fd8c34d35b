// Package builder turns a Dockerfile and its build context into an image:
// it parses the Dockerfile with BuildKit's frontend packages, plans the
// stages the target needs, runs each step (through the executor, on
// snapshots of the local layer store) and hands the finished image to its
// outputs. Build is the public Go API; cmd/rbuild is a thin shell around it.
package builder

import (
	"io"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/output"
	"github.com/rbuild/rbuild/snapshot"
)

// Options describe one build.
type Options struct {
	// ContextDir is the build context directory.
	ContextDir string
	// Dockerfile is the Dockerfile's path; empty means ContextDir/Dockerfile.
	// DockerfileContent, when set, is used instead of reading a file
	// (`-f -`); Dockerfile then only names it in messages.
	Dockerfile        string
	DockerfileContent []byte
	// BuildArgs are --build-arg values.
	BuildArgs map[string]string
	// Target is the stage to build; empty means the last.
	Target string
	// Labels are added to the image config (--label).
	Labels map[string]string
	// Platform is the target platform ("linux/amd64"); empty means the
	// host's.
	Platform string
	// NoCache disables cache lookups (local and shared); exports still
	// happen.
	NoCache bool
	// NoCacheFilter lists stages that run without cache lookups.
	NoCacheFilter []string
	// CacheFrom are shared caches to import (--cache-from), probed once,
	// concurrently, at the start of the build.
	CacheFrom []cache.Store
	// CacheTo are shared caches to export to (--cache-to).
	CacheTo []CacheExport
	// Pull always resolves base images from their registry, even when the
	// local store has them.
	Pull bool
	// Network for RUN steps: "host" (default) or "none".
	Network string
	// Isolation of RUN steps: "userns" (default) or "chroot" (root without
	// namespace or mount privileges; forces the vfs layer store).
	Isolation string
	// Root is rbuild's state directory.
	Root string
	// Driver forces the storage driver ("overlay", "vfs").
	Driver string
	// Compression of new layers.
	Compression snapshot.Compression
	// InsecureRegistries are reached over plain HTTP.
	InsecureRegistries []string
	// Keychain supplies registry credentials; nil means Docker's config.
	Keychain authn.Keychain
	// SourceDateEpoch (seconds, as the SOURCE_DATE_EPOCH variable) makes
	// the build reproducible: image and history times are set to it and
	// newer file mtimes in new layers are clamped to it. A --build-arg
	// SOURCE_DATE_EPOCH wins over it.
	SourceDateEpoch string
	// Reproducible clamps to the Unix epoch when no SOURCE_DATE_EPOCH is
	// given.
	Reproducible bool
	// Secrets are available to RUN --mount=type=secret.
	Secrets []Secret
	// Outputs receive the finished image.
	Outputs []output.Output
	// Progress receives the build log; nil discards it.
	Progress io.Writer
	// ProgressTTY draws running RUN steps live, redrawn in place, instead
	// of logging their output (Progress is a terminal, ProgressWidth
	// columns wide).
	ProgressTTY   bool
	ProgressWidth int
	// Warnings receives warnings; nil writes them to Progress.
	Warnings io.Writer
}

// CacheExport is one --cache-to destination.
type CacheExport struct {
	Store cache.Store
	// Mode "min" exports the steps of the target stage (and the stages it
	// is built FROM); "max" the steps of every stage built.
	Mode string
}

// Result describes the built image.
type Result struct {
	// Image is the built image.
	Image v1.Image
	// ImageID is the config digest (what `docker images` calls the ID).
	ImageID v1.Hash
	// Digest is the manifest digest.
	Digest v1.Hash
}
