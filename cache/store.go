package cache

import (
	"context"
	"io"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Index is a set of cache entries shared between machines: keys and the
// layers the keyed steps produced, as content descriptors.
//
// A whole cache ref is one small index object, so a build probes all of its
// keys with one or two requests per ref, up front and concurrently, instead
// of one request per step: see docs/cache.md for the choice.
type Index struct {
	Version int            `json:"version"`
	Entries map[Key]*Entry `json:"entries"`
}

// NewIndex returns an empty index.
func NewIndex() *Index { return &Index{Version: indexVersion, Entries: map[Key]*Entry{}} }

const indexVersion = 1

// MaxEntries bounds an index; the oldest entries go first.
const MaxEntries = 4096

// Merge adds the entries of other that idx lacks or holds older versions
// of.
func (idx *Index) Merge(other *Index) {
	for k, e := range other.Entries {
		if old, ok := idx.Entries[k]; !ok || old.Created.Before(e.Created) {
			idx.Entries[k] = e
		}
	}
}

// Trim drops the oldest entries beyond MaxEntries.
func (idx *Index) Trim() {
	if len(idx.Entries) <= MaxEntries {
		return
	}
	keys := make([]Key, 0, len(idx.Entries))
	for k := range idx.Entries {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		return idx.Entries[keys[i]].Created.After(idx.Entries[keys[j]].Created)
	})
	for _, k := range keys[MaxEntries:] {
		delete(idx.Entries, k)
	}
}

// valid reports whether an entry read from outside can be trusted to be
// well-formed (its content is verified by digest when it is fetched).
func (e *Entry) valid() bool {
	if e == nil {
		return false
	}
	if e.Empty {
		return true
	}
	return e.Digest.Algorithm == "sha256" && len(e.Digest.Hex) == 64 &&
		e.DiffID.Algorithm == "sha256" && len(e.DiffID.Hex) == 64 && e.Size > 0 &&
		(e.MediaType == types.OCILayer || e.MediaType == types.OCILayerZStd || e.MediaType == types.DockerLayer || e.MediaType == types.OCIUncompressedLayer)
}

// Store is a shared cache: a registry repository or a local directory.
type Store interface {
	// String names the store in messages.
	String() string
	// Load reads the store's index. A store that does not exist yet
	// gives an empty index, not an error.
	Load(ctx context.Context) (*Index, error)
	// Layer returns the layer of a (non-empty) entry, read lazily from the
	// store.
	Layer(e *Entry) (v1.Layer, error)
	// Save writes idx, uploading the layers it references that the store
	// lacks; layer returns the local (or other) source of an entry's blob.
	Save(ctx context.Context, idx *Index, layer func(*Entry) (v1.Layer, error)) error
}

// describedLayer is a layer whose descriptor is known from the cache
// index, so assembling an image from it reads no byte of it.
type describedLayer struct {
	e     *Entry
	open  func() (io.ReadCloser, error)
	inner v1.Layer
}

func (d *describedLayer) Digest() (v1.Hash, error)            { return d.e.Digest, nil }
func (d *describedLayer) DiffID() (v1.Hash, error)            { return d.e.DiffID, nil }
func (d *describedLayer) Size() (int64, error)                { return d.e.Size, nil }
func (d *describedLayer) MediaType() (types.MediaType, error) { return d.e.MediaType, nil }
func (d *describedLayer) Compressed() (io.ReadCloser, error) {
	if d.open != nil {
		return d.open()
	}
	return d.inner.Compressed()
}
func (d *describedLayer) Uncompressed() (io.ReadCloser, error) {
	if d.inner != nil {
		return d.inner.Uncompressed()
	}
	// go-containerregistry detects the compression of the blob.
	l, err := partial.CompressedToLayer(compressedOnly{d})
	if err != nil {
		return nil, err
	}
	return l.Uncompressed()
}

// compressedOnly hides DiffID, so partial decompresses instead of
// trusting it.
type compressedOnly struct{ d *describedLayer }

func (c compressedOnly) Digest() (v1.Hash, error)            { return c.d.Digest() }
func (c compressedOnly) Compressed() (io.ReadCloser, error)  { return c.d.Compressed() }
func (c compressedOnly) Size() (int64, error)                { return c.d.Size() }
func (c compressedOnly) MediaType() (types.MediaType, error) { return c.d.MediaType() }

// now is the clock of new entries (a variable for tests).
var now = func() time.Time { return time.Now().UTC() }
