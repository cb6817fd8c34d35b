package main

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	gzip "github.com/klauspost/pgzip"

	"github.com/rbuild/rbuild/internal/testenv"
)

// The base images, all made on this machine (no public registry is
// reachable): REGISTRY/NAME for each name below.
var baseRefs = map[string]string{
	"busybox": "busybox:latest",
	"debian":  "debian:bookworm",
	"golang":  "golang:local",
	"node":    "node:local",
}

const defaultPath = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

var epoch = testenv.Epoch

// hostCABundle is the host's CA bundle, which holds the TLS-inspecting
// proxy's CA on this machine kind; images whose RUN steps use HTTPS get it.
const hostCABundle = "/etc/ssl/certs/ca-certificates.crt"

// pushBaseImages makes the base images that the selected cases need and
// pushes them to the registry at addr. golang and node sit on debian.
func pushBaseImages(ctx context.Context, addr, cacheDir, work string, needs map[string]bool) error {
	if needs["golang"] || needs["node"] {
		needs["debian"] = true
	}
	if needs["busybox"] {
		l, err := busyboxLayer()
		if err != nil {
			return err
		}
		img, err := imageOf([]v1.Layer{l}, []string{"bench: busybox-static /bin/busybox and applet links"},
			v1.Config{Env: []string{defaultPath}, Cmd: []string{"sh"}})
		if err != nil {
			return err
		}
		if err := pushImage(addr, baseRefs["busybox"], img); err != nil {
			return err
		}
	}
	if !needs["debian"] {
		return nil
	}
	debPath, err := debianLayer(ctx, cacheDir, work)
	if err != nil {
		return err
	}
	deb, err := tarball.LayerFromFile(debPath, tarball.WithMediaType(types.DockerLayer))
	if err != nil {
		return err
	}
	debHist := "bench: mmdebstrap --variant=minbase bookworm"
	img, err := imageOf([]v1.Layer{deb}, []string{debHist}, v1.Config{Env: []string{defaultPath}, Cmd: []string{"bash"}})
	if err != nil {
		return err
	}
	if err := pushImage(addr, baseRefs["debian"], img); err != nil {
		return err
	}

	if needs["golang"] {
		goPath, err := goLayer(cacheDir)
		if err != nil {
			return err
		}
		gl, err := tarball.LayerFromFile(goPath, tarball.WithMediaType(types.DockerLayer))
		if err != nil {
			return err
		}
		img, err := imageOf([]v1.Layer{deb, gl}, []string{debHist, "bench: /usr/local/go of the host"}, v1.Config{
			Env: []string{
				"PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
				"GOTOOLCHAIN=local", "CGO_ENABLED=0", "GOPROXY=off", "GOFLAGS=-buildvcs=false",
			},
			Cmd: []string{"bash"},
		})
		if err != nil {
			return err
		}
		if err := pushImage(addr, baseRefs["golang"], img); err != nil {
			return err
		}
	}
	if needs["node"] {
		nodePath, err := nodeLayer(cacheDir)
		if err != nil {
			return err
		}
		nl, err := tarball.LayerFromFile(nodePath, tarball.WithMediaType(types.DockerLayer))
		if err != nil {
			return err
		}
		ca, err := os.ReadFile(hostCABundle)
		if err != nil {
			return err
		}
		cal, err := layerOf([]entry{dirE("etc"), dirE("etc/ssl"), dirE("etc/ssl/certs"),
			{Name: "etc/ssl/certs/ca-certificates.crt", Mode: 0o644, Body: ca}})
		if err != nil {
			return err
		}
		img, err := imageOf([]v1.Layer{deb, nl, cal},
			[]string{debHist, "bench: node and npm of the host", "bench: the host's CA bundle"}, v1.Config{
				Env: []string{defaultPath,
					"NODE_EXTRA_CA_CERTS=" + hostCABundle, "SSL_CERT_FILE=" + hostCABundle},
				Cmd: []string{"node"},
			})
		if err != nil {
			return err
		}
		if err := pushImage(addr, baseRefs["node"], img); err != nil {
			return err
		}
	}
	return nil
}

