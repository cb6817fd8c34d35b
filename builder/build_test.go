package builder

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/rbuild/rbuild/output"
	"github.com/rbuild/rbuild/snapshot"
)

type testBuild struct {
	t    testing.TB
	root string
	ctx  string
	log  bytes.Buffer
}

func newTestBuild(t testing.TB) *testBuild {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("the layer store needs root (or rbuild's user-namespace re-exec); CI runs these as root")
	}
	return &testBuild{t: t, root: t.TempDir(), ctx: t.TempDir()}
}

func (tb *testBuild) file(name, content string) {
	tb.t.Helper()
	p := filepath.Join(tb.ctx, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		tb.t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		tb.t.Fatal(err)
	}
}

func (tb *testBuild) build(dockerfile string, mod func(*Options)) (*Result, error) {
	tb.t.Helper()
	tb.log.Reset()
	opts := Options{
		ContextDir:        tb.ctx,
		DockerfileContent: []byte(dockerfile),
		Root:              tb.root,
		BuildArgs:         map[string]string{"REGISTRY": testRegistry},
		Progress:          &tb.log,
	}
	if mod != nil {
		mod(&opts)
	}
	return Build(context.Background(), opts)
}

func (tb *testBuild) mustBuild(dockerfile string, mod func(*Options)) *Result {
	tb.t.Helper()
	res, err := tb.build(dockerfile, mod)
	if err != nil {
		tb.t.Fatalf("build: %v\nlog:\n%s", err, tb.log.String())
	}
	return res
}

// files flattens the image and returns each path's header and content.
func files(t *testing.T, img v1.Image) map[string]fileEntry {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	out := map[string]fileEntry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		out["/"+strings.TrimSuffix(strings.TrimPrefix(h.Name, "./"), "/")] = fileEntry{h: h, data: string(data)}
	}
	return out
}

type fileEntry struct {
	h    *tar.Header
	data string
}

func config(t *testing.T, img v1.Image) *v1.ConfigFile {
	t.Helper()
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	return cf
}

func TestMetadataInstructionsFromScratch(t *testing.T) {
	tb := newTestBuild(t)
	tb.file("a.txt", "a\n")
	res := tb.mustBuild(`FROM scratch
ENV A=1 B="two words"
ENV C=${A}-$B
LABEL org.example.x="y z" k=v
EXPOSE 80 53/udp 8000-8001
VOLUME /data
VOLUME ["/logs"]
USER 1000:1000
WORKDIR /app
WORKDIR sub
COPY a.txt .
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=5s --retries=2 CMD ["true"]
SHELL ["/bin/bash", "-c"]
ONBUILD RUN echo triggered
MAINTAINER someone
ENTRYPOINT ["/entry"]
CMD run me
`, func(o *Options) { o.Labels = map[string]string{"from-flag": "1"} })
	cf := config(t, res.Image)
	c := cf.Config
	wantEnv := []string{"A=1", "B=two words", "C=1-two words", "PATH=" + defaultPath}
	if !reflect.DeepEqual(sortedCopy(c.Env), wantEnv) {
		t.Errorf("Env = %q, want %q", c.Env, wantEnv)
	}
	if c.Labels["org.example.x"] != "y z" || c.Labels["k"] != "v" || c.Labels["from-flag"] != "1" {
		t.Errorf("Labels = %v", c.Labels)
	}
	for _, p := range []string{"80/tcp", "53/udp", "8000/tcp", "8001/tcp"} {
		if _, ok := c.ExposedPorts[p]; !ok {
			t.Errorf("ExposedPorts %v lacks %s", c.ExposedPorts, p)
		}
	}
	if _, ok := c.Volumes["/data"]; !ok {
		t.Errorf("Volumes = %v", c.Volumes)
	}
	if _, ok := c.Volumes["/logs"]; !ok {
		t.Errorf("Volumes = %v", c.Volumes)
	}
	if c.User != "1000:1000" || c.WorkingDir != "/app/sub" || c.StopSignal != "SIGTERM" {
		t.Errorf("User %q WorkingDir %q StopSignal %q", c.User, c.WorkingDir, c.StopSignal)
	}
	if c.Healthcheck == nil || !reflect.DeepEqual(c.Healthcheck.Test, []string{"CMD", "true"}) || c.Healthcheck.Retries != 2 || c.Healthcheck.Interval.Seconds() != 5 {
		t.Errorf("Healthcheck = %+v", c.Healthcheck)
	}
	if !reflect.DeepEqual(c.Shell, []string{"/bin/bash", "-c"}) {
		t.Errorf("Shell = %q", c.Shell)
	}
	if !reflect.DeepEqual(c.OnBuild, []string{"RUN echo triggered"}) {
		t.Errorf("OnBuild = %q", c.OnBuild)
	}
	if cf.Author != "someone" {
		t.Errorf("Author = %q", cf.Author)
	}
	if !reflect.DeepEqual(c.Entrypoint, []string{"/entry"}) {
		t.Errorf("Entrypoint = %q", c.Entrypoint)
	}
	// The shell-form CMD uses the SHELL set before it.
	if !reflect.DeepEqual(c.Cmd, []string{"/bin/bash", "-c", "run me"}) {
		t.Errorf("Cmd = %q", c.Cmd)
	}
	// Layers: WORKDIR /app, WORKDIR sub, COPY.
	if n := len(cf.RootFS.DiffIDs); n != 3 {
		t.Errorf("%d layers, want 3", n)
	}
	var nonEmpty int
	for _, h := range cf.History {
		if !h.EmptyLayer {
			nonEmpty++
		}
	}
	if nonEmpty != 3 {
		t.Errorf("%d history entries with a layer, want 3: %+v", nonEmpty, cf.History)
	}
	fs := files(t, res.Image)
	if e, ok := fs["/app/sub/a.txt"]; !ok || e.data != "a\n" || e.h.Uid != 0 || e.h.Mode&0o777 != 0o644 {
		t.Errorf("/app/sub/a.txt = %+v", e)
	}
	// WORKDIR directories are created as the USER of the moment.
	if e := fs["/app"]; e.h == nil || e.h.Uid != 1000 || e.h.Gid != 1000 || e.h.Mode&0o777 != 0o755 {
		t.Errorf("/app header = %+v", fs["/app"].h)
	}
}

