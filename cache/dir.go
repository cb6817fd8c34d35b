package cache

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Dir is a cache in a local directory, for CI systems that keep a
// directory between jobs: index.json and blobs/sha256/<hex>.
type Dir struct {
	Path string
}

func (d *Dir) String() string { return "local:" + d.Path }

func (d *Dir) blob(h v1.Hash) string { return filepath.Join(d.Path, "blobs", h.Algorithm, h.Hex) }

// Load reads index.json; a missing directory is an empty cache.
func (d *Dir) Load(context.Context) (*Index, error) {
	f, err := os.Open(filepath.Join(d.Path, "index.json"))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return NewIndex(), nil
		}
		return nil, err
	}
	defer f.Close()
	idx, err := decodeIndex(f, v1.Hash{}, d.String())
	if err != nil {
		return nil, err
	}
	for k, e := range idx.Entries {
		if !e.Empty {
			if _, err := os.Stat(d.blob(e.Digest)); err != nil {
				delete(idx.Entries, k)
			}
		}
	}
	return idx, nil
}

// Layer reads a blob from the directory.
func (d *Dir) Layer(e *Entry) (v1.Layer, error) {
	p := d.blob(e.Digest)
	return &describedLayer{e: e, open: func() (io.ReadCloser, error) { return os.Open(p) }}, nil
}

// Save copies the missing blobs and replaces index.json atomically.
func (d *Dir) Save(ctx context.Context, idx *Index, layer func(*Entry) (v1.Layer, error)) error {
	if err := os.MkdirAll(filepath.Join(d.Path, "blobs", "sha256"), 0o755); err != nil {
		return err
	}
	idx.Trim()
	for _, e := range distinctBlobs(idx) {
		if err := ctx.Err(); err != nil {
			return err
		}
		if _, err := os.Stat(d.blob(e.Digest)); err == nil {
			continue
		}
		l, err := layer(e)
		if err != nil {
			return err
		}
		if err := d.copyBlob(l, e.Digest); err != nil {
			return err
		}
	}
	return writeJSON(filepath.Join(d.Path, "index.json"), idx)
}

func (d *Dir) copyBlob(l v1.Layer, want v1.Hash) error {
	rc, err := l.Compressed()
	if err != nil {
		return err
	}
	defer rc.Close()
	tmp, err := os.CreateTemp(filepath.Join(d.Path, "blobs"), ".blob-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	got, _, err := v1.SHA256(io.TeeReader(rc, tmp))
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("blob %s: content has digest %s", want, got)
	}
	return os.Rename(tmp.Name(), d.blob(want))
}

func sortedKeys(idx *Index) []Key {
	keys := make([]Key, 0, len(idx.Entries))
	for k := range idx.Entries {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i] < keys[j] })
	return keys
}
