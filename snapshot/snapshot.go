// Package snapshot owns the root filesystems a build works on and turns what
// a step changed into a layer.
//
// Terms, once:
//
//   - A snapshot is a writable root filesystem stacked on a parent (a
//     committed layer, or nothing for FROM scratch). Prepare creates and mounts
//     one; the executor changes files under its Path.
//   - Commit ends a snapshot: it unmounts it and exports what changed since
//     the parent as a layer blob (a tar diff with OCI whiteouts, compressed)
//     into the blob store. The snapshot's ID stays valid as the parent of the
//     next step, so a stage is a chain of snapshots.
//   - Remove throws a snapshot away (a failed step).
//
// A typical RUN step:
//
//	s, _ := store.Prepare(parentID)    // overlay mount, upper dir empty
//	executor.Run(ctx, RunSpec{Rootfs: s.Path, ...})
//	layer, _ := store.Commit(ctx, s)   // diff = the upper dir only
//	next, _ := store.Prepare(layer.ID)
//
// The store underneath is go.podman.io/storage: overlay where it can mount
// (the diff is read from the upper directory, so a commit costs what the
// step changed), vfs otherwise.
package snapshot

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"go.podman.io/storage"
	"go.podman.io/storage/pkg/archive"
	storagetypes "go.podman.io/storage/types"
)

// Options configure a Store.
type Options struct {
	// Root is rbuild's state directory; the layer store, blobs and runtime
	// state live below it.
	Root string
	// Driver forces a storage driver ("overlay" or "vfs"); empty tries
	// overlay, then vfs.
	Driver string
	// Compression of new layers.
	Compression Compression
	// Epoch, when set, clamps the mtimes of new layers' entries to it
	// (SOURCE_DATE_EPOCH): entries newer than it get it.
	Epoch *time.Time
}

// Store is the local layer store plus the blob store of compressed layers.
type Store struct {
	store       storage.Store
	root        string
	runRoot     string
	driver      string
	compression Compression
	epoch       *time.Time
	Blobs       *Blobs

	mu sync.Mutex
}

// Snapshot is a mounted, writable root filesystem.
type Snapshot struct {
	// ID is the storage layer id; after Commit it is the ID of the layer.
	ID string
	// Parent is the ID of the layer below, "" for scratch.
	Parent string
	// Path is where the root filesystem is mounted.
	Path string
}

// Layer is a committed snapshot and its exported blob.
type Layer struct {
	// ID is the storage layer id: the parent for the next snapshot.
	ID string
	// Empty is true when the step changed nothing: no blob was written and
	// the image gets no layer for it (history entry with empty_layer).
	Empty     bool
	DiffID    v1.Hash
	Digest    v1.Hash
	Size      int64
	MediaType types.MediaType
}

// Open opens (creating when needed) the store under opts.Root.
func Open(opts Options) (*Store, error) {
	if opts.Root == "" {
		return nil, errors.New("snapshot: no state directory")
	}
	drivers := []string{"overlay", "vfs"}
	if opts.Driver != "" {
		drivers = []string{opts.Driver}
	}
	runRoot := runRootFor(opts.Root)
	var errs []error
	for _, d := range drivers {
		so := storagetypes.StoreOptions{
			RunRoot:         runRoot,
			GraphRoot:       filepath.Join(opts.Root, "storage"),
			GraphDriverName: d,
		}
		if d == "overlay" {
			mountopt := "nodev"
			if volatileOverlay() {
				mountopt += ",volatile"
			}
			so.GraphDriverOptions = []string{"overlay.mountopt=" + mountopt}
		}
		if singleIDMapping() {
			// Rootless without an /etc/subuid range: only our own uid
			// exists here, so files of other owners (a base image's
			// /home/app) cannot be created with their owner; keep them
			// as ours instead of failing with EINVAL.
			so.GraphDriverOptions = append(so.GraphDriverOptions, d+".ignore_chown_errors=true")
		}
		st, err := storage.GetStore(so)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", d, err))
			continue
		}
		blobs, err := NewBlobs(BlobDir(opts.Root))
		if err != nil {
			_, _ = st.Shutdown(false)
			return nil, err
		}
		return &Store{store: st, root: opts.Root, runRoot: runRoot, driver: d, compression: opts.Compression, epoch: opts.Epoch, Blobs: blobs}, nil
	}
	return nil, fmt.Errorf("opening layer store in %s: %w", opts.Root, errors.Join(errs...))
}

