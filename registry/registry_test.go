package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// testRegistry serves go-containerregistry's in-memory registry on
// loopback and counts blob upload sessions. It returns the host:port.
type testRegistry struct {
	host    string
	mu      sync.Mutex
	uploads int // POST .../blobs/uploads/
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

func randomImage(t *testing.T, platform v1.Platform) v1.Image {
	t.Helper()
	img, err := random.Image(256, 2)
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = platform.OS, platform.Architecture, platform.Variant
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

var (
	amd64 = v1.Platform{OS: "linux", Architecture: "amd64"}
	arm64 = v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}
	s390x = v1.Platform{OS: "linux", Architecture: "s390x"}
)

func TestImagePlain(t *testing.T) {
	reg := newTestRegistry(t)
	c := New(Options{})
	ref, err := c.ParseReference(reg.host + "/team/app:1.0")
	if err != nil {
		t.Fatal(err)
	}
	img := randomImage(t, amd64)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	got, err := c.Image(context.Background(), ref, amd64)
	if err != nil {
		t.Fatalf("Image: %v", err)
	}
	if digestOf(t, got) != digestOf(t, img) {
		t.Errorf("digest %s, want %s", digestOf(t, got), digestOf(t, img))
	}
	// The layers come with it.
	layers, err := got.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Compressed()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, rc); err != nil {
		t.Errorf("reading a layer: %v", err)
	}
	rc.Close()

	// By digest too.
	dref, err := c.ParseReference(reg.host + "/team/app@" + digestOf(t, img).String())
	if err != nil {
		t.Fatal(err)
	}
	if got, err := c.Image(context.Background(), dref, amd64); err != nil || digestOf(t, got) != digestOf(t, img) {
		t.Errorf("Image by digest: %v", err)
	}
}

func pushIndex(t *testing.T, ref name.Reference, imgs map[*v1.Platform]v1.Image) v1.ImageIndex {
	t.Helper()
	idx := mutate.IndexMediaType(empty.Index, types.OCIImageIndex)
	var adds []mutate.IndexAddendum
	for p, img := range imgs {
		adds = append(adds, mutate.IndexAddendum{Add: img, Descriptor: v1.Descriptor{Platform: p}})
	}
	idx = mutate.AppendManifests(idx, adds...)
	if err := remote.WriteIndex(ref, idx); err != nil {
		t.Fatal(err)
	}
	return idx
}

func TestImageIndex(t *testing.T) {
	reg := newTestRegistry(t)
	c := New(Options{})
	ref, err := c.ParseReference(reg.host + "/multi:latest")
	if err != nil {
		t.Fatal(err)
	}
	amdImg, armImg := randomImage(t, amd64), randomImage(t, arm64)
	attestation := randomImage(t, v1.Platform{OS: "unknown", Architecture: "unknown"})
	pushIndex(t, ref, map[*v1.Platform]v1.Image{
		&amd64:                                   amdImg,
		&arm64:                                   armImg,
		{OS: "unknown", Architecture: "unknown"}: attestation,
	})
	ctx := context.Background()

	for _, c2 := range []struct {
		want     v1.Platform
		expected v1.Image
	}{
		{amd64, amdImg},
		{arm64, armImg},
		{v1.Platform{OS: "linux", Architecture: "arm64"}, armImg}, // no variant asked: any arm64
	} {
		got, err := c.Image(ctx, ref, c2.want)
		if err != nil {
			t.Errorf("Image for %s: %v", c2.want.String(), err)
			continue
		}
		if digestOf(t, got) != digestOf(t, c2.expected) {
			t.Errorf("Image for %s: digest %s, want %s", c2.want.String(), digestOf(t, got), digestOf(t, c2.expected))
		}
		cf, err := got.ConfigFile()
		if err != nil || cf.Architecture != c2.want.Architecture {
			t.Errorf("Image for %s: config architecture %q, %v", c2.want.String(), cf.Architecture, err)
		}
	}

	// arm64 without a variant in the index is v8.
	plainArm := v1.Platform{OS: "linux", Architecture: "arm64"}
	armRef, err := c.ParseReference(reg.host + "/plain-arm:latest")
	if err != nil {
		t.Fatal(err)
	}
	pushIndex(t, armRef, map[*v1.Platform]v1.Image{&plainArm: armImg, &amd64: amdImg})
	if got, err := c.Image(ctx, armRef, arm64); err != nil || digestOf(t, got) != digestOf(t, armImg) {
		t.Errorf("linux/arm64/v8 against an index listing linux/arm64: %v", err)
	}
	if _, err := c.Image(ctx, armRef, v1.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}); err == nil {
		t.Error("linux/arm/v7 matched an index without it")
	}

	_, err = c.Image(ctx, ref, s390x)
	if err == nil {
		t.Fatal("Image for a platform missing from the index succeeded")
	}
	msg := err.Error()
	for _, want := range []string{ref.String(), "linux/s390x", "linux/amd64", "linux/arm64/v8"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q should mention %s", msg, want)
		}
	}
}

