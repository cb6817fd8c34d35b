package integration

import (
	"encoding/base64"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"golang.org/x/crypto/bcrypt"

	"github.com/rbuild/rbuild/internal/testenv"
)

// TestRegistryCredentials runs rbuild against a registry that requires
// basic authentication: the base image is pulled and the result pushed
// with the credentials of ~/.docker/config.json (DOCKER_CONFIG), given in
// it or by a credential helper it names; wrong credentials fail in one
// line, with nothing pushed.
func TestRegistryCredentials(t *testing.T) {
	skipE2E(t)
	bin := h.binary(t)
	dir := t.TempDir()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	htpasswd := filepath.Join(dir, "htpasswd")
	if err := os.WriteFile(htpasswd, []byte("ci:"+string(hash)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	reg, err := testenv.StartRegistry(filepath.Join(dir, "registry"), htpasswd)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Stop()

	// The base image, pushed with the right credentials.
	entries, err := busyboxEntries()
	if err != nil {
		t.Fatal(err)
	}
	layer, err := layerOf(entries, types.OCILayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := imageWith(true, []v1.Layer{layer}, []string{"busybox"}, busyboxConfig(), "amd64", "")
	if err != nil {
		t.Fatal(err)
	}
	good := &authn.Basic{Username: "ci", Password: "s3cret"}
	baseRef, _ := name.ParseReference(reg.Addr+"/private/busybox:latest", name.Insecure)
	if err := remote.Write(baseRef, img, remote.WithAuth(good)); err != nil {
		t.Fatal(err)
	}

	ctxDir := filepath.Join(dir, "context")
	if err := os.MkdirAll(ctxDir, 0o755); err != nil {
		t.Fatal(err)
	}
	df := "FROM " + reg.Addr + "/private/busybox\nRUN echo authed > /authed\n"
	if err := os.WriteFile(filepath.Join(ctxDir, "Dockerfile"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}
	dockerConfig := func(user, pass string) string {
		d := filepath.Join(dir, "docker-"+user+"-"+pass)
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		auth := base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))
		cfg := fmt.Sprintf(`{"auths":{%q:{"auth":%q}}}`, reg.Addr, auth)
		if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		return d
	}
	// A credential helper (credHelpers in config.json): a program
	// docker-credential-NAME on PATH that answers "get" with the secret.
	helperDir := filepath.Join(dir, "helper-bin")
	if err := os.MkdirAll(helperDir, 0o755); err != nil {
		t.Fatal(err)
	}
	helper := fmt.Sprintf("#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\necho \"$server\" >> %s/helper-asked\nprintf '{\"ServerURL\":\"%%s\",\"Username\":\"ci\",\"Secret\":\"s3cret\"}' \"$server\"\n", dir)
	if err := os.WriteFile(filepath.Join(helperDir, "docker-credential-rbtest"), []byte(helper), 0o755); err != nil {
		t.Fatal(err)
	}
	helperConfig := filepath.Join(dir, "docker-helper")
	if err := os.MkdirAll(helperConfig, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(helperConfig, "config.json"), []byte(fmt.Sprintf(`{"credHelpers":{%q:"rbtest"}}`, reg.Addr)), 0o600); err != nil {
		t.Fatal(err)
	}

	build := func(configDir, tag string) (string, error) {
		cmd := exec.Command(bin, "build", "--root", filepath.Join(dir, "state-"+tag), "-t", reg.Addr+"/private/app:"+tag, ctxDir)
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+configDir, "PATH="+helperDir+":"+os.Getenv("PATH"))
		out, err := cmd.CombinedOutput()
		return string(out), err
	}

	// Credentials from the helper: pulled and pushed, and the helper was
	// asked for this registry.
	if out, err := build(helperConfig, "helper"); err != nil {
		t.Fatalf("build with a credential helper: %v\n%s", err, out)
	}
	viaHelper, _ := name.ParseReference(reg.Addr+"/private/app:helper", name.Insecure)
	if _, err := remote.Image(viaHelper, remote.WithAuth(good)); err != nil {
		t.Errorf("the image built with the helper's credentials was not pushed: %v", err)
	}
	if asked, err := os.ReadFile(filepath.Join(dir, "helper-asked")); err != nil || !strings.Contains(string(asked), reg.Addr) {
		t.Errorf("the credential helper was not asked for %s: %q, %v", reg.Addr, asked, err)
	}

	// Right credentials: pulled and pushed.
	if out, err := build(dockerConfig("ci", "s3cret"), "good"); err != nil {
		t.Fatalf("build with the right credentials: %v\n%s", err, out)
	}
	pushed, _ := name.ParseReference(reg.Addr+"/private/app:good", name.Insecure)
	if _, err := remote.Image(pushed, remote.WithAuth(good)); err != nil {
		t.Errorf("the image was not pushed: %v", err)
	}

	// Wrong credentials: a one-line error naming the cause; nothing pushed.
	out, err := build(dockerConfig("ci", "wrong"), "bad")
	if err == nil {
		t.Fatalf("build with wrong credentials succeeded:\n%s", out)
	}
	var errLine string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if strings.HasPrefix(l, "error:") {
			if errLine != "" {
				t.Errorf("more than one error line:\n%s", out)
			}
			errLine = l
		}
	}
	t.Logf("wrong credentials: %s", errLine)
	if !strings.Contains(errLine, "Dockerfile:1") || !strings.Contains(errLine, "access denied") {
		t.Errorf("error line %q, want Dockerfile:1 and access denied\n%s", errLine, out)
	}
	bad, _ := name.ParseReference(reg.Addr+"/private/app:bad", name.Insecure)
	if _, err := remote.Head(bad, remote.WithAuth(good)); err == nil {
		t.Errorf("a failed build left a tag in the registry")
	}
}