func TestEntrypointResetsInheritedCmd(t *testing.T) {
	tb := newTestBuild(t)
	res := tb.mustBuild(`ARG REGISTRY
FROM ${REGISTRY}/busybox
ENTRYPOINT ["echo"]
`, nil)
	c := config(t, res.Image).Config
	if c.Cmd != nil {
		t.Errorf("Cmd = %q, want none: ENTRYPOINT resets the base image's CMD", c.Cmd)
	}
}

func TestRunCacheAndInvalidation(t *testing.T) {
	tb := newTestBuild(t)
	tb.file("in.txt", "one\n")
	df := `ARG REGISTRY
FROM ${REGISTRY}/busybox
RUN echo ran > /ran && rm /etc/base-file
COPY in.txt /in.txt
ENV X=1
RUN cat /in.txt > /copy
`
	res := tb.mustBuild(df, nil)
	fs := files(t, res.Image)
	if fs["/ran"].data != "ran\n" || fs["/copy"].data != "one\n" {
		t.Fatalf("files: /ran=%q /copy=%q", fs["/ran"].data, fs["/copy"].data)
	}
	if _, ok := fs["/etc/base-file"]; ok {
		t.Errorf("/etc/base-file survived its deletion")
	}
	if n := strings.Count(tb.log.String(), "] CACHED"); n != 0 {
		t.Errorf("first build: %d cache hits", n)
	}
	first := config(t, res.Image).RootFS.DiffIDs

	res = tb.mustBuild(df, nil)
	if n := strings.Count(tb.log.String(), "] CACHED"); n != 3 {
		t.Errorf("unchanged rebuild: %d cache hits, want 3\n%s", n, tb.log.String())
	}
	if got := config(t, res.Image).RootFS.DiffIDs; !reflect.DeepEqual(got, first) {
		t.Errorf("cached rebuild changed layers: %v vs %v", got, first)
	}

	// Only an mtime change: still cached.
	if err := os.Chtimes(filepath.Join(tb.ctx, "in.txt"), timeZero, timeZero); err != nil {
		t.Fatal(err)
	}
	tb.mustBuild(df, nil)
	if n := strings.Count(tb.log.String(), "] CACHED"); n != 3 {
		t.Errorf("mtime-only change: %d cache hits, want 3", n)
	}

	// A content change misses from the COPY on.
	tb.file("in.txt", "two\n")
	res = tb.mustBuild(df, nil)
	if n := strings.Count(tb.log.String(), "] CACHED"); n != 1 {
		t.Errorf("content change: %d cache hits, want 1 (the first RUN)", n)
	}
	if got := files(t, res.Image)["/copy"].data; got != "two\n" {
		t.Errorf("/copy = %q after the change", got)
	}

	// --no-cache runs everything.
	tb.mustBuild(df, func(o *Options) { o.NoCache = true })
	if n := strings.Count(tb.log.String(), "] CACHED"); n != 0 {
		t.Errorf("--no-cache: %d cache hits", n)
	}
}

