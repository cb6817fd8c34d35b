package cache

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Entry is what a step produced: a layer (its blob's descriptor and
// diffID) or nothing (Empty) for a step that changed no file. In the local
// cache it also names the snapshot holding the layer's root filesystem;
// entries of a shared cache have none.
//
// The hashes are omitzero, not omitempty: omitempty never omits a struct,
// and a zero v1.Hash marshals as ":", which does not parse back, so every
// Empty entry would read as a miss.
type Entry struct {
	SnapshotID string          `json:"snapshot,omitempty"`
	Empty      bool            `json:"empty,omitempty"`
	DiffID     v1.Hash         `json:"diffID,omitzero"`
	Digest     v1.Hash         `json:"digest,omitzero"`
	Size       int64           `json:"size,omitempty"`
	MediaType  types.MediaType `json:"mediaType,omitempty"`
	// Created is when the entry was made; shared indexes drop the oldest
	// entries first.
	Created time.Time `json:"created,omitempty"`
}

// Local is the cache on this machine: one small JSON file per key.
type Local struct {
	dir string
}

// OpenLocal opens the local cache under dir.
func OpenLocal(dir string) (*Local, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating cache directory: %w", err)
	}
	return &Local{dir: dir}, nil
}

func (l *Local) path(k Key) string {
	return filepath.Join(l.dir, string(k)+".json")
}

// Get returns the entry under k, if any.
func (l *Local) Get(k Key) (*Entry, bool) {
	data, err := os.ReadFile(l.path(k))
	if err != nil {
		return nil, false
	}
	var e Entry
	if err := json.Unmarshal(data, &e); err != nil || e.SnapshotID == "" {
		return nil, false
	}
	return &e, true
}

// Put records e under k, atomically.
func (l *Local) Put(k Key, e *Entry) error {
	if e == nil {
		return errors.New("cache: nil entry")
	}
	return writeJSON(l.path(k), e)
}

// writeJSON writes v as JSON to path atomically: readers see the old file
// or the new one, never a part.
func writeJSON(path string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".tmp-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
