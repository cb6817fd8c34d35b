package integration

// Command-line behaviour that is not about Dockerfile semantics: outputs,
// ID files, quiet mode, --push=false, the local cache.

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/rbuild/rbuild/internal/testenv"
)

// adhocCase writes a one-off case (Dockerfile and context files) into a
// temporary directory.
func adhocCase(t *testing.T, name, dockerfile string, files map[string]string, args ...string) *Case {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(filepath.Join(dir, "context"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(dockerfile), 0o644); err != nil {
		t.Fatal(err)
	}
	for p, content := range files {
		if err := os.WriteFile(filepath.Join(dir, "context", p), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return &Case{Name: name, Dir: dir, Dockerfile: "Dockerfile", Description: name, Args: args}
}

// rootRun prepares a root build of c against the harness's registry.
func rootRun(t *testing.T, c *Case) *buildRun {
	t.Helper()
	skipE2E(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	_, bases := h.registry(t)
	work := h.workDir(t)
	if err := os.MkdirAll(filepath.Join(work, "runs"), 0o755); err != nil {
		t.Fatal(err)
	}
	return prepareRun(t, work, c, "root", nil, bases)
}

// cliBuild prepares and runs a root build of c; it fails the test when the
// build fails.
func cliBuild(t *testing.T, c *Case) *buildRun {
	t.Helper()
	r := rootRun(t, c)
	bin := h.binary(t)
	release := h.acquire()
	r.run(bin)
	release()
	if r.Err != nil {
		t.Fatalf("build failed\n%s", r.report())
	}
	return r
}

const cliDockerfile = `ARG REGISTRY
FROM ${REGISTRY}/busybox
COPY hello.txt /hello.txt
RUN echo built > /built.txt
CMD ["cat", "/hello.txt"]
`

func TestCLIVersion(t *testing.T) {
	skipE2E(t)
	bin := h.binary(t)
	out, err := exec.Command(bin, "version").CombinedOutput()
	if err != nil {
		t.Fatalf("rbuild version: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "rbuild") {
		t.Errorf("rbuild version printed %q", out)
	}
	// A missing context is a usage error with a non-zero status.
	out, err = exec.Command(bin, "build").CombinedOutput()
	if err == nil || !exitedNonZero(err) {
		t.Errorf("rbuild build without a context: %v\n%s", err, out)
	}
}

// TestCLIOutputs checks --iidfile, --digestfile, -q and both --output
// types against the pushed image.
func TestCLIOutputs(t *testing.T) {
	c := adhocCase(t, "cli-outputs", cliDockerfile, map[string]string{"hello.txt": "hello\n"},
		"--iidfile", "{{OUT}}/iid", "--digestfile", "{{OUT}}/digest", "-q",
		"--output", "type=oci,dest={{OUT}}/oci", "--output", "type=docker,dest={{OUT}}/docker.tar")
	r := cliBuild(t, c)

	ref, _ := name.ParseReference(r.Tag, name.Insecure)
	pushed, err := remote.Image(ref)
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := pushed.Digest()
	configDigest, _ := pushed.ConfigName()

	read := func(p string) string {
		b, err := os.ReadFile(filepath.Join(r.Out, p))
		if err != nil {
			t.Error(err)
		}
		return strings.TrimSpace(string(b))
	}
	if got := read("digest"); got != digest.String() {
		t.Errorf("--digestfile: %q, the registry has %s", got, digest)
	}
	// Docker's image ID is the config digest.
	if got := read("iid"); got != configDigest.String() {
		t.Errorf("--iidfile: %q, want the config digest %s", got, configDigest)
	}
	if got := strings.TrimSpace(r.Stdout); got != configDigest.String() {
		t.Errorf("-q printed %q on stdout, want only the image ID %s", r.Stdout, configDigest)
	}

	check := func(what string, img v1.Image) {
		cd, err := img.ConfigName()
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		if cd != configDigest {
			t.Errorf("%s: config %s, the pushed image has %s", what, cd, configDigest)
		}
		v, err := viewImage(img)
		if err != nil {
			t.Errorf("%s: %v", what, err)
			return
		}
		want := &Case{Layers: intp(3), Files: map[string]FileExpect{
			"/hello.txt": {Content: strp("hello\n")}, "/built.txt": {Content: strp("built\n")},
		}}
		for _, p := range checkImage(want, v, nil) {
			t.Errorf("%s: %s", what, p)
		}
	}
	if idx, err := layout.ImageIndexFromPath(filepath.Join(r.Out, "oci")); err != nil {
		t.Errorf("--output type=oci: %v", err)
	} else if im, err := idx.IndexManifest(); err != nil || len(im.Manifests) == 0 {
		t.Errorf("--output type=oci: index: %v, %d manifests", err, len(im.Manifests))
	} else if img, err := idx.Image(im.Manifests[0].Digest); err != nil {
		t.Errorf("--output type=oci: %v", err)
	} else {
		check("--output type=oci", img)
	}
	if img, err := tarball.ImageFromPath(filepath.Join(r.Out, "docker.tar"), nil); err != nil {
		t.Errorf("--output type=docker: %v", err)
	} else {
		check("--output type=docker", img)
	}
	if t.Failed() {
		t.Log(r.report())
	}
}

// TestCLIPushFalse builds with a registry tag but --push=false: nothing
// may reach the registry.
func TestCLIPushFalse(t *testing.T) {
	c := adhocCase(t, "cli-push-false", cliDockerfile, map[string]string{"hello.txt": "hello\n"},
		"--push=false", "--output", "type=oci,dest={{OUT}}/oci")
	r := cliBuild(t, c)
	if err := checkAbsentFromRegistry(r.Tag); err != nil {
		t.Error(err)
	}
	if _, err := layout.ImageIndexFromPath(filepath.Join(r.Out, "oci")); err != nil {
		t.Errorf("--output type=oci: %v", err)
	}
}

// TestCLIRebuildUsesCache builds the same thing twice with one state
// directory: the second build must produce the same layers.
func TestCLIRebuildUsesCache(t *testing.T) {
	c := adhocCase(t, "cli-rebuild", cliDockerfile, map[string]string{"hello.txt": "hello\n"})
	r1 := cliBuild(t, c)
	img1, err := pullImage(r1.Tag)
	if err != nil {
		t.Fatal(err)
	}
	// Second build: same state directory, different tag.
	r2 := *r1
	r2.Tag = strings.Replace(r1.Tag, ":root", ":root-again", 1)
	r2.Args = append([]string(nil), r1.Args...)
	for i, a := range r2.Args {
		if a == r1.Tag {
			r2.Args[i] = r2.Tag
		}
	}
	release := h.acquire()
	r2.run(h.binary(t))
	release()
	if r2.Err != nil {
		t.Fatalf("second build failed\n%s", r2.report())
	}
	img2, err := pullImage(r2.Tag)
	if err != nil {
		t.Fatal(err)
	}
	for i := range img1.Layers {
		d1, _ := img1.Layers[i].Digest()
		if i >= len(img2.Layers) {
			t.Fatalf("second build has %d layers, first %d", len(img2.Layers), len(img1.Layers))
		}
		d2, _ := img2.Layers[i].Digest()
		if d1 != d2 {
			t.Errorf("layer %d: %s then %s: the rebuild did not reuse the cached layer", i, d1, d2)
		}
	}
	t.Logf("first build %s, cached rebuild %s", r1.Took.Round(1e6), r2.Took.Round(1e6))
}

// TestCLILoopbackRegistryIsInsecure builds and pushes without
// --insecure-registry: like Docker, registries on 127.0.0.0/8 are reached
// over plain HTTP by default.
func TestCLILoopbackRegistryIsInsecure(t *testing.T) {
	c := adhocCase(t, "cli-loopback", cliDockerfile, map[string]string{"hello.txt": "hello\n"})
	r := rootRun(t, c)
	bin := h.binary(t)
	var args []string
	for i := 0; i < len(r.Args); i++ {
		if r.Args[i] == "--insecure-registry" {
			i++
			continue
		}
		args = append(args, r.Args[i])
	}
	r.Args = args
	release := h.acquire()
	r.run(bin)
	release()
	if r.Err != nil {
		t.Fatalf("build without --insecure-registry failed\n%s", r.report())
	}
	if _, err := pullImage(r.Tag); err != nil {
		t.Error(err)
	}
}

// TestCLIPushMountsBaseLayers: a push to the registry the base image came
// from mounts the base layers into the new repository (as Docker and
// buildah do) instead of uploading them again, even when a RUN step made
// rbuild download them. Read from the registry's access log.
func TestCLIPushMountsBaseLayers(t *testing.T) {
	c := adhocCase(t, "cli-mount", cliDockerfile, map[string]string{"hello.txt": "hello\n"})
	r := cliBuild(t, c)
	img, err := pullImage(r.Tag)
	if err != nil {
		t.Fatal(err)
	}
	reg, bases := h.registry(t)
	if len(img.Layers) <= bases.BusyboxLayers {
		t.Fatalf("%d layers, the base alone has %d", len(img.Layers), bases.BusyboxLayers)
	}
	ref, err := name.ParseReference(r.Tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	repo := ref.Context().RepositoryStr()
	log := reg.AccessLog()
	for i := 0; i < bases.BusyboxLayers; i++ {
		d, err := img.Layers[i].Digest()
		if err != nil {
			t.Fatal(err)
		}
		if mounted, uploaded := blobArrival(log, repo, d); !mounted || uploaded {
			t.Errorf("base layer %d (%s) in %s: mounted %v, uploaded %v; want mounted only", i, d, repo, mounted, uploaded)
		}
	}
	if t.Failed() {
		t.Logf("access log:\n%s", testenv.Tail(log, 40))
	}
}

// blobArrival reads the registry's access log: whether blob d came into
// repo by a cross-repository mount (POST ...?mount=d answered 201), and
// whether it was uploaded (PUT ...?digest=d).
func blobArrival(log, repo string, d v1.Hash) (mounted, uploaded bool) {
	enc := "sha256%3A" + d.Hex
	for _, line := range strings.Split(log, "\n") {
		if !strings.Contains(line, "/v2/"+repo+"/blobs/uploads/") {
			continue
		}
		if strings.Contains(line, `"POST `) && strings.Contains(line, "mount="+enc) && strings.Contains(line, `" 201 `) {
			mounted = true
		}
		if strings.Contains(line, `"PUT `) && strings.Contains(line, "digest="+enc) {
			uploaded = true
		}
	}
	return mounted, uploaded
}

// TestCLICacheExportMountsImageLayers: --cache-to a repository of the
// registry the image was pushed to mounts the image's layers from it
// rather than uploading them a second time.
func TestCLICacheExportMountsImageLayers(t *testing.T) {
	reg, bases := h.registry(t)
	cacheRepo := "cli-cache-export/cache"
	c := adhocCase(t, "cli-cache-export", cliDockerfile, map[string]string{"hello.txt": "hello\n"},
		"--cache-to", "type=registry,ref="+bases.Registry+"/"+cacheRepo+",mode=max")
	r := cliBuild(t, c)
	img, err := pullImage(r.Tag)
	if err != nil {
		t.Fatal(err)
	}
	log := reg.AccessLog()
	built := img.Layers[bases.BusyboxLayers:]
	if len(built) == 0 {
		t.Fatal("the build added no layer")
	}
	for i, l := range built {
		d, err := l.Digest()
		if err != nil {
			t.Fatal(err)
		}
		if mounted, uploaded := blobArrival(log, cacheRepo, d); !mounted || uploaded {
			t.Errorf("built layer %d (%s) in the cache repository: mounted %v, uploaded %v; want mounted only", i, d, mounted, uploaded)
		}
	}
	if t.Failed() {
		t.Logf("access log:\n%s", testenv.Tail(log, 40))
	}
}

// TestCLIUserMissingRuntimeDir: a rootless build whose XDG_RUNTIME_DIR
// names a directory that does not exist (a variable kept by su or sudo, or
// set by a CI image) still builds: rbuild needs no runtime directory of
// the user's and makes its own in the state directory.
func TestCLIUserMissingRuntimeDir(t *testing.T) {
	skipE2E(t)
	acct := h.testUser(t)
	_, bases := h.registry(t)
	work := h.workDir(t)
	if err := os.MkdirAll(filepath.Join(work, "runs"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := adhocCase(t, "cli-missing-xdg", cliDockerfile, map[string]string{"hello.txt": "hello\n"})
	r := prepareRun(t, work, c, "user", acct, bases)
	r.Env = []string{"XDG_RUNTIME_DIR=" + filepath.Join(r.Dir, "does-not-exist")}
	release := h.acquire()
	r.run(h.binary(t))
	release()
	if r.Err != nil {
		t.Fatalf("build failed\n%s", r.report())
	}
	if _, err := pullImage(r.Tag); err != nil {
		t.Fatal(err)
	}
}