func TestArgsAndTarget(t *testing.T) {
	tb := newTestBuild(t)
	df := `ARG REGISTRY
ARG GLOBAL=g
FROM ${REGISTRY}/busybox AS broken
RUN exit 7

FROM ${REGISTRY}/busybox AS final
ARG GLOBAL
ARG LOCAL=default
ARG OVERRIDDEN=default
RUN echo "$GLOBAL $LOCAL $OVERRIDDEN" > /args
`
	res := tb.mustBuild(df, func(o *Options) {
		o.Target = "final"
		o.BuildArgs["OVERRIDDEN"] = "flag"
		o.BuildArgs["UNUSED"] = "x"
	})
	if got := files(t, res.Image)["/args"].data; got != "g default flag\n" {
		t.Errorf("/args = %q", got)
	}
	if strings.Contains(tb.log.String(), "exit 7") {
		t.Errorf("the stage the target does not need was built:\n%s", tb.log.String())
	}
	if !strings.Contains(tb.log.String(), "[UNUSED] were not consumed") {
		t.Errorf("no warning about the unused build arg:\n%s", tb.log.String())
	}
	// Build args are not persisted in the image's environment.
	for _, e := range config(t, res.Image).Config.Env {
		if strings.HasPrefix(e, "LOCAL=") {
			t.Errorf("build arg leaked into Env: %q", e)
		}
	}
	// BuildKit's history text lists the args a RUN saw.
	h := config(t, res.Image).History
	if last := h[len(h)-1].CreatedBy; !strings.HasPrefix(last, "RUN |3 GLOBAL=g LOCAL=default OVERRIDDEN=flag /bin/sh -c") {
		t.Errorf("RUN history = %q", last)
	}
}

func TestMultiStageCopyFromAndOnbuild(t *testing.T) {
	tb := newTestBuild(t)
	// A base image in the local store with an ONBUILD trigger.
	tb.mustBuild(`ARG REGISTRY
FROM ${REGISTRY}/busybox
ONBUILD RUN echo fired > /onbuild
`, func(o *Options) {
		o.Outputs = []output.Output{&output.OCILayout{Dest: snapshot.ImageDir(o.Root), Tags: []string{"trigger-base"}}}
	})
	res := tb.mustBuild(`ARG REGISTRY
FROM trigger-base AS one
RUN echo one > /one && chown 1000:1000 /one

FROM ${REGISTRY}/busybox
COPY --from=one /one /from-name
COPY --from=0 /onbuild /from-index
COPY --from=${REGISTRY}/busybox /etc/base-file /from-image
`, nil)
	fs := files(t, res.Image)
	if e := fs["/from-name"]; e.data != "one\n" || e.h.Uid != 1000 {
		t.Errorf("/from-name = %q uid %d (COPY --from keeps the owner)", e.data, e.h.Uid)
	}
	if fs["/from-index"].data != "fired\n" {
		t.Errorf("/from-index = %q: the ONBUILD trigger did not run", fs["/from-index"].data)
	}
	if fs["/from-image"].data != "base\n" {
		t.Errorf("/from-image = %q", fs["/from-image"].data)
	}
	if ob := config(t, res.Image).Config.OnBuild; len(ob) != 0 {
		t.Errorf("OnBuild carried over: %q", ob)
	}
}