// BlobDir is where the blob store lives under a state directory: the blobs
// directory of the local image store's OCI layout, so that images stored
// locally share their layer blobs with the build instead of copying them.
func BlobDir(root string) string {
	return filepath.Join(ImageDir(root), "blobs")
}

// ImageDir is the local image store: an OCI image layout.
func ImageDir(root string) string {
	return filepath.Join(root, "images")
}

// Driver names the storage driver in use.
func (s *Store) Driver() string { return s.driver }

// Close releases the store's mounts and locks.
func (s *Store) Close() error {
	_, err := s.store.Shutdown(false)
	return err
}

// Prepare creates a writable snapshot on top of parent ("" for scratch) and
// mounts it.
func (s *Store) Prepare(parent string) (*Snapshot, error) {
	// Volatile: storage keeps the record of the layer without an fsync
	// (see volatileOverlay for why nothing in a step's path syncs).
	l, err := s.store.CreateLayer("", parent, nil, "", true, &storage.LayerOptions{Volatile: true})
	if err != nil {
		return nil, fmt.Errorf("creating snapshot on %q: %w", short(parent), err)
	}
	path, err := s.store.Mount(l.ID, "")
	if err != nil {
		_ = s.store.DeleteLayer(l.ID)
		return nil, fmt.Errorf("mounting snapshot: %w", err)
	}
	return &Snapshot{ID: l.ID, Parent: parent, Path: path}, nil
}

// Mount mounts a committed layer to read from it (COPY --from) and returns
// its path and a function that releases the mount.
func (s *Store) Mount(id string) (string, func(), error) {
	if id == "" {
		// scratch: an empty directory.
		dir, err := os.MkdirTemp(s.root, "scratch-")
		if err != nil {
			return "", nil, err
		}
		return dir, func() { _ = os.RemoveAll(dir) }, nil
	}
	path, err := s.store.Mount(id, "")
	if err != nil {
		return "", nil, fmt.Errorf("mounting layer %s: %w", short(id), err)
	}
	return path, func() { _, _ = s.store.Unmount(id, false) }, nil
}

// Commit unmounts the snapshot and exports its diff against the parent as
// a compressed layer blob.
func (s *Store) Commit(ctx context.Context, snap *Snapshot) (*Layer, error) {
	if _, err := s.store.Unmount(snap.ID, true); err != nil {
		return nil, fmt.Errorf("unmounting snapshot: %w", err)
	}
	w, err := s.Blobs.NewLayerWriter(s.compression)
	if err != nil {
		return nil, err
	}
	entries, err := s.export(ctx, snap, w)
	if err != nil {
		w.Abort()
		return nil, err
	}
	if entries == 0 {
		w.Abort()
		return &Layer{ID: snap.ID, Empty: true}, nil
	}
	info, err := w.Commit()
	if err != nil {
		return nil, err
	}
	info.ID = snap.ID
	return info, nil
}

// export writes the snapshot's diff against its parent to w as a
// normalized, uncompressed layer tar and returns the number of entries.
func (s *Store) export(ctx context.Context, snap *Snapshot, w io.Writer) (int, error) {
	lower, release, err := s.lower(snap.Parent)
	if err != nil {
		return 0, err
	}
	defer release()
	rc, err := s.store.Diff(snap.Parent, snap.ID, &storage.DiffOptions{Compression: ptr(archive.Uncompressed)})
	if err != nil {
		return 0, fmt.Errorf("reading snapshot diff: %w", err)
	}
	defer rc.Close()
	entries, err := normalize(ctx, rc, w, lower, s.epoch)
	if err != nil {
		return entries, fmt.Errorf("exporting layer: %w", err)
	}
	return entries, nil
}

