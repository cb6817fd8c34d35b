package builder

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/rbuild/rbuild/cache"
	rreg "github.com/rbuild/rbuild/registry"
)

// stepResults lists, for each step line of the build log, whether it hit
// the cache ("hit") or ran ("run"), keyed by the step's text.
func stepResults(log string) map[string]string {
	out := map[string]string{}
	text := map[string]string{} // "[stage n/N]" -> instruction
	stepRe := regexp.MustCompile(`^(\[[^\]]+ \d+/\d+\]) (.*)$`)
	for _, l := range strings.Split(log, "\n") {
		m := stepRe.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		if strings.HasPrefix(m[2], "CACHED") {
			out[text[m[1]]] = "hit"
			continue
		}
		text[m[1]] = m[2]
		out[m[2]] = "run"
	}
	return out
}

// TestCacheMatrix changes one input at a time and asserts exactly which
// steps hit, with the local cache and with the registry cache on a wiped
// local store.
func TestCacheMatrix(t *testing.T) {
	reg := newCountingRegistry(t)
	if err := pushBusybox(reg.addr + "/busybox:latest"); err != nil {
		t.Fatal(err)
	}
	retag(t, reg.addr+"/busybox:latest", reg.addr+"/busybox:v2")
	const df = `ARG REGISTRY
ARG BASE=busybox:latest
FROM ${REGISTRY}/${BASE} AS deps
ARG USED=a
ARG UNUSED=b
RUN echo deps-$USED > /deps
FROM ${REGISTRY}/${BASE}
COPY src/ /src/
ENV MODE=one
RUN cat /src/app.txt > /out && echo $MODE >> /out
COPY --from=deps /deps /deps
`
	steps := []string{
		"RUN echo deps-$USED > /deps",
		"COPY src/ /src/",
		"RUN cat /src/app.txt > /out && echo $MODE >> /out",
		"COPY --from=deps /deps /deps",
	}
	type change struct {
		name string
		// apply changes the context or returns a new Dockerfile / args.
		apply func(tb *testBuild) (dockerfile string, args map[string]string)
		hits  []bool // per step, in the order of steps
		// steps, when set, are the step texts after the change.
		steps []string
	}
	same := func(tb *testBuild) (string, map[string]string) { return df, nil }
	changes := []change{
		{"nothing", same, []bool{true, true, true, true}, nil},
		{"file content", func(tb *testBuild) (string, map[string]string) {
			tb.file("src/app.txt", "changed\n")
			return df, nil
		}, []bool{true, false, false, false}, nil},
		{"file mode", func(tb *testBuild) (string, map[string]string) {
			os.Chmod(filepath.Join(tb.ctx, "src/app.txt"), 0o600)
			return df, nil
		}, []bool{true, false, false, false}, nil},
		{"only mtime", func(tb *testBuild) (string, map[string]string) {
			os.Chtimes(filepath.Join(tb.ctx, "src/app.txt"), timeZero, timeZero)
			return df, nil
		}, []bool{true, true, true, true}, nil},
		{"unrelated file", func(tb *testBuild) (string, map[string]string) {
			tb.file("unrelated.txt", "x\n")
			return df, nil
		}, []bool{true, true, true, true}, nil},
		{"ignored file", func(tb *testBuild) (string, map[string]string) {
			tb.file("src/ignored.txt", "x\n")
			return df, nil
		}, []bool{true, true, true, true}, nil},
		{"used build arg", func(tb *testBuild) (string, map[string]string) {
			return df, map[string]string{"USED": "z"}
		}, []bool{false, true, true, false}, nil},
		{"build arg declared but unused", func(tb *testBuild) (string, map[string]string) {
			return df, map[string]string{"UNUSED": "z"}
		}, []bool{false, true, true, false}, nil},
		{"undeclared build arg", func(tb *testBuild) (string, map[string]string) {
			return df, map[string]string{"NOTDECLARED": "z"}
		}, []bool{true, true, true, true}, nil},
		{"base retagged", func(tb *testBuild) (string, map[string]string) {
			return df, map[string]string{"BASE": "busybox:v2"}
		}, []bool{false, false, false, false}, nil},
		{"RUN text", func(tb *testBuild) (string, map[string]string) {
			return strings.Replace(df, "echo $MODE >> /out", "echo $MODE  >> /out", 1), nil
		}, []bool{true, true, false, false}, []string{steps[0], steps[1], "RUN cat /src/app.txt > /out && echo $MODE  >> /out", steps[3]}},
		{"ENV above RUN", func(tb *testBuild) (string, map[string]string) {
			return strings.Replace(df, "ENV MODE=one", "ENV MODE=two", 1), nil
		}, []bool{true, true, false, false}, nil},
	}
	for _, mode := range []string{"local", "registry"} {
		t.Run(mode, func(t *testing.T) {
			tb := newTestBuild(t)
			tb.file("src/app.txt", "one\n")
			tb.file(".dockerignore", "src/ignored*\n")
			client := rreg.New(rreg.Options{})
			ref, _ := name.ParseReference(reg.addr + "/matrix-" + mode + ":cache")
			store := &cache.Registry{Ref: ref, Options: client.RemoteOptions()}
			build := func(dockerfile string, args map[string]string) {
				tb.t.Helper()
				if mode == "registry" {
					tb.root = t.TempDir() // an empty runner every time
				}
				tb.mustBuild(dockerfile, func(o *Options) {
					o.BuildArgs["REGISTRY"] = reg.addr
					for k, v := range args {
						o.BuildArgs[k] = v
					}
					if mode == "registry" {
						o.CacheFrom = []cache.Store{store}
						o.CacheTo = []CacheExport{{Store: store, Mode: "max"}}
					}
				})
			}
			build(df, nil)
			for _, c := range changes {
				dockerfile, args := c.apply(tb)
				build(dockerfile, args)
				got := stepResults(tb.log.String())
				names := steps
				if c.steps != nil {
					names = c.steps
				}
				for i, step := range names {
					want := "run"
					if c.hits[i] {
						want = "hit"
					}
					if got[step] != want {
						t.Errorf("%s: %q %s, want %s", c.name, step, got[step], want)
					}
				}
				// Back to the original inputs for the next row.
				tb.file("src/app.txt", "one\n")
				os.Chmod(filepath.Join(tb.ctx, "src/app.txt"), 0o644)
				build(df, nil)
			}
		})
	}
}