func TestHeredocRun(t *testing.T) {
	tb := newTestBuild(t)
	res := tb.mustBuild(`ARG REGISTRY
FROM ${REGISTRY}/busybox
RUN <<EOF
echo line1 > /h
echo line2 >> /h
echo line1 > /h
echo line2 >> /h
EOF
RUN <<EOF
#!/bin/sh
echo script > /s
EOF
`, nil)
	fs := files(t, res.Image)
	if fs["/h"].data != "line1\nline2\n" || fs["/s"].data != "script\n" {
		t.Errorf("/h = %q, /s = %q", fs["/h"].data, fs["/s"].data)
	}
	if _, ok := fs["/dev/pipes"]; ok {
		t.Errorf("the heredoc mount leaked into the image")
	}
}

func TestErrorsNameFileAndLine(t *testing.T) {
	tb := newTestBuild(t)
	cases := []struct{ df, want string }{
		{"FROM scratch\nBOGUS x\n", "Dockerfile:2: unknown instruction: BOGUS"},
		{"FROM scratch\nCOPY missing /x\n", `Dockerfile:2: COPY: "/missing": not found`},
		{"FROM scratch\nCOPY --from=nostage /x /x\n", "Dockerfile:2: COPY: --from=nostage"},
		{"FROM " + testRegistry + "/busybox\nRUN echo out; exit 3\n", "Dockerfile:2: RUN: process \"/bin/sh -c echo out; exit 3\" did not complete successfully: exit code 3"},
		{"FROM " + testRegistry + "/nothere\n", "Dockerfile:1: FROM: " + testRegistry + "/nothere: not found in the registry"},
		{"FROM scratch\nSTOPSIGNAL NOPE\n", "Dockerfile:2: STOPSIGNAL"},
	}
	for _, c := range cases {
		_, err := tb.build(c.df, nil)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%q: error %v, want it to contain %q", c.df, err, c.want)
		}
	}
}

