package output

import (
	"archive/tar"
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/rbuild/rbuild/registry"
)

const (
	annRefName  = "org.opencontainers.image.ref.name"
	annImageNme = "io.containerd.image.name"
)

// Every destination is an Output.
var (
	_ Output = (*Registry)(nil)
	_ Output = (*OCILayout)(nil)
	_ Output = (*DockerArchive)(nil)
)

// testImage is a random linux/amd64 OCI image (OCI media types, as rbuild
// builds by default) with two gzip layers.
func testImage(t *testing.T) v1.Image {
	t.Helper()
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	for range 2 {
		l, err := random.Layer(512, types.OCILayer)
		if err != nil {
			t.Fatal(err)
		}
		if img, err = mutate.AppendLayers(img, l); err != nil {
			t.Fatal(err)
		}
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Config.Cmd = []string{"/app"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func diffIDs(t *testing.T, img v1.Image) []v1.Hash {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf.RootFS.DiffIDs
}

// checkLayers reads every layer of img fully and checks it against its
// diffID, so that a layout or archive with a broken blob fails.
func checkLayers(t *testing.T, img v1.Image) {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for i, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatalf("layer %d: %v", i, err)
		}
		_, err = io.Copy(io.Discard, rc)
		rc.Close()
		if err != nil {
			t.Errorf("reading layer %d: %v", i, err)
		}
	}
	if err := func() error { _, err := img.RawConfigFile(); return err }(); err != nil {
		t.Errorf("config: %v", err)
	}
}

// indexEntries returns the manifests of a layout's index.json.
func indexEntries(t *testing.T, dir string) []v1.Descriptor {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatalf("%s is not an OCI layout: %v", dir, err)
	}
	idx, err := p.ImageIndex()
	if err != nil {
		t.Fatal(err)
	}
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	return m.Manifests
}

func entryFor(t *testing.T, entries []v1.Descriptor, imageName string) v1.Descriptor {
	t.Helper()
	var found []v1.Descriptor
	for _, d := range entries {
		if d.Annotations[annImageNme] == imageName {
			found = append(found, d)
		}
	}
	if len(found) != 1 {
		t.Fatalf("want one index entry named %s, found %d in %+v", imageName, len(found), entries)
	}
	return found[0]
}

// layoutImage reads the image an index entry points to and checks it.
func layoutImage(t *testing.T, dir string, d v1.Descriptor) v1.Image {
	t.Helper()
	p, err := layout.FromPath(dir)
	if err != nil {
		t.Fatal(err)
	}
	img, err := p.Image(d.Digest)
	if err != nil {
		t.Fatalf("image %s from the layout: %v", d.Digest, err)
	}
	checkLayers(t, img)
	return img
}

// noTemporaries checks that a directory holds none of the hidden
// temporary files and directories the outputs write through.
func noTemporaries(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("temporary %s left in %s", e.Name(), dir)
		}
	}
}

