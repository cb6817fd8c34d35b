package snapshot

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// Blob store tests: plain files, no root needed.

func newBlobs(t *testing.T) *Blobs {
	t.Helper()
	b, err := NewBlobs(filepath.Join(t.TempDir(), "blobs"))
	must(t, err)
	return b
}

// dirFiles lists every file under dir.
func dirFiles(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	must(t, filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && !fi.IsDir() {
			out = append(out, strings.TrimPrefix(p, dir+"/"))
		}
		return err
	}))
	return out
}

func TestBlobsPut(t *testing.T) {
	b := newBlobs(t)
	data := []byte("some blob")
	d := sha(data)
	n, err := b.Put(d, bytes.NewReader(data))
	if err != nil || n != int64(len(data)) {
		t.Fatalf("Put: %d, %v", n, err)
	}
	if !b.Has(d) {
		t.Fatal("Has is false after Put")
	}
	if want := filepath.Join(b.dir, "sha256", d.Hex); b.Path(d) != want {
		t.Errorf("Path = %s, want %s", b.Path(d), want)
	}
	rc, err := b.Open(d)
	must(t, err)
	got, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("Open: %q, %v", got, err)
	}
	// Putting it again is fine.
	if _, err := b.Put(d, bytes.NewReader(data)); err != nil {
		t.Errorf("second Put: %v", err)
	}
	if files := dirFiles(t, b.dir); len(files) != 1 {
		t.Errorf("blob store holds %v, want just the blob", files)
	}
}

