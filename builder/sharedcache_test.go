package builder

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/rbuild/rbuild/cache"
	"github.com/rbuild/rbuild/output"
	rreg "github.com/rbuild/rbuild/registry"
)

// countingRegistry is an in-memory registry that counts layer blob
// downloads (GETs of blobs other than the cache index and configs).
type countingRegistry struct {
	addr     string
	blobGets atomic.Int64
	mu       sync.Mutex
	fetched  map[string]bool // blob digests read with GET
}

func newCountingRegistry(t *testing.T) *countingRegistry { return newCountingRegistryB(t) }

func newCountingRegistryB(t testing.TB) *countingRegistry {
	cr := &countingRegistry{fetched: map[string]bool{}}
	inner := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/sha256:") {
			cr.blobGets.Add(1)
			cr.mu.Lock()
			cr.fetched[r.URL.Path[strings.LastIndex(r.URL.Path, "/")+1:]] = true
			cr.mu.Unlock()
		}
		inner.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	cr.addr = strings.TrimPrefix(srv.URL, "http://")
	return cr
}

func (cr *countingRegistry) reset() {
	cr.blobGets.Store(0)
	cr.mu.Lock()
	cr.fetched = map[string]bool{}
	cr.mu.Unlock()
}

func (cr *countingRegistry) wasFetched(digest string) bool {
	cr.mu.Lock()
	defer cr.mu.Unlock()
	return cr.fetched[digest]
}

func TestSharedCacheFromRegistryOnAnEmptyRunner(t *testing.T) {
	reg := newCountingRegistry(t)
	if err := pushBusybox(reg.addr + "/busybox:latest"); err != nil {
		t.Fatal(err)
	}
	tb := newTestBuild(t)
	tb.file("f.txt", "content\n")
	df := `ARG REGISTRY
FROM ${REGISTRY}/busybox AS build
RUN echo built > /built
COPY f.txt /f.txt
FROM ${REGISTRY}/busybox
COPY --from=build /built /built
RUN cat /built > /again
`
	client := rreg.New(rreg.Options{})
	cacheRef, _ := name.ParseReference(reg.addr + "/cache:buildcache")
	store := &cache.Registry{Ref: cacheRef, Options: client.RemoteOptions()}
	imgRef, _ := name.ParseReference(reg.addr + "/app:1")
	opts := func(o *Options) {
		o.BuildArgs["REGISTRY"] = reg.addr
		o.CacheFrom = []cache.Store{store}
		o.CacheTo = []CacheExport{{Store: store, Mode: "max"}}
		o.Outputs = []output.Output{&output.Registry{Client: client, Ref: imgRef}}
	}
	first := tb.mustBuild(df, opts)

	// A fresh runner: new state directory, same registry.
	tb.root = t.TempDir()
	reg.reset()
	// No output: pushing would copy blobs into the image's repository
	// (go-containerregistry's test registry cannot mount across
	// repositories; the end-to-end tests push to a real registry).
	second := tb.mustBuild(df, func(o *Options) { opts(o); o.Outputs = nil })
	if n := strings.Count(tb.log.String(), "CACHED ("+store.String()+")"); n != 4 {
		t.Errorf("%d steps hit the registry cache, want 4\n%s", n, tb.log.String())
	}
	// The cache index and the base image's config are read, no layer.
	layers, err := second.Image.Layers()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range layers {
		d, _ := l.Digest()
		if reg.wasFetched(d.String()) {
			t.Errorf("the fully cached build downloaded layer %s", d)
		}
	}
	if n := reg.blobGets.Load(); n > 3 {
		t.Errorf("the fully cached build fetched %d blobs, want at most 3 (the cache index twice, the base config)", n)
	}
	if first.Digest == (second.Digest) {
		// Same layers; the config differs only by creation times.
		t.Logf("identical image digests")
	}
	a, _ := first.Image.ConfigFile()
	b, _ := second.Image.ConfigFile()
	if len(a.RootFS.DiffIDs) != len(b.RootFS.DiffIDs) {
		t.Fatalf("layer counts differ: %d vs %d", len(a.RootFS.DiffIDs), len(b.RootFS.DiffIDs))
	}
	for i := range a.RootFS.DiffIDs {
		if a.RootFS.DiffIDs[i] != b.RootFS.DiffIDs[i] {
			t.Errorf("layer %d differs after the cached rebuild", i)
		}
	}

	// A change in the last stage's input: the first stage still hits, and
	// only the layers the changed step runs on are downloaded.
	tb.root = t.TempDir()
	reg.reset()
	res := tb.mustBuild(strings.Replace(df, "cat /built > /again", "cat /built > /again2", 1), opts)
	if n := strings.Count(tb.log.String(), "CACHED ("+store.String()+")"); n != 3 {
		t.Errorf("%d hits after changing the last RUN, want 3\n%s", n, tb.log.String())
	}
	if got := files(t, res.Image)["/again2"].data; got != "built\n" {
		t.Errorf("/again2 = %q", got)
	}
}

func TestSharedCacheInALocalDirectory(t *testing.T) {
	tb := newTestBuild(t)
	tb.file("f.txt", "content\n")
	dir := &cache.Dir{Path: filepath.Join(t.TempDir(), "ci-cache")}
	df := `ARG REGISTRY
FROM ${REGISTRY}/busybox
RUN echo one > /one
COPY f.txt /f.txt
`
	opts := func(o *Options) {
		o.CacheFrom = []cache.Store{dir}
		o.CacheTo = []CacheExport{{Store: dir, Mode: "min"}}
	}
	tb.mustBuild(df, opts)
	tb.root = t.TempDir()
	res := tb.mustBuild(df, opts)
	if n := strings.Count(tb.log.String(), "CACHED ("+dir.String()+")"); n != 2 {
		t.Errorf("%d hits from the directory cache, want 2\n%s", n, tb.log.String())
	}
	if got := files(t, res.Image)["/one"].data; got != "one\n" {
		t.Errorf("/one = %q", got)
	}
	// A cache that does not exist yet is a miss, not an error.
	tb.root = t.TempDir()
	empty := &cache.Dir{Path: filepath.Join(t.TempDir(), "nothing")}
	tb.mustBuild(df, func(o *Options) { o.CacheFrom = []cache.Store{empty} })
	// An unreachable cache registry is a warning.
	ref, _ := name.ParseReference("127.0.0.1:1/cache:x")
	tb.mustBuild(df, func(o *Options) {
		o.CacheFrom = []cache.Store{&cache.Registry{Ref: ref}}
	})
	if !strings.Contains(tb.log.String(), "WARNING: cache 127.0.0.1:1/cache:x not used") {
		t.Errorf("no warning for the unreachable cache:\n%s", tb.log.String())
	}
}
