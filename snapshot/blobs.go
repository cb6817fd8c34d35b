package snapshot

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"io"
	"os"
	"path/filepath"
	"sync"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
	"github.com/klauspost/pgzip"
)

// Compression selects how new layers are compressed.
type Compression struct {
	// Algorithm is "gzip" (default) or "zstd".
	Algorithm string
	// Level is the algorithm's level; 0 means its default.
	Level int
}

// Blobs is a content-addressed directory of compressed layer blobs, kept so
// that outputs and pushes never need to recompress or re-download a layer.
type Blobs struct {
	dir string
}

// NewBlobs opens the blob directory, creating it when missing.
func NewBlobs(dir string) (*Blobs, error) {
	if err := os.MkdirAll(filepath.Join(dir, "sha256"), 0o755); err != nil {
		return nil, fmt.Errorf("creating blob store: %w", err)
	}
	return &Blobs{dir: dir}, nil
}

// Path is where the blob with digest d lives (it may not exist).
func (b *Blobs) Path(d v1.Hash) string {
	return filepath.Join(b.dir, d.Algorithm, d.Hex)
}

// Has reports whether the blob is stored.
func (b *Blobs) Has(d v1.Hash) bool {
	_, err := os.Stat(b.Path(d))
	return err == nil
}

// Open opens a stored blob.
func (b *Blobs) Open(d v1.Hash) (io.ReadCloser, error) {
	return os.Open(b.Path(d))
}

// Put stores a blob read from r, verifying it against want. It returns
// the stored size.
func (b *Blobs) Put(want v1.Hash, r io.Reader) (int64, error) {
	f, err := os.CreateTemp(b.dir, "put-")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), r)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return 0, err
	}
	got := v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", h.Sum(nil))}
	if got != want {
		return 0, fmt.Errorf("blob digest mismatch: got %s, want %s", got, want)
	}
	if err := os.Rename(f.Name(), b.Path(want)); err != nil {
		return 0, err
	}
	return n, nil
}

// LayerWriter compresses an uncompressed layer tar into the blob store,
// computing its diffID (of the tar) and digest (of the blob) in one pass.
type LayerWriter struct {
	blobs     *Blobs
	f         *os.File
	diffHash  hash.Hash
	blobHash  hash.Hash
	counter   *countingWriter
	comp      io.WriteCloser
	in        io.Writer
	mediaType types.MediaType
	release   func()
}

// compressors keeps closed compressors per algorithm and level for reuse:
// a new parallel gzip writer allocates and zeroes its block buffers and
// compressors (megabytes), most of the CPU time of committing a small
// layer; a zstd encoder is no cheaper.
var compressors sync.Map // "gzip/6" -> *sync.Pool of compressor

type compressor interface {
	io.WriteCloser
	Reset(io.Writer)
}

func getCompressor(key string, w io.Writer, create func() (compressor, error)) (compressor, func(), error) {
	p, _ := compressors.LoadOrStore(key, &sync.Pool{})
	pool := p.(*sync.Pool)
	c, ok := pool.Get().(compressor)
	if ok {
		c.Reset(w)
	} else {
		var err error
		if c, err = create(); err != nil {
			return nil, nil, err
		}
	}
	return c, func() { pool.Put(c) }, nil
}

// NewLayerWriter starts a new layer blob.
func (b *Blobs) NewLayerWriter(c Compression) (*LayerWriter, error) {
	f, err := os.CreateTemp(b.dir, "layer-")
	if err != nil {
		return nil, err
	}
	w := &LayerWriter{blobs: b, f: f, diffHash: sha256.New(), blobHash: sha256.New()}
	w.counter = &countingWriter{w: io.MultiWriter(f, w.blobHash)}
	switch c.Algorithm {
	case "", "gzip":
		level := c.Level
		if level == 0 {
			level = pgzip.DefaultCompression
		}
		w.comp, w.release, err = getCompressor(fmt.Sprintf("gzip/%d", level), w.counter, func() (compressor, error) {
			return pgzip.NewWriterLevel(w.counter, level)
		})
		if err != nil {
			w.Abort()
			return nil, err
		}
		w.mediaType = types.OCILayer
	case "zstd":
		level := zstd.SpeedDefault
		if c.Level != 0 {
			level = zstd.EncoderLevelFromZstd(c.Level)
		}
		w.comp, w.release, err = getCompressor(fmt.Sprintf("zstd/%d", level), w.counter, func() (compressor, error) {
			return zstd.NewWriter(w.counter, zstd.WithEncoderLevel(level))
		})
		if err != nil {
			w.Abort()
			return nil, err
		}
		w.mediaType = types.OCILayerZStd
	default:
		w.Abort()
		return nil, fmt.Errorf("unknown compression %q (want gzip or zstd)", c.Algorithm)
	}
	w.in = io.MultiWriter(w.comp, w.diffHash)
	return w, nil
}

// Write takes uncompressed tar bytes.
func (w *LayerWriter) Write(p []byte) (int, error) { return w.in.Write(p) }

// Commit finishes the blob and moves it to its content address.
func (w *LayerWriter) Commit() (*Layer, error) {
	err := w.comp.Close()
	if err == nil {
		w.release() // only a compressor that closed cleanly is reused
	}
	if cerr := w.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(w.f.Name())
		return nil, fmt.Errorf("writing layer blob: %w", err)
	}
	l := &Layer{
		DiffID:    v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", w.diffHash.Sum(nil))},
		Digest:    v1.Hash{Algorithm: "sha256", Hex: fmt.Sprintf("%x", w.blobHash.Sum(nil))},
		Size:      w.counter.n,
		MediaType: w.mediaType,
	}
	if err := os.Rename(w.f.Name(), w.blobs.Path(l.Digest)); err != nil {
		_ = os.Remove(w.f.Name())
		return nil, err
	}
	return l, nil
}

// Abort discards the blob.
func (w *LayerWriter) Abort() {
	if w.comp != nil {
		_ = w.comp.Close()
	}
	_ = w.f.Close()
	_ = os.Remove(w.f.Name())
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