func TestWrite(t *testing.T) {
	reg := newTestRegistry(t)
	c := New(Options{Jobs: 2})
	ctx := context.Background()
	ref, err := c.ParseReference(reg.host + "/pushed:v1")
	if err != nil {
		t.Fatal(err)
	}
	img := randomImage(t, amd64)
	if err := c.Write(ctx, ref, img); err != nil {
		t.Fatalf("Write: %v", err)
	}
	got, err := remote.Image(ref)
	if err != nil {
		t.Fatalf("reading the pushed image back: %v", err)
	}
	if digestOf(t, got) != digestOf(t, img) {
		t.Errorf("pushed digest %s, want %s", digestOf(t, got), digestOf(t, img))
	}
	first := reg.uploadCount()
	if first != 3 { // two layers and the config
		t.Errorf("first push started %d blob uploads, want 3", first)
	}

	// Pushing again (another tag) uploads no blob: the registry has them.
	ref2, err := c.ParseReference(reg.host + "/pushed:v2")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Write(ctx, ref2, img); err != nil {
		t.Fatalf("second Write: %v", err)
	}
	if n := reg.uploadCount() - first; n != 0 {
		t.Errorf("second push of the same image started %d blob uploads, want 0", n)
	}
	if _, err := remote.Head(ref2); err != nil {
		t.Errorf("second tag missing: %v", err)
	}
}

func TestExplainNotFound(t *testing.T) {
	reg := newTestRegistry(t)
	c := New(Options{})
	ctx := context.Background()
	// Missing repository and missing tag in an existing repository.
	existing, _ := c.ParseReference(reg.host + "/there:v1")
	if err := remote.Write(existing, randomImage(t, amd64)); err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{reg.host + "/nothing-here:latest", reg.host + "/there:v2"} {
		ref, err := c.ParseReference(s)
		if err != nil {
			t.Fatal(err)
		}
		_, err = c.Image(ctx, ref, amd64)
		if err == nil {
			t.Fatalf("Image of %s succeeded", s)
		}
		if !strings.Contains(err.Error(), "not found") || !strings.Contains(err.Error(), s) {
			t.Errorf("Image of %s: %q, want the reference and \"not found\"", s, err)
		}
	}
}