func TestBlobsPutMismatch(t *testing.T) {
	b := newBlobs(t)
	want := sha([]byte("expected"))
	_, err := b.Put(want, strings.NewReader("something else"))
	if err == nil || !strings.Contains(err.Error(), "mismatch") {
		t.Fatalf("Put with the wrong digest: %v, want a digest mismatch", err)
	}
	if b.Has(want) {
		t.Error("a mismatched blob was stored under the wanted digest")
	}
	if b.Has(sha([]byte("something else"))) {
		t.Error("a mismatched blob was stored under its own digest")
	}
	if files := dirFiles(t, b.dir); len(files) != 0 {
		t.Errorf("a failed Put left files: %v", files)
	}
	// A reader that fails half-way stores nothing either.
	_, err = b.Put(want, io.MultiReader(strings.NewReader("exp"), errReader{}))
	if err == nil {
		t.Error("Put from a failing reader succeeded")
	}
	if files := dirFiles(t, b.dir); len(files) != 0 {
		t.Errorf("a failed Put left files: %v", files)
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestBlobsOpenMissing(t *testing.T) {
	b := newBlobs(t)
	d := sha([]byte("absent"))
	if b.Has(d) {
		t.Error("Has is true for a missing blob")
	}
	if _, err := b.Open(d); !os.IsNotExist(err) {
		t.Errorf("Open of a missing blob: %v, want not-exist", err)
	}
}

func TestLayerWriter(t *testing.T) {
	raw := makeTar(t, fileEntry("etc/motd", "hello"), dirEntry("var/"))
	for _, c := range []struct {
		comp Compression
		mt   types.MediaType
	}{
		{Compression{}, types.OCILayer},
		{Compression{Algorithm: "gzip", Level: 1}, types.OCILayer},
		{Compression{Algorithm: "zstd"}, types.OCILayerZStd},
		{Compression{Algorithm: "zstd", Level: 3}, types.OCILayerZStd},
	} {
		t.Run(c.comp.Algorithm, func(t *testing.T) {
			b := newBlobs(t)
			w, err := b.NewLayerWriter(c.comp)
			must(t, err)
			// Several writes, as io.Copy makes them.
			for chunk := range slices.Chunk(raw, 100) {
				if _, err := w.Write(chunk); err != nil {
					t.Fatal(err)
				}
			}
			l, err := w.Commit()
			must(t, err)
			if l.MediaType != c.mt {
				t.Errorf("media type %s, want %s", l.MediaType, c.mt)
			}
			if l.DiffID != sha(raw) {
				t.Errorf("diffID %s, want sha256 of the tar %s", l.DiffID, sha(raw))
			}
			blob, err := os.ReadFile(b.Path(l.Digest))
			must(t, err)
			if sha(blob) != l.Digest || int64(len(blob)) != l.Size {
				t.Errorf("blob: digest %s size %d, layer says %s %d", sha(blob), len(blob), l.Digest, l.Size)
			}
			if files := dirFiles(t, b.dir); len(files) != 1 {
				t.Errorf("blob store holds %v, want just the blob", files)
			}

			// The ggcr view of the stored layer.
			vl := b.V1(*l)
			if d, _ := vl.Digest(); d != l.Digest {
				t.Errorf("V1 digest %s", d)
			}
			if d, _ := vl.DiffID(); d != l.DiffID {
				t.Errorf("V1 diffID %s", d)
			}
			if s, _ := vl.Size(); s != l.Size {
				t.Errorf("V1 size %d", s)
			}
			if mt, _ := vl.MediaType(); mt != c.mt {
				t.Errorf("V1 media type %s", mt)
			}
			rc, err := vl.Compressed()
			must(t, err)
			comp, _ := io.ReadAll(rc)
			rc.Close()
			if !bytes.Equal(comp, blob) {
				t.Error("Compressed() is not the stored blob")
			}
			rc, err = vl.Uncompressed()
			must(t, err)
			un, err := io.ReadAll(rc)
			must(t, rc.Close())
			if err != nil || !bytes.Equal(un, raw) {
				t.Errorf("Uncompressed() differs from the tar written: %v", err)
			}
		})
	}
}

func TestLayerWriterAbortAndErrors(t *testing.T) {
	b := newBlobs(t)
	w, err := b.NewLayerWriter(Compression{})
	must(t, err)
	_, err = w.Write([]byte("partial"))
	must(t, err)
	w.Abort()
	if files := dirFiles(t, b.dir); len(files) != 0 {
		t.Errorf("Abort left files: %v", files)
	}
	if _, err := b.NewLayerWriter(Compression{Algorithm: "brotli"}); err == nil || !strings.Contains(err.Error(), "brotli") {
		t.Errorf("unknown algorithm: %v", err)
	}
	if files := dirFiles(t, b.dir); len(files) != 0 {
		t.Errorf("a refused writer left files: %v", files)
	}
}

// TestV1UncompressedLayer: a blob stored without compression (as some
// base images have) reads back as is.
func TestV1UncompressedLayer(t *testing.T) {
	b := newBlobs(t)
	raw := makeTar(t, fileEntry("f", "plain"))
	d := sha(raw)
	_, err := b.Put(d, bytes.NewReader(raw))
	must(t, err)
	for _, mt := range []types.MediaType{types.OCIUncompressedLayer, types.DockerUncompressedLayer} {
		rc, err := b.V1(Layer{Digest: d, DiffID: d, Size: int64(len(raw)), MediaType: mt}).Uncompressed()
		must(t, err)
		got, _ := io.ReadAll(rc)
		rc.Close()
		if !bytes.Equal(got, raw) {
			t.Errorf("%s: content differs", mt)
		}
	}
	// A missing blob is an error, not an empty layer.
	if _, err := b.V1(Layer{Digest: v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0", 64)}, MediaType: types.OCILayer}).Uncompressed(); err == nil {
		t.Error("Uncompressed of a missing blob succeeded")
	}
}

// Compressors are reused across layers (see compressors): a reused one
// must write what a new one writes, after a large layer, a small one and
// an aborted one alike.
func TestLayerWriterReuse(t *testing.T) {
	big := make([]byte, 3<<20) // several pgzip blocks
	for i := range big {
		big[i] = byte(i * 7 % 251)
	}
	small := makeTar(t, fileEntry("etc/motd", "hello"))
	for _, comp := range []Compression{{}, {Algorithm: "zstd"}} {
		t.Run(comp.Algorithm, func(t *testing.T) {
			b := newBlobs(t)
			write := func(data []byte) v1.Hash {
				w, err := b.NewLayerWriter(comp)
				must(t, err)
				_, err = w.Write(data)
				must(t, err)
				l, err := w.Commit()
				must(t, err)
				return l.Digest
			}
			// What a new compressor writes (the pool may hold some from
			// other tests already).
			fresh := func(data []byte) v1.Hash {
				var buf bytes.Buffer
				var c io.WriteCloser
				if comp.Algorithm == "zstd" {
					c = must1(zstd.NewWriter(&buf, zstd.WithEncoderLevel(zstd.SpeedDefault)))
				} else {
					c = must1(pgzip.NewWriterLevel(&buf, pgzip.DefaultCompression))
				}
				_, err := c.Write(data)
				must(t, err)
				must(t, c.Close())
				return sha(buf.Bytes())
			}
			first := map[string]v1.Hash{"big": fresh(big), "small": fresh(small)}
			for i := 0; i < 3; i++ {
				w, err := b.NewLayerWriter(comp)
				must(t, err)
				_, err = w.Write(big[:1<<20])
				must(t, err)
				w.Abort()
				if got := write(small); got != first["small"] {
					t.Fatalf("round %d: small layer %s, a new compressor writes %s", i, got, first["small"])
				}
				if got := write(big); got != first["big"] {
					t.Fatalf("round %d: big layer %s, a new compressor writes %s", i, got, first["big"])
				}
			}
		})
	}
}