func pushImage(addr, repoTag string, img v1.Image) error {
	ref, err := name.ParseReference(addr+"/"+repoTag, name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.Write(ref, img); err != nil {
		return fmt.Errorf("push %s: %w", ref, err)
	}
	logf("pushed base image %s", repoTag)
	return nil
}

func imageOf(layers []v1.Layer, history []string, cfg v1.Config) (v1.Image, error) {
	return testenv.Image(layers, testenv.ImageSpec{History: history, Config: cfg})
}

// entry is a file of a layer made in memory.
type entry struct {
	Name     string
	Mode     int64
	Dir      bool
	Linkname string
	Body     []byte
}

func dirE(name string) entry { return entry{Name: name, Mode: 0o755, Dir: true} }

func layerOf(entries []entry) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.Name, Mode: e.Mode, ModTime: epoch, Format: tar.FormatPAX}
		switch {
		case e.Dir:
			h.Typeflag = tar.TypeDir
			h.Name += "/"
		case e.Linkname != "":
			h.Typeflag = tar.TypeSymlink
			h.Linkname = e.Linkname
		default:
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(e.Body))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, err
		}
		if _, err := tw.Write(e.Body); err != nil {
			return nil, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	b := buf.Bytes()
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.DockerLayer))
}

const busyboxPasswd = "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
const busyboxGroup = "root:x:0:\nnogroup:x:65534:\n"

// busyboxLayer is busybox-static's binary, a link per applet in /bin and
// the few files a shell image needs.
func busyboxLayer() (v1.Layer, error) {
	bin, err := os.ReadFile("/bin/busybox")
	if err != nil {
		return nil, fmt.Errorf("%w (install busybox-static)", err)
	}
	out, err := exec.Command("/bin/busybox", "--list").Output()
	if err != nil {
		return nil, fmt.Errorf("busybox --list: %w", err)
	}
	es := []entry{dirE("bin"), dirE("etc"), dirE("root"), dirE("usr"), dirE("usr/bin"), dirE("var"),
		{Name: "tmp", Mode: 0o1777, Dir: true},
		{Name: "bin/busybox", Mode: 0o755, Body: bin},
		{Name: "etc/passwd", Mode: 0o644, Body: []byte(busyboxPasswd)},
		{Name: "etc/group", Mode: 0o644, Body: []byte(busyboxGroup)},
	}
	applets := strings.Fields(string(out))
	sort.Strings(applets)
	for _, a := range applets {
		if a != "busybox" && !strings.Contains(a, "/") {
			es = append(es, entry{Name: "bin/" + a, Mode: 0o777, Linkname: "busybox"})
		}
	}
	return layerOf(es)
}

// debianLayer returns the cached Debian bookworm minbase layer, making it
// with mmdebstrap (the host's apt sources) the first time on a machine.
func debianLayer(ctx context.Context, cacheDir, work string) (string, error) {
	out := filepath.Join(cacheDir, "debian-bookworm-minbase.tar.gz")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	logf("making the Debian bookworm minbase with mmdebstrap (once; cached in %s)", cacheDir)
	tmp, err := os.MkdirTemp(work, "mmdebstrap-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	raw := filepath.Join(tmp, "rootfs.tar")
	cmd := exec.CommandContext(ctx, "mmdebstrap", "--variant=minbase", "--quiet", "bookworm", raw)
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("mmdebstrap: %v\n%s", err, b)
	}
	in, err := os.Open(raw)
	if err != nil {
		return "", err
	}
	defer in.Close()
	// Drop device nodes (runtimes provide /dev) and the host's resolv.conf
	// and hostname, as official images do.
	return out, writeGzTar(out, func(tw *tar.Writer) error {
		tr := tar.NewReader(in)
		for {
			h, err := tr.Next()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			n := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(h.Name, "./"), "/"), "/")
			if (strings.HasPrefix(n, "dev/") && h.Typeflag != tar.TypeDir) || n == "etc/resolv.conf" || n == "etc/hostname" {
				continue
			}
			if err := tw.WriteHeader(h); err != nil {
				return err
			}
			if _, err := io.Copy(tw, tr); err != nil {
				return err
			}
		}
	})
}

