package snapshot

import (
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// V1 presents a stored layer blob as a go-containerregistry layer, read
// lazily from the blob store.
func (b *Blobs) V1(l Layer) v1.Layer { return &blobLayer{blobs: b, l: l} }

type blobLayer struct {
	blobs *Blobs
	l     Layer
}

func (b *blobLayer) Digest() (v1.Hash, error)            { return b.l.Digest, nil }
func (b *blobLayer) DiffID() (v1.Hash, error)            { return b.l.DiffID, nil }
func (b *blobLayer) Size() (int64, error)                { return b.l.Size, nil }
func (b *blobLayer) MediaType() (types.MediaType, error) { return b.l.MediaType, nil }
func (b *blobLayer) Compressed() (io.ReadCloser, error)  { return b.blobs.Open(b.l.Digest) }

func (b *blobLayer) Uncompressed() (io.ReadCloser, error) {
	rc, err := b.blobs.Open(b.l.Digest)
	if err != nil {
		return nil, err
	}
	switch b.l.MediaType {
	case types.OCILayerZStd:
		zr, err := zstd.NewReader(rc)
		if err != nil {
			rc.Close()
			return nil, err
		}
		return &readCloser{Reader: zr, close: func() error { zr.Close(); return rc.Close() }}, nil
	case types.OCIUncompressedLayer, types.DockerUncompressedLayer:
		return rc, nil
	default:
		gz, err := pgzip.NewReader(rc)
		if err != nil {
			rc.Close()
			return nil, err
		}
		return &readCloser{Reader: gz, close: func() error { gz.Close(); return rc.Close() }}, nil
	}
}

type readCloser struct {
	io.Reader
	close func() error
}

func (r *readCloser) Close() error { return r.close() }
