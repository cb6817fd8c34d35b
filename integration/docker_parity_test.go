//go:build dockerparity

// The Docker parity check is a maintainer tool, built only with the
// dockerparity tag: regen-expected.sh installs Docker's engine, starts a
// private dockerd and runs it. `make test` neither needs nor shows it.

package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/rbuild/rbuild/internal/testenv"
)

// envDocker names the Docker daemon socket TestDockerParity builds with
// (regen-expected.sh starts one and sets it).
const envDocker = "RBUILD_TEST_DOCKER"

// envDockerOut is where TestDockerParity writes what Docker produced, one
// NAME.json per case in case.json form.
const envDockerOut = "RBUILD_TEST_DOCKER_OUT"

// dockerCLI is Debian's docker.io client: a newer CLI elsewhere on PATH
// wants the buildx plugin.
const dockerCLI = "/usr/bin/docker"

// TestDockerParity builds every case with a real `docker build` (BuildKit)
// and checks the result with the same checker, so that the expectations in
// case.json can be confirmed against Docker. RBUILD_TEST_DOCKER must name
// a Docker daemon (see regen-expected.sh).
func TestDockerParity(t *testing.T) {
	host := os.Getenv(envDocker)
	if host == "" {
		t.Fatal("set " + envDocker + "=unix:///path/docker.sock (regen-expected.sh does)")
	}
	out := os.Getenv(envDockerOut)
	if out == "" {
		out = "/tmp/rbuild-docker-expected"
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		t.Fatal(err)
	}
	cases, err := loadCases(casesDir)
	if err != nil {
		t.Fatal(err)
	}
	_, bases := h.registry(t)
	work := h.workDir(t)
	if err := os.MkdirAll(filepath.Join(work, "runs"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			for _, r := range c.Requires {
				if r == "debian" {
					h.debian(t)
				}
			}
			r := prepareRun(t, work, c, "docker", nil, bases)
			release := h.acquire()
			dockerBuild(t, host, r)
			release()
			t.Logf("docker build took %s (log: %s)", r.Took.Round(time.Millisecond), filepath.Join(r.Dir, "build.log"))

			if c.Error != nil {
				if r.Err == nil {
					t.Errorf("docker build succeeded, the case expects a failure")
				}
				for _, p := range checkError(c.Error, r.Stderr) {
					reportParity(t, p)
				}
				dumpDocker(t, out, c, nil, r)
				if t.Failed() {
					t.Logf("docker stderr:\n%s", testenv.Tail(r.Stderr, 30))
				}
				return
			}
			if r.Err != nil {
				dumpDocker(t, out, c, nil, r)
				t.Fatalf("docker build failed: %v\n%s", r.Err, testenv.Tail(r.Stderr, 30))
			}
			v, err := pullImage(r.Tag)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range checkImage(c, v, bases.Known) {
				reportParity(t, p)
			}
			if c.Run != nil && os.Geteuid() == 0 {
				for _, p := range checkRun(v.Image, c.Run, filepath.Join(r.Dir, "run")) {
					t.Errorf("docker: %s", p)
				}
			}
			dumpDocker(t, out, c, v, r)
		})
	}
}

// rbuildOnlyRE matches the checks that hold rbuild to more than Docker
// does: errors name Dockerfile:LINE (Docker prints the line differently, or
// not at all in 20.10), and RUN's mount points (/proc, /sys, /dev, which
// runc creates when the base lacks them) never reach a layer (Docker's
// BuildKit only removes the stubs of /etc/hosts, /etc/resolv.conf and
// --mount targets).
var rbuildOnlyRE = regexp.MustCompile(`^stderr lacks "Dockerfile:\d+"$|^mount stub in a built layer: layer \d+: has "(proc|sys|dev)(/[^"]*)?"|^/(proc|sys|dev): want absent`)

// reportParity fails the test for a difference from Docker, or logs it
// when it is one of rbuild's own stricter requirements.
func reportParity(t *testing.T, p string) {
	t.Helper()
	if rbuildOnlyRE.MatchString(p) {
		t.Logf("docker (rbuild-only requirement, not an error in the case): %s", p)
		return
	}
	t.Errorf("docker: %s", p)
}