func TestOCILayoutDir(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "layout")
	img := testImage(t)
	o := &OCILayout{Dest: dir, Tags: []string{"app:1.0", "registry.example.com/team/app:2"}}
	if o.String() != "oci:"+dir {
		t.Errorf("String() = %q", o.String())
	}
	if err := o.Write(ctx, img); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
		t.Errorf("no oci-layout file: %v", err)
	}
	entries := indexEntries(t, dir)
	if len(entries) != 2 {
		t.Fatalf("index has %d entries, want 2: %+v", len(entries), entries)
	}
	for _, c := range []struct{ imageName, refName string }{
		{"docker.io/library/app:1.0", "1.0"},
		{"registry.example.com/team/app:2", "2"},
	} {
		d := entryFor(t, entries, c.imageName)
		if d.Annotations[annRefName] != c.refName {
			t.Errorf("%s: %s = %q, want %q", c.imageName, annRefName, d.Annotations[annRefName], c.refName)
		}
		if d.Digest != digest(t, img) {
			t.Errorf("%s: digest %s, want %s", c.imageName, d.Digest, digest(t, img))
		}
		got := layoutImage(t, dir, d)
		if digest(t, got) != digest(t, img) {
			t.Errorf("image read back has digest %s", digest(t, got))
		}
	}

	// The same tag again, another image: the entry is replaced, the
	// other tag stays.
	img2 := testImage(t)
	if err := (&OCILayout{Dest: dir, Tags: []string{"app:1.0"}}).Write(ctx, img2); err != nil {
		t.Fatalf("second Write: %v", err)
	}
	entries = indexEntries(t, dir)
	if len(entries) != 2 {
		t.Fatalf("after rewriting a tag the index has %d entries, want 2: %+v", len(entries), entries)
	}
	if d := entryFor(t, entries, "docker.io/library/app:1.0"); d.Digest != digest(t, img2) {
		t.Errorf("app:1.0 points at %s, want the new image %s", d.Digest, digest(t, img2))
	} else {
		layoutImage(t, dir, d)
	}
	if d := entryFor(t, entries, "registry.example.com/team/app:2"); d.Digest != digest(t, img) {
		t.Errorf("the other tag changed: %s", d.Digest)
	}
	// The same image and tag a third time changes nothing.
	if err := (&OCILayout{Dest: dir, Tags: []string{"app:1.0"}}).Write(ctx, img2); err != nil {
		t.Fatal(err)
	}
	if n := len(indexEntries(t, dir)); n != 2 {
		t.Errorf("rewriting the same image and tag: %d entries", n)
	}

	skopeoInspect(t, "oci:"+dir+":2", img)
	skopeoInspect(t, "oci:"+dir+":1.0", img2)
}

func TestOCILayoutUntagged(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	img := testImage(t)
	if err := (&OCILayout{Dest: dir}).Write(context.Background(), img); err != nil {
		t.Fatal(err)
	}
	entries := indexEntries(t, dir)
	if len(entries) != 1 || entries[0].Digest != digest(t, img) {
		t.Fatalf("index %+v, want the one image", entries)
	}
	if len(entries[0].Annotations) != 0 {
		t.Errorf("untagged image has annotations %v", entries[0].Annotations)
	}
	layoutImage(t, dir, entries[0])
}

func TestOCILayoutBadTag(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "layout")
	err := (&OCILayout{Dest: dir, Tags: []string{"Not A Tag"}}).Write(context.Background(), testImage(t))
	if err == nil || !strings.Contains(err.Error(), "Not A Tag") {
		t.Errorf("bad tag: %v, want an error naming it", err)
	}
}

// untar extracts a tar of regular files and directories.
func untar(t *testing.T, file, dir string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var names []string
	tr := tar.NewReader(f)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names
		}
		if err != nil {
			t.Fatalf("reading %s: %v", file, err)
		}
		names = append(names, h.Name)
		if strings.Contains(h.Name, "..") || filepath.IsAbs(h.Name) {
			t.Fatalf("unsafe name %q in %s", h.Name, file)
		}
		if h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: owner %d:%d %q/%q, want 0:0 without names", h.Name, h.Uid, h.Gid, h.Uname, h.Gname)
		}
		p := filepath.Join(dir, h.Name)
		switch h.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
		default:
			t.Errorf("%s: unexpected type %c in a layout tar", h.Name, h.Typeflag)
		}
	}
}