func TestExposedPorts(t *testing.T) {
	got, err := exposedPorts(newLex(), []string{"80", "53/UDP", "$P", "1-3/tcp"}, []string{"P=8080"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"1/tcp", "2/tcp", "3/tcp", "53/udp", "80/tcp", "8080/tcp"}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	for _, bad := range []string{"80/xyz", "abc", "5-1", "127.0.0.1:80:80"} {
		if _, err := exposedPorts(newLex(), []string{bad}, nil); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestRunMounts(t *testing.T) {
	tb := newTestBuild(t)
	tb.file("src/main.txt", "from the context\n")
	secretFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(secretFile, []byte("s3cr3t"), 0o600); err != nil {
		t.Fatal(err)
	}
	df := `ARG REGISTRY
FROM ${REGISTRY}/busybox
ARG N=1
RUN --mount=type=cache,target=/cache,id=c1 echo "$N" >> /cache/runs && cat /cache/runs | wc -l > /runs
RUN --mount=type=bind,source=src,target=/mnt cat /mnt/main.txt > /bound
RUN --mount=type=bind,source=src,target=/mnt,rw echo scribble > /mnt/main.txt
RUN --mount=type=tmpfs,target=/scratch touch /scratch/x && test -f /scratch/x
RUN --mount=type=secret,id=token cat /run/secrets/token | wc -c > /secret-len
RUN --mount=type=secret,id=token,env=TOKEN test "$TOKEN" = s3cr3t && echo ok > /secret-env
`
	opts := func(n string) func(*Options) {
		return func(o *Options) {
			o.BuildArgs["N"] = n
			o.Secrets = []Secret{{ID: "token", Src: secretFile}}
		}
	}
	res := tb.mustBuild(df, opts("1"))
	fs := files(t, res.Image)
	if fs["/runs"].data != "1\n" || fs["/bound"].data != "from the context\n" {
		t.Errorf("/runs = %q, /bound = %q", fs["/runs"].data, fs["/bound"].data)
	}
	if strings.TrimSpace(fs["/secret-len"].data) != "6" || fs["/secret-env"].data != "ok\n" {
		t.Errorf("secret: len %q env %q", fs["/secret-len"].data, fs["/secret-env"].data)
	}
	for _, p := range []string{"/cache", "/cache/runs", "/mnt", "/scratch", "/run/secrets/token", "/run/secrets", "/run"} {
		if _, ok := fs[p]; ok {
			t.Errorf("mount %s leaked into the image", p)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(tb.ctx, "src/main.txt")); string(got) != "from the context\n" {
		t.Errorf("a read-write bind changed the build context: %q", got)
	}
	for _, layerTar := range layerContents(t, res.Image) {
		if strings.Contains(layerTar, "s3cr3t") {
			t.Errorf("the secret's value is in a layer")
		}
	}
	// The cache directory persists: a second run (new arg value, so the
	// step re-runs) sees the first run's file.
	res = tb.mustBuild(df, opts("2"))
	if got := files(t, res.Image)["/runs"].data; got != "2\n" {
		t.Errorf("/runs = %q on the second build, want the cache mount to persist", got)
	}
	// A missing required secret is an error naming it.
	_, err := tb.build("FROM "+testRegistry+"/busybox\nRUN --mount=type=secret,id=nope,required cat /run/secrets/nope\n", nil)
	if err == nil || !strings.Contains(err.Error(), `secret "nope" is required`) {
		t.Errorf("missing required secret: %v", err)
	}
}

// layerContents returns each layer's uncompressed tar as a string.
func layerContents(t *testing.T, img v1.Image) []string {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(rc)
		rc.Close()
		out = append(out, string(data))
	}
	return out
}

func TestReproducibleWithSourceDateEpoch(t *testing.T) {
	tb := newTestBuild(t)
	tb.file("a.txt", "a\n")
	if err := os.Chtimes(filepath.Join(tb.ctx, "a.txt"), timeZero, timeZero); err != nil {
		t.Fatal(err)
	}
	df := `ARG REGISTRY
FROM ${REGISTRY}/busybox
WORKDIR /app
COPY a.txt .
RUN mkdir -p /out && echo fixed > /out/file && touch /out/new
ENV X=1
`
	var digests []string
	for i := 0; i < 2; i++ {
		if i > 0 {
			// Another second: every new file gets another mtime.
			time.Sleep(1100 * time.Millisecond)
		}
		tb.root = t.TempDir() // a fresh runner each time: no cache
		res := tb.mustBuild(df, func(o *Options) { o.BuildArgs["SOURCE_DATE_EPOCH"] = "1700000000" })
		digests = append(digests, res.Digest.String())
		cf := config(t, res.Image)
		if cf.Created.Unix() != 1700000000 {
			t.Errorf("created = %v", cf.Created)
		}
		for _, h := range cf.History[1:] {
			if h.Created.Unix() != 1700000000 {
				t.Errorf("history %q created %v", h.CreatedBy, h.Created)
			}
		}
		fs := files(t, res.Image)
		if m := fs["/out/new"].h.ModTime.Unix(); m != 1700000000 {
			t.Errorf("/out/new mtime %d, want clamped to the epoch", m)
		}
		if m := fs["/app/a.txt"].h.ModTime.Unix(); m != timeZero.Unix() {
			t.Errorf("/app/a.txt mtime %d: an older mtime must be kept", m)
		}
	}
	if digests[0] != digests[1] {
		t.Errorf("two builds of the same context at different times: %v, want one digest", digests)
	}
}

func TestRunMountBindFromStage(t *testing.T) {
	tb := newTestBuild(t)
	df := `ARG REGISTRY
FROM ${REGISTRY}/busybox AS src
RUN mkdir /data && echo from-stage > /data/f
FROM ${REGISTRY}/busybox
RUN --mount=type=bind,from=src,source=/data,target=/mnt cat /mnt/f > /copied
RUN --mount=type=bind,from=src,source=/data,target=/mnt,rw echo scribble > /mnt/f && cat /mnt/f > /rw
`
	res := tb.mustBuild(df, nil)
	fs := files(t, res.Image)
	if fs["/copied"].data != "from-stage\n" || fs["/rw"].data != "scribble\n" {
		t.Errorf("/copied = %q, /rw = %q", fs["/copied"].data, fs["/rw"].data)
	}
	if _, ok := fs["/mnt"]; ok {
		t.Errorf("the bind target leaked into the image")
	}
	tb.mustBuild(df, nil)
	if n := strings.Count(tb.log.String(), "] CACHED"); n != 3 {
		t.Errorf("rebuild: %d cache hits, want 3\n%s", n, tb.log.String())
	}
}