// goLayer is /usr/local/go of the host as a layer, cached per Go version.
func goLayer(cacheDir string) (string, error) {
	v, err := os.ReadFile("/usr/local/go/VERSION")
	if err != nil {
		return "", fmt.Errorf("the Go toolchain image needs /usr/local/go: %w", err)
	}
	ver := strings.Fields(string(v))[0]
	out := filepath.Join(cacheDir, ver+".tar.gz")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	logf("making the %s layer from /usr/local/go (once; cached in %s)", ver, cacheDir)
	return out, writeGzTar(out, func(tw *tar.Writer) error {
		for _, d := range []string{"usr", "usr/local"} {
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}); err != nil {
				return err
			}
		}
		return addTree(tw, "/usr/local/go", "usr/local/go")
	})
}

// nodeLayer is the host's node binary and npm as a layer, cached per node
// version. node links to glibc and libstdc++, which Debian minbase has.
func nodeLayer(cacheDir string) (string, error) {
	node, err := exec.LookPath("node")
	if err != nil {
		return "", fmt.Errorf("the node image needs the host's node: %w", err)
	}
	node, err = filepath.EvalSymlinks(node)
	if err != nil {
		return "", err
	}
	v, err := exec.Command(node, "--version").Output()
	if err != nil {
		return "", err
	}
	npmDir := "/usr/lib/node_modules/npm"
	if _, err := os.Stat(filepath.Join(npmDir, "bin", "npm-cli.js")); err != nil {
		return "", fmt.Errorf("the node image needs npm in %s: %w", npmDir, err)
	}
	out := filepath.Join(cacheDir, "node-"+strings.TrimSpace(string(v))+".tar.gz")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	logf("making the node layer from %s and %s (once; cached in %s)", node, npmDir, cacheDir)
	return out, writeGzTar(out, func(tw *tar.Writer) error {
		for _, d := range []string{"usr", "usr/bin", "usr/lib", "usr/lib/node_modules"} {
			if err := tw.WriteHeader(&tar.Header{Name: d + "/", Typeflag: tar.TypeDir, Mode: 0o755, ModTime: epoch}); err != nil {
				return err
			}
		}
		if err := addFile(tw, node, "usr/bin/node"); err != nil {
			return err
		}
		if err := addTree(tw, npmDir, "usr/lib/node_modules/npm"); err != nil {
			return err
		}
		for _, l := range []struct{ name, target string }{
			{"usr/bin/npm", "../lib/node_modules/npm/bin/npm-cli.js"},
			{"usr/bin/npx", "../lib/node_modules/npm/bin/npx-cli.js"},
		} {
			if err := tw.WriteHeader(&tar.Header{Name: l.name, Typeflag: tar.TypeSymlink, Linkname: l.target, Mode: 0o777, ModTime: epoch}); err != nil {
				return err
			}
		}
		return nil
	})
}

// writeGzTar writes a gzip tar at path through a temporary file, so that a
// failure leaves no partial cache entry.
func writeGzTar(path string, fill func(*tar.Writer) error) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".part-")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	zw := gzip.NewWriter(tmp)
	tw := tar.NewWriter(zw)
	if err := fill(tw); err != nil {
		tmp.Close()
		return err
	}
	if err := tw.Close(); err != nil {
		tmp.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

// addTree adds src as prefix, root-owned, with fixed times.
func addTree(tw *tar.Writer, src, prefix string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		name := prefix
		if rel != "." {
			name = prefix + "/" + filepath.ToSlash(rel)
		}
		return addFile(tw, p, name)
	})
}

func addFile(tw *tar.Writer, p, name string) error {
	fi, err := os.Lstat(p)
	if err != nil {
		return err
	}
	link := ""
	if fi.Mode()&fs.ModeSymlink != 0 {
		if link, err = os.Readlink(p); err != nil {
			return err
		}
	}
	h, err := tar.FileInfoHeader(fi, link)
	if err != nil {
		return err
	}
	h.Name = name
	if fi.IsDir() {
		h.Name += "/"
	}
	h.Uid, h.Gid, h.Uname, h.Gname = 0, 0, "", ""
	h.ModTime, h.AccessTime, h.ChangeTime = epoch, time.Time{}, time.Time{}
	h.Format = tar.FormatPAX
	if err := tw.WriteHeader(h); err != nil {
		return err
	}
	if !fi.Mode().IsRegular() {
		return nil
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(tw, f)
	return err
}
