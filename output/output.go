// Package output delivers a finished image: to a registry, to an OCI image
// layout (a directory or a tar of one), to a docker-archive tar that
// `docker load` and `podman load` read, or to rbuild's local image store.
// Every destination is an Output, so a build treats them alike.
package output

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/rbuild/rbuild/registry"
)

// Output receives a built image.
type Output interface {
	// String names the destination in progress messages.
	String() string
	// Write delivers img.
	Write(ctx context.Context, img v1.Image) error
}

// Registry pushes to a registry reference.
type Registry struct {
	Client *registry.Client
	Ref    name.Reference
}

func (r *Registry) String() string { return r.Ref.String() }

// Write pushes img; the registry client skips blobs already present.
func (r *Registry) Write(ctx context.Context, img v1.Image) error {
	return r.Client.Write(ctx, r.Ref, img)
}

// OCILayout writes an OCI image layout directory, or a tar of one when
// Dest ends in ".tar". Tags become index annotations.
type OCILayout struct {
	Dest string
	Tags []string
}

func (o *OCILayout) String() string { return "oci:" + o.Dest }

// Write writes the layout. An existing layout directory gets the image
// added to its index.
func (o *OCILayout) Write(ctx context.Context, img v1.Image) error {
	if strings.HasSuffix(o.Dest, ".tar") {
		tmp, err := os.MkdirTemp(filepath.Dir(o.Dest), ".oci-")
		if err != nil {
			return fmt.Errorf("writing %s: %w", o.Dest, err)
		}
		defer os.RemoveAll(tmp)
		if err := writeLayout(tmp, img, o.Tags); err != nil {
			return fmt.Errorf("writing %s: %w", o.Dest, err)
		}
		return tarDir(tmp, o.Dest)
	}
	if err := writeLayout(o.Dest, img, o.Tags); err != nil {
		return fmt.Errorf("writing %s: %w", o.Dest, err)
	}
	return nil
}

func writeLayout(dir string, img v1.Image, tags []string) error {
	p, err := layout.FromPath(dir)
	if err != nil {
		if p, err = layout.Write(dir, empty.Index); err != nil {
			return err
		}
	}
	if len(tags) == 0 {
		return p.AppendImage(img)
	}
	for _, t := range tags {
		ref, err := name.ParseReference(t)
		if err != nil {
			return fmt.Errorf("tag %q: %w", t, err)
		}
		// ref.name carries the tag alone (as the image spec and umoci
		// expect); containerd's annotation carries the full name, which
		// is what rbuild itself matches on.
		ann := map[string]string{
			"org.opencontainers.image.ref.name": ref.Identifier(),
			"io.containerd.image.name":          registry.ImageName(ref),
		}
		if err := p.ReplaceImage(img, matchImageName(registry.ImageName(ref)), layout.WithAnnotations(ann)); err != nil {
			return err
		}
	}
	return nil
}

// matchImageName selects index entries of the same image name, so that a
// rebuild replaces the old entry instead of adding a second one.
func matchImageName(n string) func(v1.Descriptor) bool {
	return func(d v1.Descriptor) bool {
		return d.Annotations["io.containerd.image.name"] == n
	}
}

// DockerArchive writes a docker-archive tar (manifest.json + repositories),
// loadable by `docker load` and `podman load`.
type DockerArchive struct {
	Dest string
	Tags []string
}

func (d *DockerArchive) String() string { return "docker-archive:" + d.Dest }

// Write writes the archive atomically.
func (d *DockerArchive) Write(ctx context.Context, img v1.Image) error {
	refs := map[name.Reference]v1.Image{}
	for _, t := range d.Tags {
		ref, err := name.NewTag(t)
		if err != nil {
			return fmt.Errorf("docker archive tag %q: %w", t, err)
		}
		refs[ref] = img
	}
	tmp, err := os.CreateTemp(filepath.Dir(d.Dest), ".docker-archive-")
	if err != nil {
		return fmt.Errorf("writing %s: %w", d.Dest, err)
	}
	defer os.Remove(tmp.Name())
	if len(refs) == 0 {
		err = tarball.Write(nil, img, tmp)
	} else {
		err = tarball.MultiRefWrite(refs, tmp)
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", d.Dest, err)
	}
	return os.Rename(tmp.Name(), d.Dest)
}

// tarDir writes the files of dir into a tar at dest (atomically).
func tarDir(dir, dest string) error {
	tmp, err := os.CreateTemp(filepath.Dir(dest), ".oci-tar-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	tw := tar.NewWriter(tmp)
	err = filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || p == dir {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil {
			return err
		}
		info, err := e.Info()
		if err != nil {
			return err
		}
		hdr, err := tar.FileInfoHeader(info, "")
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "", ""
		if e.IsDir() {
			hdr.Name += "/"
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
	if err == nil {
		err = tw.Close()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", dest, err)
	}
	return os.Rename(tmp.Name(), dest)
}
