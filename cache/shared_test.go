package cache

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"
)

// Tests of the shared cache: the index, and its two stores (a directory
// and a registry repository, go-containerregistry's in-memory registry).

var t0 = time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)

// testLayer is a real gzip layer and the cache entry describing it.
type testLayer struct {
	layer v1.Layer
	entry *Entry
	raw   []byte // uncompressed tar
}

func newTestLayer(t *testing.T, created time.Time) testLayer {
	t.Helper()
	l, err := random.Layer(300, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	e := &Entry{Created: created, MediaType: types.OCILayer}
	if e.Digest, err = l.Digest(); err != nil {
		t.Fatal(err)
	}
	if e.DiffID, err = l.DiffID(); err != nil {
		t.Fatal(err)
	}
	if e.Size, err = l.Size(); err != nil {
		t.Fatal(err)
	}
	rc, err := l.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	raw, err := io.ReadAll(rc)
	rc.Close()
	if err != nil {
		t.Fatal(err)
	}
	return testLayer{layer: l, entry: e, raw: raw}
}

func key(s string) Key { return NewKey("").Add("test", s).Key() }

// sources serves layers by digest to Save, and counts the calls.
type sources struct {
	mu     sync.Mutex
	layers map[v1.Hash]v1.Layer
	calls  int
}

func newSources(ls ...testLayer) *sources {
	s := &sources{layers: map[v1.Hash]v1.Layer{}}
	for _, l := range ls {
		s.layers[l.entry.Digest] = l.layer
	}
	return s
}

func (s *sources) layer(e *Entry) (v1.Layer, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls++
	l, ok := s.layers[e.Digest]
	if !ok {
		return nil, fmt.Errorf("layer %s is neither stored locally nor known in a registry", e.Digest)
	}
	return l, nil
}

// checkLayer reads a store's layer for an entry and compares it with the
// original.
func checkLayer(t *testing.T, st Store, tl testLayer) {
	t.Helper()
	l, err := st.Layer(tl.entry)
	if err != nil {
		t.Fatalf("Layer: %v", err)
	}
	if d, _ := l.Digest(); d != tl.entry.Digest {
		t.Errorf("digest %s, want %s", d, tl.entry.Digest)
	}
	if d, _ := l.DiffID(); d != tl.entry.DiffID {
		t.Errorf("diffID %s, want %s", d, tl.entry.DiffID)
	}
	if s, _ := l.Size(); s != tl.entry.Size {
		t.Errorf("size %d, want %d", s, tl.entry.Size)
	}
	if mt, _ := l.MediaType(); mt != tl.entry.MediaType {
		t.Errorf("media type %s, want %s", mt, tl.entry.MediaType)
	}
	rc, err := l.Compressed()
	if err != nil {
		t.Fatalf("Compressed: %v", err)
	}
	got, _, err := v1.SHA256(rc)
	rc.Close()
	if err != nil || got != tl.entry.Digest {
		t.Errorf("compressed content has digest %s (%v), want %s", got, err, tl.entry.Digest)
	}
	rc, err = l.Uncompressed()
	if err != nil {
		t.Fatalf("Uncompressed: %v", err)
	}
	raw, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(raw, tl.raw) {
		t.Errorf("uncompressed content differs (%v)", err)
	}
}

func TestIndexMerge(t *testing.T) {
	a, b, c := key("a"), key("b"), key("c")
	idx := NewIndex()
	idx.Entries[a] = &Entry{Empty: true, Created: t0}
	idx.Entries[b] = &Entry{Empty: true, Created: t0.Add(time.Hour), Size: 1}
	other := NewIndex()
	other.Entries[a] = &Entry{Empty: true, Created: t0.Add(time.Minute), Size: 2} // newer: wins
	other.Entries[b] = &Entry{Empty: true, Created: t0, Size: 3}                  // older: loses
	other.Entries[c] = &Entry{Empty: true, Created: t0, Size: 4}                  // new key
	idx.Merge(other)
	if len(idx.Entries) != 3 {
		t.Fatalf("%d entries after merge, want 3", len(idx.Entries))
	}
	if idx.Entries[a].Size != 2 || idx.Entries[b].Size != 1 || idx.Entries[c].Size != 4 {
		t.Errorf("merge kept the wrong entries: a=%d b=%d c=%d, want a=2 b=1 c=4",
			idx.Entries[a].Size, idx.Entries[b].Size, idx.Entries[c].Size)
	}
	if idx.Version != 1 {
		t.Errorf("version %d", idx.Version)
	}
}

func TestIndexTrim(t *testing.T) {
	idx := NewIndex()
	extra := 10
	for i := range MaxEntries + extra {
		idx.Entries[key(fmt.Sprint(i))] = &Entry{Empty: true, Created: t0.Add(time.Duration(i) * time.Second)}
	}
	idx.Trim()
	if len(idx.Entries) != MaxEntries {
		t.Fatalf("%d entries after Trim, want %d", len(idx.Entries), MaxEntries)
	}
	for i := range extra {
		if _, ok := idx.Entries[key(fmt.Sprint(i))]; ok {
			t.Errorf("old entry %d kept, newer ones dropped", i)
		}
	}
	if _, ok := idx.Entries[key(fmt.Sprint(MaxEntries+extra-1))]; !ok {
		t.Error("the newest entry was dropped")
	}
	// Under the bound nothing changes.
	small := NewIndex()
	small.Entries[key("x")] = &Entry{Empty: true}
	small.Trim()
	if len(small.Entries) != 1 {
		t.Error("Trim of a small index dropped entries")
	}
}

func TestDirRoundTrip(t *testing.T) {
	ctx := context.Background()
	d := &Dir{Path: filepath.Join(t.TempDir(), "ci-cache")}
	if d.String() != "local:"+d.Path {
		t.Errorf("String() = %q", d.String())
	}
	// A directory that does not exist yet is an empty cache.
	idx, err := d.Load(ctx)
	if err != nil || len(idx.Entries) != 0 {
		t.Fatalf("Load of a missing directory: %v, %v", idx, err)
	}

	l1, l2 := newTestLayer(t, t0), newTestLayer(t, t0.Add(time.Minute))
	src := newSources(l1, l2)
	idx = NewIndex()
	idx.Entries[key("run1")] = l1.entry
	idx.Entries[key("run2")] = l2.entry
	shared := *l1.entry // another step with the same layer
	shared.SnapshotID = "local-only"
	idx.Entries[key("copy")] = &shared
	idx.Entries[key("noop")] = &Entry{Empty: true, Created: t0}
	if err := d.Save(ctx, idx, src.layer); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if src.calls != 2 {
		t.Errorf("Save asked for %d layers, want 2 (one per distinct blob)", src.calls)
	}
	for _, tl := range []testLayer{l1, l2} {
		if _, err := os.Stat(filepath.Join(d.Path, "blobs", "sha256", tl.entry.Digest.Hex)); err != nil {
			t.Errorf("blob %s not written: %v", tl.entry.Digest, err)
		}
	}
	noHidden(t, d.Path)
	noHidden(t, filepath.Join(d.Path, "blobs"))

	got, err := d.Load(ctx)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(got.Entries) != 4 {
		t.Fatalf("%d entries loaded, want 4", len(got.Entries))
	}
	for k, want := range idx.Entries {
		e := got.Entries[k]
		if e == nil {
			t.Errorf("entry %s lost", k)
			continue
		}
		if e.SnapshotID != "" {
			t.Errorf("a shared entry carries the snapshot ID %q of another machine", e.SnapshotID)
		}
		if e.Empty != want.Empty || e.Digest != want.Digest || e.DiffID != want.DiffID ||
			e.Size != want.Size || e.MediaType != want.MediaType || !e.Created.Equal(want.Created) {
			t.Errorf("entry %s: %+v, want %+v", k, e, want)
		}
	}
	checkLayer(t, d, l1)
	checkLayer(t, d, l2)

	// Saving again copies nothing: the blobs are there.
	src.calls = 0
	if err := d.Save(ctx, got, src.layer); err != nil {
		t.Fatalf("second Save: %v", err)
	}
	if src.calls != 0 {
		t.Errorf("second Save asked for %d layers, want 0", src.calls)
	}
}

func noHidden(t *testing.T, dir string) {
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

func TestDirLoadDropsMissingBlobs(t *testing.T) {
	ctx := context.Background()
	d := &Dir{Path: t.TempDir()}
	l1, l2 := newTestLayer(t, t0), newTestLayer(t, t0)
	idx := NewIndex()
	idx.Entries[key("1")] = l1.entry
	idx.Entries[key("2")] = l2.entry
	idx.Entries[key("empty")] = &Entry{Empty: true}
	if err := d.Save(ctx, idx, newSources(l1, l2).layer); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(d.Path, "blobs", "sha256", l1.entry.Digest.Hex)); err != nil {
		t.Fatal(err)
	}
	got, err := d.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got.Entries[key("1")]; ok {
		t.Error("entry whose blob is gone is still offered")
	}
	if _, ok := got.Entries[key("2")]; !ok {
		t.Error("entry with its blob dropped")
	}
	if _, ok := got.Entries[key("empty")]; !ok {
		t.Error("empty entry dropped")
	}
}

func TestDirSaveVerifiesBlobs(t *testing.T) {
	ctx := context.Background()
	d := &Dir{Path: t.TempDir()}
	l1, other := newTestLayer(t, t0), newTestLayer(t, t0)
	idx := NewIndex()
	idx.Entries[key("1")] = l1.entry
	// The source hands out the wrong bytes for l1.
	src := &sources{layers: map[v1.Hash]v1.Layer{l1.entry.Digest: other.layer}}
	err := d.Save(ctx, idx, src.layer)
	if err == nil {
		t.Fatal("Save stored a blob whose content does not match its digest")
	}
	if _, err := os.Stat(filepath.Join(d.Path, "blobs", "sha256", l1.entry.Digest.Hex)); !os.IsNotExist(err) {
		t.Errorf("mismatched blob stored: %v", err)
	}
	if _, err := os.Stat(filepath.Join(d.Path, "index.json")); !os.IsNotExist(err) {
		t.Errorf("index written although a blob failed: %v", err)
	}
	noHidden(t, filepath.Join(d.Path, "blobs"))
	// A source that fails is an error too.
	if err := d.Save(ctx, idx, newSources().layer); err == nil {
		t.Error("Save with no source for a blob succeeded")
	}
}

// TestDirIndexValidation: an index is a hint; malformed entries are
// dropped, a corrupt or foreign index is an error.
func TestDirIndexValidation(t *testing.T) {
	ctx := context.Background()
	d := &Dir{Path: t.TempDir()}
	l1 := newTestLayer(t, t0)
	if err := d.Save(ctx, &Index{Version: 1, Entries: map[Key]*Entry{key("good"): l1.entry}}, newSources(l1).layer); err != nil {
		t.Fatal(err)
	}
	good, _ := json.Marshal(l1.entry)
	mut := func(f func(m map[string]any)) string {
		var m map[string]any
		if err := json.Unmarshal(good, &m); err != nil {
			t.Fatal(err)
		}
		f(m)
		b, _ := json.Marshal(m)
		return string(b)
	}
	entries := map[string]string{
		string(key("good")):       string(good),
		string(key("snapshot")):   mut(func(m map[string]any) { m["snapshot"] = "abc" }),
		string(key("empty")):      `{"empty":true}`,
		"short-key":               string(good),
		string(key("null")):       `null`,
		string(key("no-digest")):  mut(func(m map[string]any) { delete(m, "digest") }),
		string(key("md5")):        mut(func(m map[string]any) { m["digest"] = "md5:" + strings.Repeat("a", 32) }),
		string(key("bad-hex")):    mut(func(m map[string]any) { m["digest"] = "sha256:zz" }),
		string(key("not-object")): `"sha256:abc"`,
		string(key("zero-size")):  mut(func(m map[string]any) { m["size"] = 0 }),
		string(key("bad-type")):   mut(func(m map[string]any) { m["mediaType"] = "text/html" }),
		string(key("no-diffid")):  mut(func(m map[string]any) { delete(m, "diffID") }),
		string(key("zstd-layer")): mut(func(m map[string]any) { m["mediaType"] = string(types.OCILayerZStd) }),
	}
	var parts []string
	for k, v := range entries {
		parts = append(parts, fmt.Sprintf("%q:%s", k, v))
	}
	raw := `{"version":1,"entries":{` + strings.Join(parts, ",") + `}}`
	if err := os.WriteFile(filepath.Join(d.Path, "index.json"), []byte(raw), 0o644); err != nil {
		t.Fatal(err)
	}
	idx, err := d.Load(ctx)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := map[Key]bool{key("good"): true, key("snapshot"): true, key("empty"): true, key("zstd-layer"): true}
	for k := range idx.Entries {
		if !want[k] {
			t.Errorf("malformed entry %s kept: %+v", k, idx.Entries[k])
		}
	}
	for k := range want {
		if _, ok := idx.Entries[k]; !ok {
			t.Errorf("valid entry %s dropped", k)
		}
	}
	if e := idx.Entries[key("snapshot")]; e != nil && e.SnapshotID != "" {
		t.Errorf("snapshot ID %q from a shared index kept", e.SnapshotID)
	}

	for what, content := range map[string]string{
		"corrupt json":  `{"version":1,"entries":`,
		"newer version": `{"version":2,"entries":{}}`,
		"no version":    `{"entries":{}}`,
	} {
		if err := os.WriteFile(filepath.Join(d.Path, "index.json"), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := d.Load(ctx); err == nil {
			t.Errorf("%s: Load succeeded", what)
		}
	}
}

// testRegistry is the in-memory registry on loopback, counting blob
// uploads.
type testRegistry struct {
	host    string
	mu      sync.Mutex
	uploads int
}

func newTestRegistry(t *testing.T) *testRegistry {
	t.Helper()
	r := &testRegistry{}
	h := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method == http.MethodPost && strings.Contains(req.URL.Path, "/blobs/uploads/") {
			r.mu.Lock()
			r.uploads++
			r.mu.Unlock()
		}
		h.ServeHTTP(w, req)
	}))
	t.Cleanup(srv.Close)
	r.host = strings.TrimPrefix(srv.URL, "http://")
	return r
}