// dockerBuild builds and pushes a prepared run with the Docker CLI.
func dockerBuild(t *testing.T, host string, r *buildRun) {
	args := []string{"-H", host, "build", "--network", "host", "--progress", "plain",
		"-t", r.Tag}
	// The harness's flags: keep the build args and the case's own args,
	// drop rbuild-only ones.
	skip := map[string]bool{"--root": true, "--progress": true, "--insecure-registry": true, "-t": true, "-f": true}
	for i := 1; i < len(r.Args)-1; i++ {
		a := r.Args[i]
		if skip[a] {
			i++
			continue
		}
		args = append(args, a)
	}
	switch {
	case r.Case.StdinDockerfile:
		args = append(args, "-f", "-")
	case r.Dockerfile != "":
		args = append(args, "-f", r.Dockerfile)
	}
	args = append(args, r.Context)

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, dockerCLI, args...)
	cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=1")
	if r.Case.StdinDockerfile {
		b, err := os.ReadFile(filepath.Join(r.Dir, r.Case.Dockerfile))
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdin = bytes.NewReader(b)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	r.Err = cmd.Run()
	r.Took = time.Since(start)
	r.Stdout, r.Stderr = stdout.String(), stderr.String()
	r.Args = args
	_ = os.WriteFile(filepath.Join(r.Dir, "build.log"),
		[]byte("$ docker "+strings.Join(args, " ")+"\n"+r.Stdout+r.Stderr), 0o644)
	if r.Err != nil {
		return
	}
	push := exec.CommandContext(ctx, dockerCLI, "-H", host, "push", r.Tag)
	if b, err := push.CombinedOutput(); err != nil {
		r.Err = fmt.Errorf("docker push: %v: %s", err, testenv.Tail(string(b), 10))
	}
}

// dumpDocker writes what Docker produced for the paths and keys the case
// mentions, in case.json form, to OUT/NAME.json.
func dumpDocker(t *testing.T, out string, c *Case, v *imageView, r *buildRun) {
	d := map[string]any{}
	if v == nil {
		d["error"] = map[string]any{"stderr_tail": testenv.Tail(r.Stderr, 15), "exit": fmt.Sprint(r.Err)}
	} else {
		d["layers"] = len(v.Layers)
		if a := rawString(v.Raw["author"]); a != "" {
			d["author"] = a
		}
		cfg := map[string]any{}
		for k := range configKeys {
			if raw, ok := v.Config[k]; ok && c.Config != nil {
				if _, want := c.Config[k]; want {
					var x any
					_ = json.Unmarshal(raw, &x)
					cfg[k] = x
				}
			}
		}
		if len(cfg) > 0 {
			d["config"] = cfg
		}
		if hist, err := v.history(); err == nil && len(c.History) > 0 {
			n := len(c.History)
			if n > len(hist) {
				n = len(hist)
			}
			var hs []map[string]any
			for _, e := range hist[len(hist)-n:] {
				hs = append(hs, map[string]any{"created_by": e.CreatedBy, "empty_layer": e.EmptyLayer})
			}
			d["history"] = hs
		}
		files := map[string]any{}
		for p := range c.Files {
			e, ok := v.Tree[p]
			if !ok {
				files[p] = "MISSING"
				continue
			}
			files[p] = describeEntry(v, e)
		}
		if len(files) > 0 {
			d["files"] = files
		}
		var present []string
		for _, p := range c.Absent {
			if _, ok := v.Tree[p]; ok {
				present = append(present, p)
			}
		}
		if len(present) > 0 {
			d["absent_but_present"] = present
		}
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		t.Error(err)
		return
	}
	if err := os.WriteFile(filepath.Join(out, c.Name+".json"), append(b, '\n'), 0o644); err != nil {
		t.Error(err)
	}
}

// describeEntry renders a tree entry as a FileExpect-shaped map.
func describeEntry(v *imageView, e *fsEntry) map[string]any {
	m := map[string]any{"type": e.typeName()}
	target := v.resolve(e)
	if e.Hdr.Linkname != "" {
		if e.typeName() == "hardlink" {
			m["link"] = "/" + cleanName(e.Hdr.Linkname)
		} else {
			m["link"] = e.Hdr.Linkname
		}
	}
	if target != nil {
		m["mode"] = fmt.Sprintf("%04o", target.Hdr.Mode&0o7777)
		m["uid"] = target.Hdr.Uid
		m["gid"] = target.Hdr.Gid
		if e.typeName() == "file" || e.typeName() == "hardlink" {
			m["size"] = target.Hdr.Size
			if target.Content != nil && len(target.Content) <= 256 {
				m["content"] = string(target.Content)
			} else {
				m["sha256"] = target.SHA256
			}
		}
	}
	return m
}
