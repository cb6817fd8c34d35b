package integration

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/rbuild/rbuild/internal/testenv"
)

// defaultPath is Docker's default PATH for Linux images.
const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// busyboxBinary is the static busybox of Debian's busybox-static.
const busyboxBinary = "/bin/busybox"

// baseImages are the images the harness pushes before any case runs.
type baseImages struct {
	Registry string
	// BusyboxDigest is the manifest digest of REGISTRY/busybox:latest.
	BusyboxDigest string
	// BusyboxLayers is the number of layers of busybox:latest.
	BusyboxLayers int
	// Known holds the digests of every base layer, so that checks can tell
	// layers a build added from inherited ones.
	Known map[v1.Hash]bool
}

// The users and groups of the busybox image. "web" has a primary group
// (users, 100) that differs from its uid, to tell a name lookup (BuildKit
// takes the passwd gid) from a uid-only rule.
const (
	busyboxPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
app:x:1000:1000:app:/home/app:/bin/sh
web:x:1001:100:web:/home/web:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
`
	busyboxGroup = `root:x:0:
daemon:x:1:
users:x:100:
app:x:1000:
nogroup:x:65534:
`
)

// busyboxEntries returns the file system of the busybox base image: the
// static binary, a symlink per applet, a few users and some files that
// whiteout cases delete.
func busyboxEntries() ([]tentry, error) {
	bin, err := os.ReadFile(busyboxBinary)
	if err != nil {
		return nil, fmt.Errorf("%w (install busybox-static)", err)
	}
	out, err := exec.Command(busyboxBinary, "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	entries := []tentry{
		dirEntry("bin", 0o755, 0, 0),
		dirEntry("etc", 0o755, 0, 0),
		dirEntry("home", 0o755, 0, 0),
		dirEntry("home/app", 0o755, 1000, 1000),
		dirEntry("root", 0o700, 0, 0),
		dirEntry("tmp", 0o1777, 0, 0),
		dirEntry("usr", 0o755, 0, 0),
		dirEntry("usr/bin", 0o755, 0, 0),
		dirEntry("usr/sbin", 0o755, 0, 0),
		dirEntry("usr/share", 0o755, 0, 0),
		dirEntry("usr/share/rbuild", 0o755, 0, 0),
		dirEntry("var", 0o755, 0, 0),
		dirEntry("var/log", 0o755, 0, 0),
		{Path: "bin/busybox", Type: tar.TypeReg, Mode: 0o755, Content: bin},
		fileEntry("etc/passwd", 0o644, busyboxPasswd),
		fileEntry("etc/group", 0o644, busyboxGroup),
		fileEntry("etc/shadow", 0o640, "root:*:19000:0:99999:7:::\n"),
		fileEntry("etc/motd", 0o644, "rbuild test busybox\n"),
		fileEntry("etc/os-release", 0o644, "NAME=\"rbuild test busybox\"\nID=busybox\n"),
		fileEntry("usr/share/rbuild/a", 0o644, "a\n"),
		fileEntry("usr/share/rbuild/b", 0o644, "b\n"),
		fileEntry("home/app/.profile", 0o644, "# app's profile\n"),
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.Contains(applet, "/") {
			continue
		}
		entries = append(entries, symlinkEntry("bin/"+applet, "busybox"))
	}
	// home/app/.profile belongs to app.
	for i := range entries {
		if entries[i].Path == "home/app/.profile" {
			entries[i].UID, entries[i].GID = 1000, 1000
		}
	}
	sortEntries(entries)
	return entries, nil
}

// imageWith builds an image from layers and a config, with either Docker
// (schema 2) or OCI media types.
func imageWith(oci bool, layers []v1.Layer, history []string, cfg v1.Config, arch, variant string) (v1.Image, error) {
	return testenv.Image(layers, testenv.ImageSpec{OCI: oci, History: history, Config: cfg, Architecture: arch, Variant: variant})
}

func busyboxConfig() v1.Config {
	return v1.Config{
		Env:    []string{defaultPath},
		Cmd:    []string{"sh"},
		Labels: map[string]string{"org.rbuild.test.base": "busybox"},
	}
}

// pushBaseImages makes and pushes busybox:latest, busybox:multi and
// onbuild:latest to the registry at addr. Debian is pushed on demand
// (ensureDebian) because it takes a minute to make the first time.
func pushBaseImages(addr string) (*baseImages, error) {
	b := &baseImages{Registry: addr, Known: map[v1.Hash]bool{}}
	bbEntries, err := busyboxEntries()
	if err != nil {
		return nil, err
	}

	// busybox:latest, Docker media types like most images on Docker Hub.
	bbLayer, err := layerOf(bbEntries, types.DockerLayer)
	if err != nil {
		return nil, err
	}
	busybox, err := imageWith(false, []v1.Layer{bbLayer},
		[]string{"rbuild-test: busybox-static " + busyboxBinary + " with applet symlinks"},
		busyboxConfig(), "amd64", "")
	if err != nil {
		return nil, err
	}
	if err := b.push("busybox:latest", busybox); err != nil {
		return nil, err
	}
	d, err := busybox.Digest()
	if err != nil {
		return nil, err
	}
	b.BusyboxDigest = d.String()
	b.BusyboxLayers = 1

	// busybox:multi, an OCI index: a runnable amd64 image and an arm64
	// image that only carries /etc/arch, so a stage can tell which one it
	// got.
	bbOCI, err := layerOf(bbEntries, types.OCILayer)
	if err != nil {
		return nil, err
	}
	archLayer := func(arch string) (v1.Layer, error) {
		return layerOf([]tentry{dirEntry("etc", 0o755, 0, 0), fileEntry("etc/arch", 0o644, arch+"\n")}, types.OCILayer)
	}
	amdArch, err := archLayer("amd64")
	if err != nil {
		return nil, err
	}
	armArch, err := archLayer("arm64")
	if err != nil {
		return nil, err
	}
	amd64, err := imageWith(true, []v1.Layer{bbOCI, amdArch},
		[]string{"rbuild-test: busybox", "rbuild-test: /etc/arch amd64"}, busyboxConfig(), "amd64", "")
	if err != nil {
		return nil, err
	}
	arm64, err := imageWith(true, []v1.Layer{armArch},
		[]string{"rbuild-test: /etc/arch arm64"}, v1.Config{Env: []string{defaultPath}}, "arm64", "v8")
	if err != nil {
		return nil, err
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex),
		mutate.IndexAddendum{Add: amd64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "amd64"}}},
		mutate.IndexAddendum{Add: arm64, Descriptor: v1.Descriptor{Platform: &v1.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}}},
	)
	if err := b.pushIndex("busybox:multi", idx); err != nil {
		return nil, err
	}
	for _, img := range []v1.Image{amd64, arm64} {
		if err := b.remember(img); err != nil {
			return nil, err
		}
	}

	// onbuild:latest, busybox with ONBUILD triggers in its config.
	cfg := busyboxConfig()
	cfg.OnBuild = []string{
		"RUN echo onbuild-ran > /onbuild.txt",
		"COPY trigger.txt /trigger.txt",
	}
	onbuild, err := imageWith(false, []v1.Layer{bbLayer},
		[]string{"rbuild-test: busybox with ONBUILD triggers"}, cfg, "amd64", "")
	if err != nil {
		return nil, err
	}
	if err := b.push("onbuild:latest", onbuild); err != nil {
		return nil, err
	}
	return b, nil
}

func (b *baseImages) ref(repoTag string) (name.Reference, error) {
	return name.ParseReference(b.Registry+"/"+repoTag, name.Insecure)
}

func (b *baseImages) push(repoTag string, img v1.Image) error {
	ref, err := b.ref(repoTag)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return b.remember(img)
}

func (b *baseImages) pushIndex(repoTag string, idx v1.ImageIndex) error {
	ref, err := b.ref(repoTag)
	if err != nil {
		return err
	}
	if err := remote.WriteIndex(ref, idx); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	return nil
}

func (b *baseImages) remember(img v1.Image) error {
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return err
		}
		b.Known[d] = true
		diffID, err := l.DiffID()
		if err != nil {
			return err
		}
		b.Known[diffID] = true
	}
	return nil
}

// Debian base image ------------------------------------------------------

// debianLayerName is the cached, filtered mmdebstrap output.
const debianLayerName = "debian-bookworm-minbase.tar.gz"

// cacheDir is where slow-to-make inputs are kept between runs:
// $RBUILD_TEST_CACHE, else /var/cache/rbuild-test when writable, else the
// user's cache directory.
func cacheDir() (string, error) {
	if d := os.Getenv("RBUILD_TEST_CACHE"); d != "" {
		return d, os.MkdirAll(d, 0o755)
	}
	if err := os.MkdirAll("/var/cache/rbuild-test", 0o755); err == nil {
		if f, err := os.CreateTemp("/var/cache/rbuild-test", ".probe"); err == nil {
			f.Close()
			os.Remove(f.Name())
			return "/var/cache/rbuild-test", nil
		}
	}
	d, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	d = filepath.Join(d, "rbuild-test")
	return d, os.MkdirAll(d, 0o755)
}

// debianLayer returns the path of the Debian bookworm minbase layer,
// making it with mmdebstrap the first time on a machine (about a minute).
func debianLayer(logf func(string, ...any)) (string, error) {
	dir, err := cacheDir()
	if err != nil {
		return "", err
	}
	out := filepath.Join(dir, debianLayerName)
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	// Another test process may be making it too: serialize on a lock file.
	lock, err := os.OpenFile(filepath.Join(dir, "debian.lock"), os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return "", err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return "", err
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}

	if _, err := exec.LookPath("mmdebstrap"); err != nil {
		if os.Geteuid() != 0 {
			return "", errors.New("mmdebstrap is missing; run scripts/test-deps.sh as root")
		}
		logf("installing mmdebstrap with scripts/test-deps.sh")
		cmd := exec.Command("sh", filepath.Join(moduleRoot(), "scripts", "test-deps.sh"))
		if b, err := cmd.CombinedOutput(); err != nil {
			return "", fmt.Errorf("scripts/test-deps.sh: %v\n%s", err, b)
		}
	}
	tmp, err := os.MkdirTemp(dir, "mmdebstrap-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	raw := filepath.Join(tmp, "rootfs.tar")
	logf("making the Debian bookworm base with mmdebstrap (once per machine, cached in %s)", dir)
	cmd := exec.Command("mmdebstrap", "--variant=minbase", "--quiet", "bookworm", raw)
	cmd.Dir = tmp
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("mmdebstrap: %v\n%s", err, testenv.Tail(string(b), 30))
	}
	part := filepath.Join(tmp, debianLayerName)
	if err := filterDebianTar(raw, part); err != nil {
		return "", err
	}
	if err := os.Rename(part, out); err != nil {
		return "", err
	}
	return out, nil
}

// filterDebianTar turns mmdebstrap's tarball into a layer like the official
// image's: no device nodes (an unprivileged builder cannot create them and
// container runtimes provide /dev), and no copy of the host's
// /etc/resolv.conf or /etc/hostname.
func filterDebianTar(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	f, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer f.Close()
	zw, err := gzip.NewWriterLevel(f, gzip.BestSpeed)
	if err != nil {
		return err
	}
	tr := tar.NewReader(in)
	tw := tar.NewWriter(zw)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		clean := strings.TrimPrefix(strings.TrimPrefix(hdr.Name, "./"), "/")
		clean = strings.TrimSuffix(clean, "/")
		switch {
		case strings.HasPrefix(clean, "dev/") && hdr.Typeflag != tar.TypeDir:
			continue
		case clean == "etc/resolv.conf", clean == "etc/hostname":
			continue
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return f.Close()
}

// pushDebian pushes REGISTRY/debian:bookworm from the cached layer.
func (b *baseImages) pushDebian(logf func(string, ...any)) error {
	path, err := debianLayer(logf)
	if err != nil {
		return err
	}
	layer, err := tarball.LayerFromFile(path, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		return err
	}
	img, err := imageWith(false, []v1.Layer{layer},
		[]string{"rbuild-test: mmdebstrap --variant=minbase bookworm"},
		v1.Config{Env: []string{defaultPath}, Cmd: []string{"bash"}}, "amd64", "")
	if err != nil {
		return err
	}
	return b.push("debian:bookworm", img)
}

// readTarNames lists the normalized entry names of a tar stream.
func readTarNames(r io.Reader) ([]string, error) {
	var names []string
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, err
		}
		names = append(names, cleanName(hdr.Name))
	}
	sort.Strings(names)
	return names, nil
}

// cleanName normalizes a tar entry name: no "./" or "/" prefix, no
// trailing slash.
func cleanName(n string) string {
	n = strings.TrimPrefix(n, "./")
	n = strings.TrimLeft(n, "/")
	n = strings.TrimSuffix(n, "/")
	if n == "." {
		return ""
	}
	return n
}
