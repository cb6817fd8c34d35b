package builder

import (
	"archive/tar"
	"bytes"
	"io"
	"log"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/rbuild/rbuild/executor"
	"go.podman.io/storage/pkg/reexec"
)

// testRegistry is go-containerregistry's in-memory registry on loopback,
// holding a busybox base image, or "" when busybox-static is missing.
var testRegistry string

func TestMain(m *testing.M) {
	// RUN re-executes the test binary as the sandbox's init.
	if reexec.Init() {
		return
	}
	executor.Init()
	srv := httptest.NewServer(registry.New(registry.Logger(log.New(io.Discard, "", 0))))
	testRegistry = strings.TrimPrefix(srv.URL, "http://")
	if err := pushBusybox(testRegistry + "/busybox:latest"); err != nil {
		log.Fatalf("pushing the busybox base image: %v", err)
	}
	code := m.Run()
	srv.Close()
	os.Exit(code)
}

// pushBusybox makes a one-layer busybox image from the host's
// busybox-static binary.
func pushBusybox(ref string) error {
	bb, err := exec.LookPath("busybox")
	if err != nil {
		return err
	}
	data, err := os.ReadFile(bb)
	if err != nil {
		return err
	}
	out, err := exec.Command(bb, "--list").Output()
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dir := func(n string, mode int64) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: n, Mode: mode})
	}
	file := func(n string, mode int64, content []byte) {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: n, Mode: mode, Size: int64(len(content))})
		tw.Write(content)
	}
	dir("bin/", 0o755)
	dir("etc/", 0o755)
	dir("tmp/", 0o1777)
	dir("root/", 0o700)
	file("bin/busybox", 0o755, data)
	for _, a := range strings.Fields(string(out)) {
		if a != "busybox" {
			tw.WriteHeader(&tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/" + a, Linkname: "busybox", Mode: 0o777})
		}
	}
	file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n"))
	file("etc/group", 0o644, []byte("root:x:0:\napp:x:1000:\nnogroup:x:65534:\n"))
	file("etc/base-file", 0o644, []byte("base\n"))
	tw.Close()
	layer, err := tarball.LayerFromReader(bytes.NewReader(buf.Bytes()), tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return err
	}
	img, err = mutate.Config(img, v1.Config{Env: []string{"PATH=/bin"}, Cmd: []string{"sh"}})
	if err != nil {
		return err
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return err
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return err
	}
	return remote.Write(r, img)
}