func TestExplainErrorCodes(t *testing.T) {
	cases := []struct {
		err  error
		want string
	}{
		{&transport.Error{StatusCode: http.StatusNotFound}, "not found"},
		{&transport.Error{StatusCode: http.StatusBadRequest, Errors: []transport.Diagnostic{{Code: transport.ManifestUnknownErrorCode}}}, "not found"},
		{&transport.Error{StatusCode: http.StatusBadRequest, Errors: []transport.Diagnostic{{Code: transport.NameUnknownErrorCode}}}, "not found"},
		{&transport.Error{StatusCode: http.StatusUnauthorized}, "access denied"},
		{&transport.Error{StatusCode: http.StatusForbidden}, "access denied"},
		{&transport.Error{StatusCode: http.StatusBadRequest, Errors: []transport.Diagnostic{{Code: transport.DeniedErrorCode}}}, "access denied"},
		{&transport.Error{StatusCode: http.StatusBadRequest, Errors: []transport.Diagnostic{{Code: transport.UnauthorizedErrorCode}}}, "access denied"},
		{fmt.Errorf("wrapped: %w", &transport.Error{StatusCode: http.StatusNotFound}), "not found"},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connection refused")}, "registry unreachable"},
	}
	for _, c := range cases {
		got := Explain("reg.example/app:1", c.err)
		if !strings.HasPrefix(got.Error(), "reg.example/app:1: ") || !strings.Contains(got.Error(), c.want) {
			t.Errorf("Explain(%v) = %q, want the reference and %q", c.err, got, c.want)
		}
	}
	// Other errors keep their text, on one line.
	got := Explain("r", errors.New("something\n  went\r\nwrong"))
	if got.Error() != "r: something went wrong" {
		t.Errorf("multi-line error: %q", got)
	}
	base := errors.New("plain")
	if got := Explain("r", base); got.Error() != "r: plain" || !errors.Is(got, base) {
		t.Errorf("single-line error %q should wrap the original", got)
	}
	// A 500 is neither not-found nor denied.
	got = Explain("r", &transport.Error{StatusCode: http.StatusInternalServerError})
	if strings.Contains(got.Error(), "not found") || strings.Contains(got.Error(), "access denied") {
		t.Errorf("500: %q", got)
	}
}

// staticKeychain returns the same credentials for every registry.
type staticKeychain struct{ user, pass string }

func (k staticKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	return &authn.Basic{Username: k.user, Password: k.pass}, nil
}