func TestOCILayoutTar(t *testing.T) {
	ctx := context.Background()
	parent := t.TempDir()
	dest := filepath.Join(parent, "image.tar")
	img := testImage(t)
	o := &OCILayout{Dest: dest, Tags: []string{"example.com/app:v1"}}
	if err := o.Write(ctx, img); err != nil {
		t.Fatalf("Write: %v", err)
	}
	if fi, err := os.Stat(dest); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("%s is not a file: %v", dest, err)
	}
	noTemporaries(t, parent)

	dir := t.TempDir()
	names := untar(t, dest, dir)
	for _, want := range []string{"oci-layout", "index.json", "blobs/", "blobs/sha256/", "blobs/sha256/" + digest(t, img).Hex} {
		if !slices.Contains(names, want) {
			t.Errorf("tar lacks %s: %v", want, names)
		}
	}
	entries := indexEntries(t, dir)
	if len(entries) != 1 {
		t.Fatalf("index has %d entries", len(entries))
	}
	d := entryFor(t, entries, "example.com/app:v1")
	if d.Annotations[annRefName] != "v1" {
		t.Errorf("%s = %q", annRefName, d.Annotations[annRefName])
	}
	if got := layoutImage(t, dir, d); digest(t, got) != digest(t, img) {
		t.Errorf("digest %s, want %s", digest(t, got), digest(t, img))
	}
	skopeoInspect(t, "oci-archive:"+dest+":v1", img)

	// Writing the tar again replaces it with a whole new layout.
	img2 := testImage(t)
	if err := o.Write(ctx, img2); err != nil {
		t.Fatal(err)
	}
	dir2 := t.TempDir()
	untar(t, dest, dir2)
	d2 := entryFor(t, indexEntries(t, dir2), "example.com/app:v1")
	if d2.Digest != digest(t, img2) {
		t.Errorf("rewritten tar holds %s, want %s", d2.Digest, digest(t, img2))
	}
	noTemporaries(t, parent)
}

func TestOCILayoutTarMissingDir(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "no", "such", "dir", "image.tar")
	if err := (&OCILayout{Dest: dest}).Write(context.Background(), testImage(t)); err == nil {
		t.Error("writing a tar into a missing directory succeeded")
	}
}

func TestDockerArchive(t *testing.T) {
	ctx := context.Background()
	parent := t.TempDir()
	dest := filepath.Join(parent, "image.tar")
	img := testImage(t)
	d := &DockerArchive{Dest: dest, Tags: []string{"app:1.0", "registry.example.com/team/app:2"}}
	if d.String() != "docker-archive:"+dest {
		t.Errorf("String() = %q", d.String())
	}
	if err := d.Write(ctx, img); err != nil {
		t.Fatalf("Write: %v", err)
	}
	noTemporaries(t, parent)

	m, err := tarball.LoadManifest(func() (io.ReadCloser, error) { return os.Open(dest) })
	if err != nil {
		t.Fatalf("reading manifest.json: %v", err)
	}
	if len(m) != 1 {
		t.Fatalf("manifest.json has %d images, want 1", len(m))
	}
	tags := slices.Clone(m[0].RepoTags)
	slices.Sort(tags)
	if !slices.Equal(tags, []string{"app:1.0", "registry.example.com/team/app:2"}) &&
		!slices.Equal(tags, []string{"index.docker.io/library/app:1.0", "registry.example.com/team/app:2"}) {
		t.Errorf("RepoTags %v", tags)
	}

	for _, tag := range []string{"app:1.0", "registry.example.com/team/app:2"} {
		tg, err := name.NewTag(tag)
		if err != nil {
			t.Fatal(err)
		}
		got, err := tarball.ImageFromPath(dest, &tg)
		if err != nil {
			t.Fatalf("ImageFromPath(%s): %v", tag, err)
		}
		gotCfg, _ := got.ConfigName()
		wantCfg, _ := img.ConfigName()
		if gotCfg != wantCfg {
			t.Errorf("%s: config %s, want %s", tag, gotCfg, wantCfg)
		}
		if !slices.Equal(diffIDs(t, got), diffIDs(t, img)) {
			t.Errorf("%s: diffIDs %v, want %v", tag, diffIDs(t, got), diffIDs(t, img))
		}
		checkLayers(t, got)
	}
	skopeoInspect(t, "docker-archive:"+dest, img)
}

