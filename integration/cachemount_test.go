package integration

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// RUN --mount=type=cache between separate rbuild processes that share a
// state directory (two CI jobs on one runner): sharing=locked serializes
// them, sharing=private gives the second its own directory; the cache never
// reaches a layer. Root builds (the case run-mount-cache covers uid, gid,
// mode, from and source, as root and rootless).

// cacheBuild prepares a root build of dockerfile whose state directory is
// state (shared between builds).
func cacheBuild(t *testing.T, name, state, dockerfile string) *buildRun {
	t.Helper()
	r := rootRun(t, adhocCase(t, name, dockerfile, nil))
	i := slices.Index(r.Args, "--root")
	r.Args[i+1] = state
	r.State = state
	return r
}

func runBuilds(t *testing.T, runs ...*buildRun) {
	t.Helper()
	bin := h.binary(t)
	var wg sync.WaitGroup
	for _, r := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.run(bin)
		}()
	}
	wg.Wait()
	for _, r := range runs {
		if r.Err != nil {
			t.Fatalf("build %s failed\n%s", r.Tag, r.report())
		}
	}
}

// fileText reads a regular file of a pushed image, and checks that nothing
// of the cache mounted at /cache is in it.
func fileText(t *testing.T, tag, path string) string {
	t.Helper()
	v, err := pullImage(tag)
	if err != nil {
		t.Fatal(err)
	}
	e := v.Tree[path]
	if e == nil {
		t.Fatalf("%s: no %s", tag, path)
	}
	for p := range v.Tree {
		if strings.HasPrefix(p, "/cache/") {
			t.Errorf("%s: the cache mount's content %s is in a layer", tag, p)
		}
	}
	return strings.TrimSpace(string(e.Content))
}

func TestCacheMountLocked(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	// Read, wait, write: two builds at once lose an update unless the
	// cache is locked. Each build's own text keeps their steps apart.
	df := func(who string) string {
		return `ARG REGISTRY
FROM ${REGISTRY}/busybox
RUN --mount=type=cache,target=/cache,id=counter,sharing=locked \
    n=$(cat /cache/n 2>/dev/null || echo 0); sleep 1; echo $((n+1)) > /cache/n; cp /cache/n /seen; echo ` + who + `
`
	}
	a := cacheBuild(t, "cache-locked-a", state, df("a"))
	b := cacheBuild(t, "cache-locked-b", state, df("b"))
	release := h.acquire()
	defer release()
	start := time.Now()
	runBuilds(t, a, b)
	seen := []string{fileText(t, a.Tag, "/seen"), fileText(t, b.Tag, "/seen")}
	slices.Sort(seen)
	if !slices.Equal(seen, []string{"1", "2"}) {
		t.Errorf("the builds counted %v, want 1 and 2: sharing=locked did not serialize them", seen)
	}
	t.Logf("two locked builds in %v", time.Since(start).Round(time.Millisecond))
}

func TestCacheMountPrivate(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	sum := sha256.Sum256([]byte("priv"))
	marker := filepath.Join(state, "cachemounts", hex.EncodeToString(sum[:16]), "a")
	holder := cacheBuild(t, "cache-private-a", state, `ARG REGISTRY
FROM ${REGISTRY}/busybox
RUN --mount=type=cache,target=/cache,id=priv,sharing=private \
    echo a > /cache/a && sleep 3
`)
	second := cacheBuild(t, "cache-private-b", state, `ARG REGISTRY
FROM ${REGISTRY}/busybox
RUN --mount=type=cache,target=/cache,id=priv,sharing=private \
    ls -A /cache > /listed; echo b > /cache/b
`)
	later := cacheBuild(t, "cache-private-c", state, `ARG REGISTRY
FROM ${REGISTRY}/busybox
RUN --mount=type=cache,target=/cache,id=priv,sharing=private \
    ls -A /cache > /listed
`)
	release := h.acquire()
	defer release()
	bin := h.binary(t)
	done := make(chan struct{})
	go func() {
		defer close(done)
		holder.run(bin)
	}()
	// Start the second build once the first holds the cache.
	deadline := time.Now().Add(2 * time.Minute)
	for {
		if _, err := os.Stat(marker); err == nil {
			break
		}
		select {
		case <-done:
			t.Fatalf("the first build ended before it wrote %s\n%s", marker, holder.report())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("the first build never wrote %s", marker)
		}
		time.Sleep(20 * time.Millisecond)
	}
	second.run(bin)
	<-done
	if holder.Err != nil || second.Err != nil {
		t.Fatalf("builds failed:\n%s\n%s", holder.report(), second.report())
	}
	if got := fileText(t, second.Tag, "/listed"); got != "" {
		t.Errorf("a build of a private cache another build holds saw %q, want its own empty directory", got)
	}
	runBuilds(t, later)
	if got := fileText(t, later.Tag, "/listed"); got != "a" {
		t.Errorf("the cache afterwards holds %q, want only the holder's file a (the other build's copy is thrown away)", got)
	}
}
