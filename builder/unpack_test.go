package builder

import (
	"archive/tar"
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// pushLayerImage pushes a one-layer image built from tar entries.
func pushLayerImage(t *testing.T, ref string, entries []*tar.Header) {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range entries {
		data := []byte(nil)
		if h.Typeflag == tar.TypeReg {
			data = []byte("x")
			h.Size = 1
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write(data)
	}
	tw.Close()
	layer, err := tarball.LayerFromReader(bytes.NewReader(buf.Bytes()), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		t.Fatal(err)
	}
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
}

// A base layer whose entries point outside the root never writes there.
func TestBaseLayerCannotEscapeTheRoot(t *testing.T) {
	tb := newTestBuild(t)
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.MkdirAll(outside, 0o755); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(outside, "victim")
	if err := os.WriteFile(victim, []byte("untouched"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := map[string][]*tar.Header{
		"dotdot": {{Typeflag: tar.TypeReg, Name: "../../../../../../../../" + strings.TrimPrefix(outside, "/") + "/dotdot", Mode: 0o644}},
		"hardlink-out": {
			{Typeflag: tar.TypeLink, Name: "link", Linkname: "../../../../../../../../" + strings.TrimPrefix(victim, "/")},
		},
		"relative-symlink-out": {
			{Typeflag: tar.TypeSymlink, Name: "a/up", Linkname: "../../../etc", Mode: 0o777},
		},
		"symlink-then-write": {
			{Typeflag: tar.TypeSymlink, Name: "escape", Linkname: outside, Mode: 0o777},
			{Typeflag: tar.TypeReg, Name: "escape/through-link", Mode: 0o644},
		},
	}
	for n, entries := range cases {
		t.Run(n, func(t *testing.T) {
			ref := testRegistry + "/evil-" + n + ":latest"
			pushLayerImage(t, ref, entries)
			tb.root = t.TempDir()
			_, err := tb.build("FROM "+ref+"\nRUN true\n", nil)
			if err == nil || !strings.Contains(err.Error(), "outside the root") {
				t.Errorf("build error %v, want the layer refused as reaching outside the root", err)
			}
			got, _ := os.ReadFile(victim)
			if string(got) != "untouched" {
				t.Errorf("the layer changed a file outside the root: %q", got)
			}
			for _, p := range []string{"dotdot", "through-link"} {
				if _, err := os.Lstat(filepath.Join(outside, p)); err == nil {
					t.Errorf("the layer wrote %s outside the root", p)
				}
			}
		})
	}
}