func (r *testRegistry) uploadCount() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.uploads
}

func (r *testRegistry) cache(t *testing.T, repo string) *Registry {
	t.Helper()
	ref, err := name.ParseReference(r.host + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	// Options with spare capacity, as a caller appending its own would
	// make them.
	opts := make([]remote.Option, 0, 8)
	opts = append(opts, remote.WithUserAgent("rbuild-test"))
	return &Registry{Ref: ref, Options: opts}
}

func TestRegistryRoundTrip(t *testing.T) {
	ctx := context.Background()
	reg := newTestRegistry(t)
	c := reg.cache(t, "team/app:buildcache")
	if c.String() != reg.host+"/team/app:buildcache" {
		t.Errorf("String() = %q", c.String())
	}
	// A ref that does not exist yet is an empty cache.
	idx, err := c.Load(ctx)
	if err != nil || len(idx.Entries) != 0 {
		t.Fatalf("Load of a missing ref: %v, %v", idx, err)
	}

	ls := []testLayer{newTestLayer(t, t0), newTestLayer(t, t0.Add(time.Second)), newTestLayer(t, t0.Add(2*time.Second))}
	src := newSources(ls...)
	idx = NewIndex()
	for i, l := range ls {
		idx.Entries[key(fmt.Sprint(i))] = l.entry
	}
	idx.Entries[key("empty")] = &Entry{Empty: true, Created: t0}
	if err := c.Save(ctx, idx, src.layer); err != nil {
		t.Fatalf("Save: %v", err)
	}
	if n := reg.uploadCount(); n != len(ls)+1 { // the blobs and the index
		t.Errorf("%d blob uploads, want %d", n, len(ls)+1)
	}

	// The manifest is an rbuild cache artifact listing every blob.
	desc, err := remote.Get(c.Ref)
	if err != nil {
		t.Fatal(err)
	}
	var m struct {
		v1.Manifest
		ArtifactType string `json:"artifactType"`
	}
	if err := json.Unmarshal(desc.Manifest, &m); err != nil {
		t.Fatal(err)
	}
	if m.ArtifactType != ArtifactType || m.Config.MediaType != ConfigMediaType || m.MediaType != types.OCIManifestSchema1 {
		t.Errorf("manifest: artifactType %q config %q mediaType %q", m.ArtifactType, m.Config.MediaType, m.MediaType)
	}
	if len(m.Layers) != len(ls) {
		t.Errorf("manifest lists %d layers, want %d", len(m.Layers), len(ls))
	}

	got, err := c.Load(ctx)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if len(got.Entries) != len(idx.Entries) {
		t.Fatalf("%d entries loaded, want %d", len(got.Entries), len(idx.Entries))
	}
	for k, want := range idx.Entries {
		e := got.Entries[k]
		if e == nil || e.Digest != want.Digest || e.DiffID != want.DiffID || e.Size != want.Size || e.Empty != want.Empty || !e.Created.Equal(want.Created) {
			t.Errorf("entry %s: %+v, want %+v", k, e, want)
		}
	}
	for _, l := range ls {
		checkLayer(t, c, l)
	}
	// Layer is mountable from the cache repository.
	l, err := c.Layer(ls[0].entry)
	if err != nil {
		t.Fatal(err)
	}
	if ml, ok := l.(*remote.MountableLayer); !ok || ml.Reference.Context().String() != c.Ref.Context().String() {
		t.Errorf("cache layer is not mountable from %s: %T", c.Ref.Context(), l)
	}

	// Saving the same index again uploads no layer blob.
	before := reg.uploadCount()
	src.calls = 0
	if err := c.Save(ctx, got, src.layer); err != nil {
		t.Fatalf("second Save: %v", err)
	}
	if n := reg.uploadCount() - before; n > 1 { // at most the index, which is unchanged
		t.Errorf("second Save made %d uploads", n)
	}
}

// TestRegistrySaveKeepsForeignEntries: the index a build writes is its
// own entries merged with the ones the repository holds, whose blobs the
// build may never have had. Saving must not need them: they are in the
// repository already.
func TestRegistrySaveKeepsForeignEntries(t *testing.T) {
	ctx := context.Background()
	reg := newTestRegistry(t)
	c := reg.cache(t, "app:buildcache")
	old := newTestLayer(t, t0)
	idx := NewIndex()
	idx.Entries[key("old")] = old.entry
	if err := c.Save(ctx, idx, newSources(old).layer); err != nil {
		t.Fatal(err)
	}

	// Another machine: produced one layer, knows nothing of the old one.
	fresh := newTestLayer(t, t0.Add(time.Hour))
	mine := NewIndex()
	mine.Entries[key("fresh")] = fresh.entry
	prev, err := c.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	mine.Merge(prev)
	if err := c.Save(ctx, mine, newSources(fresh).layer); err != nil {
		t.Fatalf("Save of a merged index: %v", err)
	}
	got, err := c.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Entries) != 2 {
		t.Errorf("%d entries after the second save, want 2", len(got.Entries))
	}
	checkLayer(t, c, old)
	checkLayer(t, c, fresh)
}