func TestDockerArchiveUntagged(t *testing.T) {
	dest := filepath.Join(t.TempDir(), "image.tar")
	img := testImage(t)
	if err := (&DockerArchive{Dest: dest}).Write(context.Background(), img); err != nil {
		t.Fatalf("Write: %v", err)
	}
	got, err := tarball.ImageFromPath(dest, nil)
	if err != nil {
		t.Fatalf("ImageFromPath: %v", err)
	}
	if !slices.Equal(diffIDs(t, got), diffIDs(t, img)) {
		t.Errorf("diffIDs differ")
	}
	checkLayers(t, got)
}

func TestDockerArchiveErrors(t *testing.T) {
	parent := t.TempDir()
	dest := filepath.Join(parent, "image.tar")
	// A digest is not a tag.
	err := (&DockerArchive{Dest: dest, Tags: []string{"app@sha256:" + strings.Repeat("a", 64)}}).Write(context.Background(), testImage(t))
	if err == nil {
		t.Error("a digest reference as a docker-archive tag succeeded")
	}
	if _, err := os.Stat(dest); !os.IsNotExist(err) {
		t.Errorf("a failed write left %s", dest)
	}
	noTemporaries(t, parent)
	if err := (&DockerArchive{Dest: filepath.Join(parent, "missing", "x.tar")}).Write(context.Background(), testImage(t)); err == nil {
		t.Error("writing into a missing directory succeeded")
	}
}

func TestRegistryOutput(t *testing.T) {
	srv := httptest.NewServer(ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0))))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	c := registry.New(registry.Options{})
	ref, err := c.ParseReference(host + "/built/app:latest")
	if err != nil {
		t.Fatal(err)
	}
	o := &Registry{Client: c, Ref: ref}
	if o.String() != ref.String() {
		t.Errorf("String() = %q", o.String())
	}
	img := testImage(t)
	if err := o.Write(context.Background(), img); err != nil {
		t.Fatalf("Write: %v", err)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("pulling the pushed image: %v", err)
	}
	if digest(t, got) != digest(t, img) {
		t.Errorf("digest %s, want %s", digest(t, got), digest(t, img))
	}
	checkLayers(t, got)

	// A failure names the destination.
	bad, _ := c.ParseReference("127.0.0.1:1/app:latest")
	if err := (&Registry{Client: c, Ref: bad}).Write(context.Background(), img); err == nil || !strings.Contains(err.Error(), "127.0.0.1:1/app") {
		t.Errorf("push to a closed port: %v", err)
	}
}

// skopeoInspect checks a written image with skopeo, an independent
// reader, when it is installed (Debian's skopeo on the CI image); the
// tests check everything with go-containerregistry regardless.
func skopeoInspect(t *testing.T, ref string, img v1.Image) {
	t.Helper()
	skopeo, err := exec.LookPath("skopeo")
	if err != nil {
		t.Logf("skopeo not installed: not checking %s with it", ref)
		return
	}
	out, err := exec.Command(skopeo, "inspect", "--config", ref).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Errorf("skopeo inspect --config %s: %v: %s", ref, err, msg)
		return
	}
	var cfg v1.ConfigFile
	if err := json.Unmarshal(out, &cfg); err != nil {
		t.Fatalf("skopeo's config output: %v", err)
	}
	if !slices.Equal(cfg.RootFS.DiffIDs, diffIDs(t, img)) || cfg.Architecture != "amd64" || cfg.OS != "linux" {
		t.Errorf("skopeo reads %s as %s/%s with diffIDs %v, want linux/amd64 with %v",
			ref, cfg.OS, cfg.Architecture, cfg.RootFS.DiffIDs, diffIDs(t, img))
	}
	if !slices.Equal(cfg.Config.Cmd, []string{"/app"}) {
		t.Errorf("skopeo reads %s with Cmd %v", ref, cfg.Config.Cmd)
	}
}
