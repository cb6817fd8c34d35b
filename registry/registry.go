// Package registry talks to OCI registries: resolving and pulling base
// images (choosing the platform from an index), and pushing images. It wraps
// go-containerregistry with rbuild's rules for credentials (Docker's config
// and credential helpers) and plain-HTTP registries.
package registry

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Options configure a Client.
type Options struct {
	// Insecure lists registry hosts (host[:port]) reached over plain HTTP.
	// localhost and 127.0.0.1 always are.
	Insecure []string
	// Keychain finds credentials; nil means Docker's config.json and its
	// credential helpers.
	Keychain authn.Keychain
	// Jobs is the number of concurrent blob transfers; 0 picks a default.
	Jobs int
}

// Client resolves, pulls and pushes images.
type Client struct {
	insecure map[string]bool
	keychain authn.Keychain
	jobs     int
}

// New returns a Client.
func New(opts Options) *Client {
	c := &Client{insecure: map[string]bool{}, keychain: opts.Keychain, jobs: opts.Jobs}
	for _, h := range opts.Insecure {
		c.insecure[h] = true
	}
	if c.keychain == nil {
		c.keychain = authn.DefaultKeychain
	}
	if c.jobs == 0 {
		c.jobs = 8
	}
	return c
}

// ParseReference parses an image reference, applying the insecure list.
func (c *Client) ParseReference(s string) (name.Reference, error) {
	ref, err := name.ParseReference(s)
	if err != nil {
		return nil, err
	}
	if c.insecure[ref.Context().RegistryStr()] {
		ref, err = name.ParseReference(s, name.Insecure)
		if err != nil {
			return nil, err
		}
	}
	return ref, nil
}

// HasRegistryHost reports whether s names a registry host explicitly
// ("host.domain/x", "host:5000/x", "localhost/x") as opposed to a short
// name like "app" or "team/app", which stays local.
func HasRegistryHost(s string) bool {
	first, _, ok := strings.Cut(s, "/")
	if !ok {
		return false
	}
	return strings.ContainsAny(first, ".:") || first == "localhost"
}

// RemoteOptions are the options (credentials, concurrency) for
// go-containerregistry calls made elsewhere, such as the shared cache.
func (c *Client) RemoteOptions() []remote.Option {
	return []remote.Option{
		remote.WithAuthFromKeychain(c.keychain),
		remote.WithJobs(c.jobs),
		remote.WithUserAgent("rbuild"),
	}
}

func (c *Client) options(ctx context.Context) []remote.Option {
	return []remote.Option{
		remote.WithContext(ctx),
		remote.WithAuthFromKeychain(c.keychain),
		remote.WithJobs(c.jobs),
		remote.WithUserAgent("rbuild"),
	}
}

// Image resolves ref to one image for platform, choosing from an index
// when ref names one.
func (c *Client) Image(ctx context.Context, ref name.Reference, platform v1.Platform) (v1.Image, error) {
	desc, err := remote.Get(ref, append(c.options(ctx), remote.WithPlatform(platform))...)
	if err != nil {
		return nil, Explain(ref.String(), err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err != nil {
			return nil, Explain(ref.String(), err)
		}
		m, err := idx.IndexManifest()
		if err != nil {
			return nil, Explain(ref.String(), err)
		}
		var avail []string
		for _, d := range m.Manifests {
			if d.Platform == nil {
				continue
			}
			if satisfies(*d.Platform, platform) {
				img, err := idx.Image(d.Digest)
				if err != nil {
					return nil, Explain(ref.String(), err)
				}
				return img, nil
			}
			avail = append(avail, d.Platform.String())
		}
		return nil, fmt.Errorf("%s: no image for platform %s in the index (it has %s)", ref, platform.String(), strings.Join(avail, ", "))
	}
	img, err := desc.Image()
	if err != nil {
		return nil, Explain(ref.String(), err)
	}
	return img, nil
}

// satisfies reports whether an index entry's platform fits the wanted
// one. arm64 has one variant: an entry without it is v8, as containerd
// and Docker match it ("linux/arm64/v8" finds a plain "linux/arm64").
func satisfies(have, want v1.Platform) bool {
	if have.Architecture == "arm64" && have.Variant == "" {
		have.Variant = "v8"
	}
	return have.Satisfies(want)
}

// Write pushes img to ref, uploading only the blobs the registry lacks
// (and mounting them from other repositories of the same registry where it
// can).
func (c *Client) Write(ctx context.Context, ref name.Reference, img v1.Image) error {
	if err := remote.Write(ref, img, c.options(ctx)...); err != nil {
		return Explain(ref.String(), err)
	}
	return nil
}

// Explain turns registry errors into one line a user can act on.
func Explain(ref string, err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized, http.StatusForbidden:
			return fmt.Errorf("%s: access denied (check credentials in ~/.docker/config.json): %w", ref, oneLine(err))
		case http.StatusNotFound:
			return fmt.Errorf("%s: not found in the registry", ref)
		}
		for _, d := range terr.Errors {
			switch d.Code {
			case transport.ManifestUnknownErrorCode, transport.NameUnknownErrorCode:
				return fmt.Errorf("%s: not found in the registry", ref)
			case transport.UnauthorizedErrorCode, transport.DeniedErrorCode:
				return fmt.Errorf("%s: access denied (check credentials in ~/.docker/config.json): %w", ref, oneLine(err))
			}
		}
	}
	var nerr net.Error
	var operr *net.OpError
	if errors.As(err, &operr) || errors.As(err, &nerr) {
		return fmt.Errorf("%s: registry unreachable: %w", ref, oneLine(err))
	}
	return fmt.Errorf("%s: %w", ref, oneLine(err))
}

// oneLine flattens multi-line registry error bodies.
func oneLine(err error) error {
	s := err.Error()
	if !strings.ContainsAny(s, "\r\n") {
		return err
	}
	return errors.New(strings.Join(strings.Fields(s), " "))
}

// ImageName is the full name under which an image is stored locally, as
// containerd and Docker spell it: "docker.io/library/app:latest", not
// go-containerregistry's "index.docker.io/...".
func ImageName(ref name.Reference) string {
	n := ref.Name()
	if ref.Context().RegistryStr() == name.DefaultRegistry {
		n = "docker.io/" + strings.TrimPrefix(n, name.DefaultRegistry+"/")
	}
	return n
}