// lower returns a function that stats a path in the layer parent (the
// lower file system of a snapshot on it), for normalize.
//
// With overlay, the paths are looked up in the layer directories
// themselves, the way overlay merges them (see overlayLower): mounting the
// parent for that cost a mount and an unmount, and two writes of storage's
// mount counts, per commit, a third of a small commit's time.
func (s *Store) lower(parent string) (func(string) (os.FileInfo, bool), func(), error) {
	if parent == "" {
		return func(string) (os.FileInfo, bool) { return nil, false }, func() {}, nil
	}
	if s.driver == "overlay" && plainOverlay() {
		if drv, err := s.store.GraphDriver(); err == nil {
			if md, err := drv.Metadata(parent); err == nil && md["UpperDir"] != "" {
				stack := []string{md["UpperDir"]}
				if md["LowerDir"] != "" {
					stack = append(stack, strings.Split(md["LowerDir"], ":")...)
				}
				return overlayLower(stack), func() {}, nil
			}
		}
	}
	root, release, err := s.Mount(parent)
	if err != nil {
		return nil, nil, err
	}
	return func(name string) (os.FileInfo, bool) {
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(name)))
		return fi, err == nil
	}, release, nil
}

// EmptyLayer writes the blob of a layer with no entries for snapshot id:
// Docker keeps such a layer for a step that changed nothing (RUN true, a
// WORKDIR that exists), and so does rbuild, so images match.
func (s *Store) EmptyLayer(id string) (*Layer, error) {
	w, err := s.Blobs.NewLayerWriter(s.compression)
	if err != nil {
		return nil, err
	}
	if err := tar.NewWriter(w).Close(); err != nil {
		w.Abort()
		return nil, err
	}
	l, err := w.Commit()
	if err != nil {
		return nil, err
	}
	l.ID = id
	return l, nil
}

// Remove unmounts and deletes a snapshot that will not be committed.
func (s *Store) Remove(snap *Snapshot) error {
	_, _ = s.store.Unmount(snap.ID, true)
	return s.store.DeleteLayer(snap.ID)
}

// Exists reports whether a layer id is in the store.
func (s *Store) Exists(id string) bool {
	_, err := s.store.Layer(id)
	return err == nil
}

// PutLayer stores a base image layer from its blob under a fixed id (the
// layer's chain ID, so each base layer is stored once) on top of parent.
// The blob may be compressed; storage detects the format. It reports
// whether it stored the layer: false when the id existed already and blob
// was not read.
func (s *Store) PutLayer(id, parent string, blob io.Reader) (bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.Exists(id) {
		return false, nil
	}
	if _, _, err := s.store.PutLayer(id, parent, nil, "", false, nil, blob); err != nil {
		if errors.Is(err, storage.ErrDuplicateID) {
			return false, nil
		}
		return false, fmt.Errorf("storing layer %s: %w", short(id), err)
	}
	return true, nil
}

func ptr[T any](v T) *T { return &v }

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Delete removes a committed layer from the store.
func (s *Store) Delete(id string) error {
	return s.store.DeleteLayer(id)
}

// singleIDMapping reports whether this process's user namespace maps only
// one uid or only one gid.
func singleIDMapping() bool {
	for _, f := range []string{"/proc/self/uid_map", "/proc/self/gid_map"} {
		b, err := os.ReadFile(f)
		if err != nil {
			return false
		}
		var n uint64
		for _, l := range strings.Split(string(b), "\n") {
			var in, out, size uint64
			if _, err := fmt.Sscan(l, &in, &out, &size); err == nil {
				n += size
			}
		}
		if n <= 1 {
			return true
		}
	}
	return false
}