// Two Dockerfiles sharing a prefix share its cache; a reordered stage
// keeps its hits, since a stage's keys do not depend on its position.
func TestCacheSharedPrefixAndReorderedStages(t *testing.T) {
	tb := newTestBuild(t)
	a := `ARG REGISTRY
FROM ${REGISTRY}/busybox AS one
RUN echo one > /one
FROM ${REGISTRY}/busybox AS two
RUN echo two > /two
FROM scratch
COPY --from=one /one /one
COPY --from=two /two /two
`
	tb.mustBuild(a, nil)
	reordered := `ARG REGISTRY
FROM ${REGISTRY}/busybox AS two
RUN echo two > /two
FROM ${REGISTRY}/busybox AS one
RUN echo one > /one
FROM scratch
COPY --from=one /one /one
COPY --from=two /two /two
`
	tb.mustBuild(reordered, nil)
	got := stepResults(tb.log.String())
	for _, s := range []string{"RUN echo one > /one", "RUN echo two > /two", "COPY --from=one /one /one", "COPY --from=two /two /two"} {
		if got[s] != "hit" {
			t.Errorf("reordered stages: %q %s, want hit", s, got[s])
		}
	}
	prefix := `ARG REGISTRY
FROM ${REGISTRY}/busybox
RUN echo one > /one
RUN echo different > /d
`
	tb.mustBuild(prefix, nil)
	got = stepResults(tb.log.String())
	if got["RUN echo one > /one"] != "hit" || got["RUN echo different > /d"] != "run" {
		t.Errorf("shared prefix: %v", got)
	}
}

// retag pushes a copy of src, with one more environment variable (a new
// digest), as dst.
func retag(t *testing.T, src, dst string) {
	t.Helper()
	sr, _ := name.ParseReference(src)
	img, err := remote.Image(sr)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	c.Env = append(c.Env, "RETAGGED=1")
	if img, err = mutate.Config(img, c); err != nil {
		t.Fatal(err)
	}
	dr, _ := name.ParseReference(dst)
	if err := remote.Write(dr, img); err != nil {
		t.Fatal(err)
	}
}
