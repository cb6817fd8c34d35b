package integration

// Tests of the harness itself: they need the registry (and root for some)
// but not the rbuild binary, so the harness can be trusted before the
// product builds anything.

import (
	"archive/tar"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/rbuild/rbuild/internal/testenv"
)

func intp(i int) *int       { return &i }
func strp(s string) *string { return &s }
func boolp(b bool) *bool    { return &b }

// TestRegistryLifecycle starts a second registry, pushes to it and stops
// it, and checks that exactly its process is gone.
func TestRegistryLifecycle(t *testing.T) {
	skipE2E(t)
	reg, err := testenv.StartRegistry(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	pid := reg.Pid()
	bases, err := pushBaseImages(reg.Addr)
	if err != nil {
		reg.Stop()
		t.Fatal(err)
	}
	if !strings.HasPrefix(bases.BusyboxDigest, "sha256:") {
		t.Errorf("busybox digest %q", bases.BusyboxDigest)
	}
	if !strings.Contains(reg.AccessLog(), "PUT /v2/busybox/manifests/latest") {
		t.Errorf("access log lacks the manifest PUT:\n%s", testenv.Tail(reg.AccessLog(), 10))
	}
	reg.Stop()
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("registry pid %d still exists after Stop", pid)
	}
}

// TestBaseImages pulls the base images back and checks their content.
func TestBaseImages(t *testing.T) {
	skipE2E(t)
	_, bases := h.registry(t)

	v, err := pullImage(bases.Registry + "/busybox:latest")
	if err != nil {
		t.Fatal(err)
	}
	c := &Case{
		Layers: intp(1),
		Config: map[string]json.RawMessage{
			"Env":    json.RawMessage(`["` + defaultPath + `"]`),
			"Cmd":    json.RawMessage(`["sh"]`),
			"Labels": json.RawMessage(`{"org.rbuild.test.base":"busybox"}`),
		},
		Architecture: "amd64", OS: "linux",
		Files: map[string]FileExpect{
			"/bin/busybox":        {Type: "file", Mode: "0755", UID: intp(0)},
			"/bin/sh":             {Type: "symlink", Link: "busybox"},
			"/bin/id":             {Type: "symlink", Link: "busybox"},
			"/etc/passwd":         {Type: "file", Mode: "0644", Content: strp(busyboxPasswd)},
			"/etc/group":          {Type: "file", Content: strp(busyboxGroup)},
			"/tmp":                {Type: "dir", Mode: "1777"},
			"/root":               {Type: "dir", Mode: "0700"},
			"/home/app":           {Type: "dir", UID: intp(1000), GID: intp(1000)},
			"/usr/bin":            {Type: "dir", Mode: "0755"},
			"/usr/share/rbuild/a": {Content: strp("a\n")},
		},
		Absent: []string{"/proc", "/dev", "/etc/hosts"},
	}
	for _, p := range checkImage(c, v, nil) {
		t.Error(p)
	}
	if d, _ := v.Image.Digest(); d.String() != bases.BusyboxDigest {
		t.Errorf("busybox digest %s, harness recorded %s", d, bases.BusyboxDigest)
	}

	// The multi-arch index resolves per platform.
	ref, _ := name.ParseReference(bases.Registry+"/busybox:multi", name.Insecure)
	idx, err := remote.Index(ref)
	if err != nil {
		t.Fatal(err)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(im.Manifests) != 2 || im.MediaType != types.OCIImageIndex {
		t.Errorf("index: %d manifests, media type %s", len(im.Manifests), im.MediaType)
	}
	for arch, want := range map[string]string{"amd64": "amd64\n", "arm64": "arm64\n"} {
		img, err := remote.Image(ref, remote.WithPlatform(v1.Platform{OS: "linux", Architecture: arch}))
		if err != nil {
			t.Fatal(err)
		}
		v, err := viewImage(img)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range checkImage(&Case{Architecture: arch, Files: map[string]FileExpect{"/etc/arch": {Content: strp(want)}}}, v, nil) {
			t.Errorf("%s: %s", arch, p)
		}
	}

	v, err = pullImage(bases.Registry + "/onbuild:latest")
	if err != nil {
		t.Fatal(err)
	}
	ob := &Case{Config: map[string]json.RawMessage{
		"OnBuild": json.RawMessage(`["RUN echo onbuild-ran > /onbuild.txt","COPY trigger.txt /trigger.txt"]`),
	}}
	for _, p := range checkImage(ob, v, nil) {
		t.Error(p)
	}
}

// TestDebianBase makes (or takes from the cache) the Debian image. It is
// slow the first time on a machine, so it runs only when asked for or when
// a Debian case runs anyway.
func TestDebianBase(t *testing.T) {
	skipE2E(t)
	h.debian(t)
	_, bases := h.registry(t)
	v, err := pullImage(bases.Registry + "/debian:bookworm")
	if err != nil {
		t.Fatal(err)
	}
	c := &Case{
		Layers: intp(1),
		Files: map[string]FileExpect{
			"/usr/bin/apt-get":    {Type: "file"},
			"/bin":                {Type: "symlink", Link: "usr/bin"},
			"/etc/debian_version": {ContentContains: "12."},
		},
		Absent: []string{"/dev/null", "/etc/resolv.conf"},
	}
	// The base's own layer may hold /dev, /proc and /sys: it is known.
	for _, p := range checkImage(c, v, bases.Known) {
		t.Error(p)
	}
}

// TestChecker builds an image with go-containerregistry that has every
// feature the cases look at, checks that a matching expectation passes,
// and that each kind of difference is reported.
func TestChecker(t *testing.T) {
	skipE2E(t)
	_, bases := h.registry(t)
	base, err := pullImage(bases.Registry + "/busybox:latest")
	if err != nil {
		t.Fatal(err)
	}
	upper := []tentry{
		dirEntry("app", 0o755, 0, 0),
		fileEntry("app/hello", 0o600, "hi\n"),
		{Path: "app/hello-link", Type: tar.TypeLink, Link: "app/hello"},
		symlinkEntry("app/sym", "/etc/passwd"),
		{Path: "app/owned", Type: tar.TypeReg, Mode: 0o640, UID: 1000, GID: 100, Content: []byte("x")},
		dirEntry("etc", 0o755, 0, 0),
		fileEntry("etc/.wh.motd", 0o644, ""),
		dirEntry("usr/share/rbuild", 0o755, 0, 0),
		fileEntry("usr/share/rbuild/.wh..wh..opq", 0o644, ""),
		fileEntry("usr/share/rbuild/c", 0o644, "c\n"),
	}
	l, err := layerOf(upper, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.Append(base.Image, mutate.Addendum{Layer: l, History: v1.History{CreatedBy: "RUN /bin/sh -c make-app # buildkit"}})
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf = cf.DeepCopy()
	cf.Config.WorkingDir = "/app"
	cf.Config.User = "app"
	cf.Author = "someone"
	cf.History = append(cf.History, v1.History{CreatedBy: "USER app", EmptyLayer: true})
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	ref, _ := name.ParseReference(bases.Registry+"/harness/checker:latest", name.Insecure)
	if err := remote.Write(ref, img); err != nil {
		t.Fatal(err)
	}
	v, err := pullImage(ref.String())
	if err != nil {
		t.Fatal(err)
	}
	good := func() *Case {
		return &Case{
			Layers: intp(2),
			Config: map[string]json.RawMessage{
				"WorkingDir": json.RawMessage(`"/app"`),
				"User":       json.RawMessage(`"app"`),
				"Entrypoint": json.RawMessage(`null`),
				"Cmd":        json.RawMessage(`["sh"]`),
			},
			Author: strp("someone"),
			History: []HistoryExpect{
				{CreatedByContains: "make-app", EmptyLayer: boolp(false)},
				{CreatedBy: "USER app", EmptyLayer: boolp(true)},
			},
			Files: map[string]FileExpect{
				"/app/hello":          {Type: "file", Mode: "0600", UID: intp(0), GID: intp(0), Size: ptr64(3), Content: strp("hi\n")},
				"/app/hello-link":     {Type: "hardlink", Link: "/app/hello", Content: strp("hi\n"), Mode: "0600"},
				"/app/sym":            {Type: "symlink", Link: "/etc/passwd"},
				"/app/owned":          {UID: intp(1000), GID: intp(100), Mode: "0640", SHA256: "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"},
				"/usr/share/rbuild/c": {Content: strp("c\n")},
				"/etc/passwd":         {Type: "file"},
			},
			Absent: []string{"/etc/motd", "/usr/share/rbuild/a", "/usr/share/rbuild/b"},
			LayerFiles: []LayerExpect{{
				Layer:  -1,
				Has:    []string{"etc/.wh.motd"},
				HasAny: [][]string{{"usr/share/rbuild/.wh..wh..opq", "usr/share/rbuild/.wh.a"}},
				Lacks:  []string{"proc", "etc/hosts"},
			}},
		}
	}
	if probs := checkImage(good(), v, bases.Known); len(probs) > 0 {
		t.Fatalf("a matching expectation reported differences:\n%s", strings.Join(probs, "\n"))
	}

	// Each mutation must produce at least one report mentioning want.
	mutations := []struct {
		name   string
		change func(c *Case)
		want   string
	}{
		{"layers", func(c *Case) { c.Layers = intp(3) }, "layers: got 2"},
		{"config", func(c *Case) { c.Config["User"] = json.RawMessage(`"root"`) }, "config.User"},
		{"config-absent", func(c *Case) { c.Config["StopSignal"] = json.RawMessage(`"SIGTERM"`) }, "config.StopSignal"},
		{"author", func(c *Case) { c.Author = strp("nobody") }, "author"},
		{"history", func(c *Case) { c.History[0].CreatedByContains = "nope" }, "history[0]"},
		{"history-empty", func(c *Case) { c.History[1].EmptyLayer = boolp(false) }, "history[1]"},
		{"mode", func(c *Case) { f := c.Files["/app/hello"]; f.Mode = "0644"; c.Files["/app/hello"] = f }, "mode: got 0600"},
		{"uid", func(c *Case) { f := c.Files["/app/owned"]; f.UID = intp(0); c.Files["/app/owned"] = f }, "uid: got 1000"},
		{"gid", func(c *Case) { f := c.Files["/app/owned"]; f.GID = intp(1000); c.Files["/app/owned"] = f }, "gid: got 100"},
		{"content", func(c *Case) { f := c.Files["/app/hello"]; f.Content = strp("ho\n"); c.Files["/app/hello"] = f }, "content"},
		{"size", func(c *Case) { f := c.Files["/app/hello"]; f.Size = ptr64(4); c.Files["/app/hello"] = f }, "size"},
		{"sha256", func(c *Case) {
			f := c.Files["/app/owned"]
			f.SHA256 = strings.Repeat("0", 64)
			c.Files["/app/owned"] = f
		}, "sha256"},
		{"type", func(c *Case) { f := c.Files["/app/sym"]; f.Type = "file"; f.Link = ""; c.Files["/app/sym"] = f }, "type: got symlink"},
		{"link", func(c *Case) { f := c.Files["/app/sym"]; f.Link = "/etc/group"; c.Files["/app/sym"] = f }, "link"},
		{"hardlink", func(c *Case) {
			f := c.Files["/app/hello-link"]
			f.Link = "/app/other"
			c.Files["/app/hello-link"] = f
		}, "link"},
		{"missing", func(c *Case) { c.Files["/nope"] = FileExpect{} }, "/nope: missing"},
		{"absent", func(c *Case) { c.Absent = append(c.Absent, "/app/hello") }, "want absent"},
		{"whiteout-applied", func(c *Case) { c.Files["/etc/motd"] = FileExpect{}; c.Absent = nil }, "/etc/motd: missing"},
		{"layer-has", func(c *Case) { c.LayerFiles[0].Has = append(c.LayerFiles[0].Has, "nothing") }, "lacks entry"},
		{"layer-has-any", func(c *Case) { c.LayerFiles[0].HasAny = [][]string{{"x", "y"}} }, "has none of"},
		{"layer-lacks", func(c *Case) { c.LayerFiles[0].Lacks = []string{"app"} }, "want nothing at app"},
	}
	for _, m := range mutations {
		c := good()
		m.change(c)
		probs := checkImage(c, v, bases.Known)
		found := false
		for _, p := range probs {
			found = found || strings.Contains(p, m.want)
		}
		if !found {
			t.Errorf("mutation %s: no report containing %q; got %q", m.name, m.want, probs)
		}
	}

	// A built layer with mount stubs is reported even when no case asks.
	stub, err := layerOf([]tentry{dirEntry("proc", 0o755, 0, 0), dirEntry("etc", 0o755, 0, 0), fileEntry("etc/resolv.conf", 0o644, "")}, types.DockerLayer)
	if err != nil {
		t.Fatal(err)
	}
	bad, err := mutate.Append(base.Image, mutate.Addendum{Layer: stub, History: v1.History{CreatedBy: "RUN true"}})
	if err != nil {
		t.Fatal(err)
	}
	bv, err := viewImage(bad)
	if err != nil {
		t.Fatal(err)
	}
	probs := checkImage(&Case{}, bv, bases.Known)
	if !strings.Contains(strings.Join(probs, "\n"), `mount stub in a built layer: layer 1: has "proc"`) ||
		!strings.Contains(strings.Join(probs, "\n"), `has "etc/resolv.conf"`) {
		t.Errorf("mount stubs not reported: %q", probs)
	}

	// A history that does not account for every layer is reported.
	cf2, _ := bad.ConfigFile()
	cf2 = cf2.DeepCopy()
	cf2.History = cf2.History[:1]
	bad2, _ := mutate.ConfigFile(bad, cf2)
	bv2, err := viewImage(bad2)
	if err != nil {
		t.Fatal(err)
	}
	if probs := checkImage(&Case{}, bv2, nil); !strings.Contains(strings.Join(probs, "\n"), "history has 1 entries with a layer, the image has 2 layers") {
		t.Errorf("history/layer mismatch not reported: %q", probs)
	}

	// A manifest mixing OCI and Docker media types is reported.
	if p := checkMediaTypes(mutate.MediaType(base.Image, types.OCIManifestSchema1)); len(p) != 2 {
		t.Errorf("mixed media types: %q", p)
	}

	// The error checks.
	if err := checkAbsentFromRegistry(bases.Registry + "/harness/never:pushed"); err != nil {
		t.Errorf("absent tag: %v", err)
	}
	if err := checkAbsentFromRegistry(ref.String()); err == nil {
		t.Errorf("present tag not reported")
	}
	e := &ErrorExpect{Contains: []string{"Dockerfile:3"}, Matches: []string{`exit code:? 3`}}
	if p := checkError(e, "error: Dockerfile:3: RUN false: exit code: 3\n"); len(p) > 0 {
		t.Errorf("matching error reported: %q", p)
	}
	if p := checkError(e, "error: Dockerfile:4: exit code 2\n"); len(p) != 2 {
		t.Errorf("non-matching error: %q", p)
	}
}

func ptr64(i int64) *int64 { return &i }

// TestRunImage runs the busybox base with umoci and runc.
func TestRunImage(t *testing.T) {
	skipE2E(t)
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	_, bases := h.registry(t)
	v, err := pullImage(bases.Registry + "/busybox:latest")
	if err != nil {
		t.Fatal(err)
	}
	want := "hello from runc\n"
	for _, p := range checkRun(v.Image, &RunExpect{Argv: []string{"echo", "hello from runc"}, Stdout: &want}, t.TempDir()) {
		t.Error(p)
	}
	// Without argv the image's Cmd runs: sh with no terminal exits 0.
	empty := ""
	for _, p := range checkRun(v.Image, &RunExpect{Stdout: &empty}, t.TempDir()) {
		t.Error(p)
	}
	for _, p := range checkRun(v.Image, &RunExpect{Argv: []string{"sh", "-c", "exit 7"}, Stdout: &empty, ExitCode: 7}, t.TempDir()) {
		t.Error(p)
	}
}

// TestSkopeoReadsBase checks the skopeo comparison on a base image.
func TestSkopeoReadsBase(t *testing.T) {
	skipE2E(t)
	_, bases := h.registry(t)
	v, err := pullImage(bases.Registry + "/busybox:latest")
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range checkSkopeo(bases.Registry+"/busybox:latest", v) {
		t.Error(p)
	}
}

// TestSetupSteps applies every kind of setup step.
func TestSetupSteps(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "context")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	var steps SetupSteps
	err := json.Unmarshal([]byte(`[
		{"mkdir": {"empty": "0750"}, "write": {"a": "A", "../outside.txt": "out"}},
		{"bigfile": {"big": 100000}, "symlink": {"s": "a"}, "hardlink": {"b": "a"},
		 "chmod": {"a": "0600", "empty": "2755"},
		 "tar": {"t.tar.gz": [{"path": "d", "type": "dir", "mode": "0700", "uid": 5}, {"path": "d/f", "content": "F", "uid": 1234, "gid": 5678}]}},
		{"remove": ["s"]}
	]`), &steps)
	if err != nil {
		t.Fatal(err)
	}
	for i, s := range steps {
		if err := s.validate(); err != nil {
			t.Fatal(err)
		}
		if err := applySetup(dir, s); err != nil {
			t.Fatalf("step %d: %v", i, err)
		}
	}
	st := func(p string) os.FileInfo {
		fi, err := os.Lstat(filepath.Join(dir, p))
		if err != nil {
			t.Fatal(err)
		}
		return fi
	}
	if m := st("empty").Mode(); m.Perm() != 0o755 || m&os.ModeSetgid == 0 {
		t.Errorf("empty: mode %v", m)
	}
	if m := st("a").Mode().Perm(); m != 0o600 {
		t.Errorf("a: mode %v", m)
	}
	if st("big").Size() != 100000 {
		t.Errorf("big: size %d", st("big").Size())
	}
	if a, b := st("a").Sys().(*syscall.Stat_t), st("b").Sys().(*syscall.Stat_t); a.Ino != b.Ino {
		t.Errorf("b is not a hardlink of a")
	}
	if _, err := os.Lstat(filepath.Join(dir, "s")); !os.IsNotExist(err) {
		t.Errorf("s not removed: %v", err)
	}
	if b, err := os.ReadFile(filepath.Join(dir, "..", "outside.txt")); err != nil || string(b) != "out" {
		t.Errorf("outside.txt: %q %v", b, err)
	}
	f, err := os.Open(filepath.Join(dir, "t.tar.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := checkSetupPath("../../x"); err == nil {
		t.Errorf("../../x accepted")
	}
}

// TestEnsureSubIDs appends a range past the existing ones, once.
func TestEnsureSubIDs(t *testing.T) {
	f := filepath.Join(t.TempDir(), "subuid")
	if err := os.WriteFile(f, []byte("alice:100000:65536\nbob:165536:65536"), 0o644); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 2; i++ {
		if err := ensureSubIDs(f, "rbuildtest", 65536); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(f)
	if want := "alice:100000:65536\nbob:165536:65536\nrbuildtest:231072:65536\n"; string(b) != want {
		t.Errorf("subuid:\n%s\nwant:\n%s", b, want)
	}
}