func TestRegistryLoadErrors(t *testing.T) {
	ctx := context.Background()
	reg := newTestRegistry(t)
	// An ordinary image under the cache ref is not a cache.
	img, err := random.Image(100, 1)
	if err != nil {
		t.Fatal(err)
	}
	c := reg.cache(t, "app:latest")
	if err := remote.Write(c.Ref, img); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Load(ctx); err == nil || !strings.Contains(err.Error(), "not an rbuild cache") {
		t.Errorf("Load of an image: %v, want \"not an rbuild cache\"", err)
	}
	// An unreachable registry is an error, not an empty cache.
	bad := &Registry{Ref: name.MustParseReference("127.0.0.1:1/app:buildcache")}
	if _, err := bad.Load(ctx); err == nil {
		t.Error("Load from a closed port succeeded")
	}
	// A failing source fails Save.
	l := newTestLayer(t, t0)
	idx := NewIndex()
	idx.Entries[key("x")] = l.entry
	failing := func(*Entry) (v1.Layer, error) { return nil, errors.New("no such blob") }
	if err := reg.cache(t, "other:buildcache").Save(ctx, idx, failing); err == nil {
		t.Error("Save with a failing source succeeded")
	}
}

// TestDirZstdLayer: a zstd layer (rbuild --compression zstd) reads back
// uncompressed from a directory cache, where only the entry says what it is.
func TestDirZstdLayer(t *testing.T) {
	ctx := context.Background()
	tl := newTestLayer(t, t0)
	var buf bytes.Buffer
	zw, err := zstd.NewWriter(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := zw.Write(tl.raw); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	blob := buf.Bytes()
	digest, size, err := v1.SHA256(bytes.NewReader(blob))
	if err != nil {
		t.Fatal(err)
	}
	zl := testLayer{
		layer: static.NewLayer(blob, types.OCILayerZStd),
		entry: &Entry{Digest: digest, DiffID: tl.entry.DiffID, Size: size, MediaType: types.OCILayerZStd, Created: t0},
		raw:   tl.raw,
	}
	d := &Dir{Path: t.TempDir()}
	idx := NewIndex()
	idx.Entries[key("zstd")] = zl.entry
	if err := d.Save(ctx, idx, newSources(zl).layer); err != nil {
		t.Fatal(err)
	}
	got, err := d.Load(ctx)
	if err != nil || got.Entries[key("zstd")] == nil {
		t.Fatalf("Load: %v %v", got, err)
	}
	checkLayer(t, d, zl)
}
