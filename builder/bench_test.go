package builder

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/rbuild/rbuild/cache"
	rreg "github.com/rbuild/rbuild/registry"
)

// twentySteps is the 20-step Dockerfile: RUN, COPY and ENV steps
// on busybox.
func twentySteps() string {
	var sb strings.Builder
	sb.WriteString("ARG REGISTRY\nFROM ${REGISTRY}/busybox\n")
	for i := 0; i < 20; i++ {
		switch i % 3 {
		case 0:
			fmt.Fprintf(&sb, "RUN echo step%d > /step%d\n", i, i)
		case 1:
			fmt.Fprintf(&sb, "COPY f%d.txt /f%d.txt\n", i, i)
		default:
			fmt.Fprintf(&sb, "ENV STEP%d=%d\n", i, i)
		}
	}
	return sb.String()
}

func benchContext(tb *testBuild) {
	for i := 0; i < 20; i++ {
		tb.file(fmt.Sprintf("f%d.txt", i), fmt.Sprintf("file %d\n", i))
	}
}

// BenchmarkRebuildLocalCache: a no-change rebuild with a warm local cache.
func BenchmarkRebuildLocalCache(b *testing.B) {
	benchBuildWith(b, newTestBuild(b), nil, nil, nil)
}

// BenchmarkRebuildRegistryCache: a no-change rebuild on an empty state
// directory, from the registry cache. Reports layer blobs downloaded.
func BenchmarkRebuildRegistryCache(b *testing.B) {
	reg := newCountingRegistryB(b)
	if err := pushBusybox(reg.addr + "/busybox:latest"); err != nil {
		b.Fatal(err)
	}
	ref, _ := name.ParseReference(reg.addr + "/bench-cache:buildcache")
	store := &cache.Registry{Ref: ref, Options: rreg.New(rreg.Options{}).RemoteOptions()}
	tb := newTestBuild(b)
	mod := func(o *Options) {
		o.BuildArgs["REGISTRY"] = reg.addr
		o.CacheFrom = []cache.Store{store}
		o.CacheTo = []CacheExport{{Store: store, Mode: "max"}}
	}
	benchBuildWith(b, tb, mod, func() { tb.root = b.TempDir(); reg.reset() }, reg)
}

func benchBuildWith(b *testing.B, tb *testBuild, mod func(*Options), before func(), reg *countingRegistry) {
	benchContext(tb)
	df := twentySteps()
	build := func() {
		tb.log.Reset()
		opts := Options{ContextDir: tb.ctx, DockerfileContent: []byte(df), Root: tb.root,
			BuildArgs: map[string]string{"REGISTRY": testRegistry}, Progress: &tb.log}
		if mod != nil {
			mod(&opts)
		}
		if _, err := Build(b.Context(), opts); err != nil {
			b.Fatalf("%v\n%s", err, tb.log.String())
		}
	}
	build() // warm the cache
	var layerGets int64
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if before != nil {
			b.StopTimer()
			before()
			b.StartTimer()
		}
		build()
		if n := strings.Count(tb.log.String(), "] CACHED"); n != 14 {
			b.Fatalf("%d cached steps, want 14 (every RUN and COPY)\n%s", n, tb.log.String())
		}
		if reg != nil {
			layerGets += reg.blobGets.Load()
		}
	}
	if reg != nil {
		// Blob GETs per build: the cache index twice and the base config;
		// layers would add more.
		b.ReportMetric(float64(layerGets)/float64(b.N), "blobGETs/op")
	}
}

// BenchmarkRebuildOneFileChanged: one context file changes between builds
// (warm local cache): the COPY of it and every later step re-run.
func BenchmarkRebuildOneFileChanged(b *testing.B) {
	tb := newTestBuild(b)
	benchContext(tb)
	df := twentySteps()
	build := func() {
		tb.log.Reset()
		opts := Options{ContextDir: tb.ctx, DockerfileContent: []byte(df), Root: tb.root,
			BuildArgs: map[string]string{"REGISTRY": testRegistry}, Progress: &tb.log}
		if _, err := Build(b.Context(), opts); err != nil {
			b.Fatalf("%v\n%s", err, tb.log.String())
		}
	}
	build()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		// f13.txt is copied by step 14 of 20: 6 steps re-run after it.
		tb.file("f13.txt", fmt.Sprintf("change %d\n", i))
		build()
		if n := strings.Count(tb.log.String(), "] CACHED"); n != 9 {
			b.Fatalf("%d cached steps, want 9\n%s", n, tb.log.String())
		}
	}
}