func TestExplainUnauthorized(t *testing.T) {
	var mu sync.Mutex
	var sawCreds bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if u, p, ok := r.BasicAuth(); ok && u == "alice" && p == "wrong" {
			mu.Lock()
			sawCreds = true
			mu.Unlock()
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`)
	}))
	defer srv.Close()
	host := strings.TrimPrefix(srv.URL, "http://")
	c := New(Options{Keychain: staticKeychain{"alice", "wrong"}})
	ref, err := c.ParseReference(host + "/private:latest")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Image(context.Background(), ref, amd64)
	if err == nil {
		t.Fatal("Image with wrong credentials succeeded")
	}
	if !strings.Contains(err.Error(), "access denied") || !strings.Contains(err.Error(), ref.String()) {
		t.Errorf("error %q, want the reference and \"access denied\"", err)
	}
	if strings.ContainsAny(err.Error(), "\n\r") {
		t.Errorf("error spans lines: %q", err)
	}
	mu.Lock()
	saw := sawCreds
	mu.Unlock()
	if !saw {
		t.Error("the keychain's credentials were never sent")
	}

	// Pushing is denied the same way.
	if err := c.Write(context.Background(), ref, randomImage(t, amd64)); err == nil || !strings.Contains(err.Error(), "access denied") {
		t.Errorf("Write with wrong credentials: %v", err)
	}
}

func TestExplainUnreachable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now: connection refused
	c := New(Options{})
	ref, err := c.ParseReference(addr + "/app:latest")
	if err != nil {
		t.Fatal(err)
	}
	_, err = c.Image(context.Background(), ref, amd64)
	if err == nil {
		t.Fatal("Image from a closed port succeeded")
	}
	if !strings.Contains(err.Error(), "registry unreachable") || !strings.Contains(err.Error(), addr) {
		t.Errorf("error %q, want \"registry unreachable\" and the address", err)
	}
	if err := c.Write(context.Background(), ref, randomImage(t, amd64)); err == nil || !strings.Contains(err.Error(), "registry unreachable") {
		t.Errorf("Write to a closed port: %v", err)
	}
}

func TestHasRegistryHost(t *testing.T) {
	cases := map[string]bool{
		"app":                          false,
		"app:1.0":                      false,
		"team/app":                     false,
		"team/app:1.0":                 false,
		"library/alpine@sha256:abc":    false,
		"registry.example.com/app":     true,
		"registry.example.com/a/b:tag": true,
		"host:5000/app":                true,
		"localhost/app":                true,
		"localhost:5000/app":           true,
		"127.0.0.1:5000/app":           true,
		"docker.io/library/app":        true,
		"[::1]:5000/app":               true,
		"localhost":                    false,
		"registry.example.com":         false,
	}
	for in, want := range cases {
		if got := HasRegistryHost(in); got != want {
			t.Errorf("HasRegistryHost(%q) = %v, want %v", in, got, want)
		}
	}
}

func TestParseReference(t *testing.T) {
	c := New(Options{Insecure: []string{"plain.example:5000", "other.example"}})
	cases := []struct {
		in, name, scheme string
	}{
		{"plain.example:5000/app:1", "plain.example:5000/app:1", "http"},
		{"other.example/team/app", "other.example/team/app:latest", "http"},
		{"plain.example/app", "plain.example/app:latest", "https"}, // port differs: not listed
		{"secure.example/app:2", "secure.example/app:2", "https"},
		{"localhost:5000/app", "localhost:5000/app:latest", "http"}, // loopback is always plain
		{"127.0.0.1:5000/app", "127.0.0.1:5000/app:latest", "http"},
		{"app", "index.docker.io/library/app:latest", "https"},
	}
	for _, cc := range cases {
		ref, err := c.ParseReference(cc.in)
		if err != nil {
			t.Errorf("ParseReference(%q): %v", cc.in, err)
			continue
		}
		if ref.Name() != cc.name {
			t.Errorf("ParseReference(%q).Name() = %q, want %q", cc.in, ref.Name(), cc.name)
		}
		if got := ref.Context().Scheme(); got != cc.scheme {
			t.Errorf("ParseReference(%q): scheme %s, want %s", cc.in, got, cc.scheme)
		}
	}
	// Digest references keep their digest.
	d := "sha256:" + strings.Repeat("a", 64)
	ref, err := c.ParseReference("plain.example:5000/app@" + d)
	if err != nil || ref.Identifier() != d || ref.Context().Scheme() != "http" {
		t.Errorf("digest reference: %v %v", ref, err)
	}
	for _, bad := range []string{"", "UPPER/case", "app:bad tag", "app@sha256:short"} {
		if _, err := c.ParseReference(bad); err == nil {
			t.Errorf("ParseReference(%q) succeeded", bad)
		}
	}
}

func TestImageName(t *testing.T) {
	cases := map[string]string{
		"app":                                   "docker.io/library/app:latest",
		"app:1.0":                               "docker.io/library/app:1.0",
		"team/app":                              "docker.io/team/app:latest",
		"docker.io/library/app:2":               "docker.io/library/app:2",
		"index.docker.io/library/app":           "docker.io/library/app:latest",
		"registry.example.com/app":              "registry.example.com/app:latest",
		"localhost:5000/a/b:c":                  "localhost:5000/a/b:c",
		"app@sha256:" + strings.Repeat("b", 64): "docker.io/library/app@sha256:" + strings.Repeat("b", 64),
	}
	for in, want := range cases {
		ref, err := name.ParseReference(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		if got := ImageName(ref); got != want {
			t.Errorf("ImageName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestNewDefaults(t *testing.T) {
	c := New(Options{})
	if c.jobs <= 0 || c.keychain == nil {
		t.Errorf("defaults: jobs %d keychain %v", c.jobs, c.keychain)
	}
	if New(Options{Jobs: 3}).jobs != 3 {
		t.Error("Jobs option ignored")
	}
}
