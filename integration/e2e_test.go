package integration

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestCaseFiles loads every case and checks it against the schema: a unit
// test of the data that needs neither the registry nor the binary.
func TestCaseFiles(t *testing.T) {
	cases, err := loadCases(casesDir)
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) < 28 {
		t.Errorf("%d cases, want at least 28", len(cases))
	}
	for _, c := range cases {
		if err := c.validate(); err != nil {
			t.Error(err)
		}
	}
}

// TestCases builds every case as root and as the unprivileged user, then
// checks the pushed image (or the failure) against case.json.
func TestCases(t *testing.T) {
	skipE2E(t)
	cases, err := loadCases(casesDir)
	if err != nil {
		t.Fatal(err)
	}
	// Fail once, here, when the binary or the registry is missing.
	h.binary(t)
	h.registry(t)
	for _, c := range cases {
		t.Run(c.Name, func(t *testing.T) {
			t.Parallel()
			if err := c.validate(); err != nil {
				t.Fatal(err)
			}
			for _, mode := range []string{"root", "user"} {
				t.Run(mode, func(t *testing.T) {
					t.Parallel()
					runCase(t, c, mode)
				})
			}
		})
	}
}

// runCase builds one case in one mode and checks the result.
func runCase(t *testing.T, c *Case, mode string) {
	var acct *account
	switch mode {
	case "root":
		if os.Geteuid() != 0 {
			t.Skip("root runs need root")
		}
	case "user":
		if !c.rootless() {
			t.Skip("rootless run skipped: " + c.RootlessSkipReason)
		}
		acct = h.testUser(t)
	}
	bin := h.binary(t)
	_, bases := h.registry(t)
	for _, r := range c.Requires {
		if r == "debian" {
			h.debian(t)
		}
	}
	work := h.workDir(t)
	if err := os.MkdirAll(filepath.Join(work, "runs"), 0o755); err != nil {
		t.Fatal(err)
	}
	r := prepareRun(t, work, c, mode, acct, bases)

	release := h.acquire()
	r.run(bin)
	release()
	t.Logf("build took %s (log: %s)", r.Took.Round(1e6), filepath.Join(r.Dir, "build.log"))

	if c.Error != nil {
		if r.Err == nil {
			t.Fatalf("the build succeeded, want it to fail\n%s", r.report())
		}
		if !exitedNonZero(r.Err) {
			t.Fatalf("the build did not exit with a status: %v\n%s", r.Err, r.report())
		}
		for _, p := range checkError(c.Error, r.Stderr) {
			t.Error(p)
		}
		if err := checkAbsentFromRegistry(r.Tag); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("%s", r.report())
		}
		return
	}
	if r.Err != nil {
		t.Fatalf("build failed\n%s", r.report())
	}
	for _, s := range c.OutputContains {
		if !strings.Contains(r.Stdout+r.Stderr, s) {
			t.Errorf("build output lacks %q", s)
		}
	}
	v, err := pullImage(r.Tag)
	if err != nil {
		t.Fatalf("%v\n%s", err, r.report())
	}
	for _, p := range checkImage(c, v, bases.Known) {
		t.Error(p)
	}
	if c.Run != nil {
		if os.Geteuid() != 0 {
			t.Log("run check skipped: needs root")
		} else {
			for _, p := range checkRun(v.Image, c.Run, filepath.Join(r.Dir, "run")) {
				t.Error(p)
			}
		}
	}
	if c.Skopeo {
		for _, p := range checkSkopeo(r.Tag, v) {
			t.Error(p)
		}
	}
	if t.Failed() {
		t.Logf("%s", r.report())
	}
}

// checkSkopeo reads the image with skopeo, a reader independent of both
// rbuild and go-containerregistry, and compares what it reports.
func checkSkopeo(ref string, v *imageView) []string {
	out, err := exec.Command("skopeo", "inspect", "--tls-verify=false", "docker://"+ref).Output()
	if err != nil {
		msg := err.Error()
		if ee, ok := err.(*exec.ExitError); ok {
			msg += ": " + string(ee.Stderr)
		}
		return []string{"skopeo inspect: " + msg}
	}
	var got struct {
		Digest       string
		Architecture string
		Os           string
		Layers       []string
		Labels       map[string]string
		Env          []string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		return []string{"skopeo inspect output: " + err.Error()}
	}
	var probs []string
	add := func(format string, a ...any) { probs = append(probs, "skopeo: "+fmt.Sprintf(format, a...)) }
	d, _ := v.Image.Digest()
	if got.Digest != d.String() {
		add("digest %s, go-containerregistry read %s", got.Digest, d)
	}
	if len(got.Layers) != len(v.Layers) {
		add("%d layers, go-containerregistry read %d", len(got.Layers), len(v.Layers))
	}
	if want := rawString(v.Raw["architecture"]); got.Architecture != want {
		add("architecture %q, config says %q", got.Architecture, want)
	}
	var labels map[string]string
	_ = json.Unmarshal(v.Config["Labels"], &labels)
	if len(labels)+len(got.Labels) > 0 && !reflect.DeepEqual(got.Labels, labels) {
		add("labels %v, config says %v", got.Labels, labels)
	}
	var env []string
	_ = json.Unmarshal(v.Config["Env"], &env)
	if !reflect.DeepEqual(got.Env, env) {
		add("env %q, config says %q", got.Env, env)
	}
	return probs
}
