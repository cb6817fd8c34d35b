package integration

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/rbuild/rbuild/internal/testenv"
)

// casesDir holds one directory per end-to-end case: a Dockerfile, an
// optional context/ directory and case.json (see README.md).
const casesDir = "cases"

// Case is one end-to-end case as read from cases/NAME/case.json.
type Case struct {
	Name string `json:"-"`
	Dir  string `json:"-"`

	Description string `json:"description"`
	// Dockerfile names the Dockerfile inside the case directory
	// (default "Dockerfile").
	Dockerfile string `json:"dockerfile,omitempty"`
	// DockerfileInContext puts the Dockerfile at the context root and
	// passes no -f, so the builder's default lookup is exercised.
	DockerfileInContext bool `json:"dockerfile_in_context,omitempty"`
	// StdinDockerfile passes the Dockerfile on standard input with "-f -".
	StdinDockerfile bool `json:"stdin_dockerfile,omitempty"`
	// Args are extra command-line arguments, placed before the context.
	// {{REGISTRY}}, {{BUSYBOX_DIGEST}} and {{OUT}} are replaced.
	Args []string `json:"args,omitempty"`
	// BuildArgs become --build-arg K=V; values take the same placeholders.
	BuildArgs map[string]string `json:"build_args,omitempty"`
	// Rootless (default true) also runs the build as the unprivileged user.
	Rootless           *bool  `json:"rootless,omitempty"`
	RootlessSkipReason string `json:"rootless_skip_reason,omitempty"`
	// Requires names optional base images the case needs ("debian").
	Requires []string `json:"requires,omitempty"`
	// Setup lists operations performed on a copy of context/ before the
	// build, for what git cannot store.
	Setup SetupSteps `json:"setup,omitempty"`
	// Timeout of one build, as a Go duration (default 5m).
	Timeout string `json:"timeout,omitempty"`

	// Expectations on a successful build.
	Layers       *int                       `json:"layers,omitempty"`
	Config       map[string]json.RawMessage `json:"config,omitempty"`
	Author       *string                    `json:"author,omitempty"`
	Architecture string                     `json:"architecture,omitempty"`
	OS           string                     `json:"os,omitempty"`
	History      []HistoryExpect            `json:"history,omitempty"`
	Files        map[string]FileExpect      `json:"files,omitempty"`
	Absent       []string                   `json:"absent,omitempty"`
	LayerFiles   []LayerExpect              `json:"layer_files,omitempty"`
	Run          *RunExpect                 `json:"run,omitempty"`
	// OutputContains must appear in the build's combined output.
	OutputContains []string `json:"output_contains,omitempty"`
	// Skopeo also reads the image with skopeo inspect.
	Skopeo bool `json:"skopeo,omitempty"`

	// Error makes this a bad-input case: the build must fail.
	Error *ErrorExpect `json:"error,omitempty"`
}

// HistoryExpect matches one history entry. The expected list is aligned
// with the end of the image's history.
type HistoryExpect struct {
	CreatedByContains string `json:"created_by_contains,omitempty"`
	CreatedBy         string `json:"created_by,omitempty"`
	EmptyLayer        *bool  `json:"empty_layer,omitempty"`
}

// FileExpect describes one path in the flattened image file system. Only
// the fields that are set are compared.
type FileExpect struct {
	Type    string  `json:"type,omitempty"` // file, dir, symlink, hardlink, char, block, fifo
	Mode    string  `json:"mode,omitempty"` // octal permission bits incl. setuid/setgid/sticky
	UID     *int    `json:"uid,omitempty"`
	GID     *int    `json:"gid,omitempty"`
	Size    *int64  `json:"size,omitempty"`
	Content *string `json:"content,omitempty"`
	SHA256  string  `json:"sha256,omitempty"`
	Link    string  `json:"link,omitempty"`
	// ContentContains is a looser form of Content for output that varies.
	ContentContains string `json:"content_contains,omitempty"`
}

// LayerExpect lists entry names that one layer's tar must or must not hold.
type LayerExpect struct {
	// Layer indexes the image's layers; negative counts from the end.
	Layer int `json:"layer"`
	// Has must be entries of the layer (names without a leading "./" or "/").
	Has []string `json:"has,omitempty"`
	// HasAny lists alternatives: each group needs at least one entry, for
	// results that valid layer writers represent differently (an opaque
	// directory marker, or one whiteout per removed child).
	HasAny [][]string `json:"has_any,omitempty"`
	// Lacks must match no entry, nor anything below it.
	Lacks []string `json:"lacks,omitempty"`
}

// RunExpect runs the built image with runc and compares its output.
type RunExpect struct {
	// Argv replaces the image's entrypoint and command; empty keeps them.
	Argv           []string `json:"argv,omitempty"`
	Stdout         *string  `json:"stdout,omitempty"`
	StdoutContains string   `json:"stdout_contains,omitempty"`
	ExitCode       int      `json:"exit_code,omitempty"`
}

// ErrorExpect describes how a bad-input build must fail.
type ErrorExpect struct {
	// Contains must all be substrings of the build's standard error.
	Contains []string `json:"contains,omitempty"`
	// Matches must all be regular expressions matching standard error.
	Matches []string `json:"matches,omitempty"`
}

// SetupSteps is a list of steps; a single object is accepted too.
type SetupSteps []SetupStep

// UnmarshalJSON accepts one step object or a list of them.
func (s *SetupSteps) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '{' {
		var one SetupStep
		if err := strictUnmarshal(b, &one); err != nil {
			return err
		}
		*s = SetupSteps{one}
		return nil
	}
	var many []SetupStep
	if err := strictUnmarshal(b, &many); err != nil {
		return err
	}
	*s = many
	return nil
}

// SetupStep changes the context copy. Within one step the operations run
// in the order of the fields below; paths are relative to the context and
// may start with "../" to place a file beside it (outside the context).
type SetupStep struct {
	Mkdir    map[string]string     `json:"mkdir,omitempty"`    // path -> mode
	Write    map[string]string     `json:"write,omitempty"`    // path -> content
	BigFile  map[string]int64      `json:"bigfile,omitempty"`  // path -> size (deterministic bytes)
	Tar      map[string][]TarEntry `json:"tar,omitempty"`      // archive path (.tar, .tar.gz, .tgz) -> entries
	Symlink  map[string]string     `json:"symlink,omitempty"`  // path -> target
	Hardlink map[string]string     `json:"hardlink,omitempty"` // new path -> existing path
	Chmod    map[string]string     `json:"chmod,omitempty"`    // path -> mode
	Remove   []string              `json:"remove,omitempty"`   // paths
}

// TarEntry is one entry of an archive made by a setup step.
type TarEntry struct {
	Path    string `json:"path"`
	Type    string `json:"type,omitempty"` // file (default), dir, symlink, hardlink
	Mode    string `json:"mode,omitempty"`
	UID     int    `json:"uid,omitempty"`
	GID     int    `json:"gid,omitempty"`
	Content string `json:"content,omitempty"`
	Link    string `json:"link,omitempty"`
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after JSON value")
	}
	return nil
}

// loadCases reads every case under dir, sorted by name.
func loadCases(dir string) ([]*Case, error) { return testenv.LoadDirs(dir, loadCase) }

func loadCase(dir string) (*Case, error) {
	b, err := os.ReadFile(filepath.Join(dir, "case.json"))
	if err != nil {
		return nil, err
	}
	c := &Case{}
	if err := strictUnmarshal(b, c); err != nil {
		return nil, fmt.Errorf("%s/case.json: %w", dir, err)
	}
	c.Name = filepath.Base(dir)
	c.Dir, err = filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if c.Dockerfile == "" {
		c.Dockerfile = "Dockerfile"
	}
	return c, nil
}

// rootless reports whether the case also runs as the unprivileged user.
func (c *Case) rootless() bool { return c.Rootless == nil || *c.Rootless }

var (
	caseNameRE = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)
	configKeys = map[string]bool{
		"Env": true, "Cmd": true, "Entrypoint": true, "WorkingDir": true, "User": true,
		"Labels": true, "ExposedPorts": true, "Volumes": true, "StopSignal": true,
		"Healthcheck": true, "Shell": true, "OnBuild": true, "ArgsEscaped": true,
	}
	fileTypes    = map[string]bool{"file": true, "dir": true, "symlink": true, "hardlink": true, "char": true, "block": true, "fifo": true}
	knownBases   = map[string]bool{"debian": true}
	placeholders = regexp.MustCompile(`\{\{[A-Z_]+\}\}`)
	knownHolders = map[string]bool{"{{REGISTRY}}": true, "{{BUSYBOX_DIGEST}}": true, "{{OUT}}": true}
)

// validate checks a case for mistakes a JSON decoder cannot see.
func (c *Case) validate() error {
	var errs []string
	bad := func(format string, a ...any) { errs = append(errs, fmt.Sprintf(format, a...)) }

	if !caseNameRE.MatchString(c.Name) {
		bad("name %q: use lower-case words joined by dashes (it becomes a repository name)", c.Name)
	}
	if strings.TrimSpace(c.Description) == "" {
		bad("description is empty")
	}
	df := filepath.Join(c.Dir, c.Dockerfile)
	dfText, err := os.ReadFile(df)
	switch {
	case err != nil && c.Error == nil:
		bad("%s: %v", c.Dockerfile, err)
	case err == nil:
		first := firstInstruction(string(dfText))
		if first != "ARG REGISTRY" && c.Error == nil {
			bad("%s must start with \"ARG REGISTRY\" (found %q)", c.Dockerfile, first)
		}
	}
	if c.StdinDockerfile && c.DockerfileInContext {
		bad("stdin_dockerfile and dockerfile_in_context exclude each other")
	}
	if !c.rootless() && strings.TrimSpace(c.RootlessSkipReason) == "" {
		bad("rootless is false without a rootless_skip_reason")
	}
	for _, r := range c.Requires {
		if !knownBases[r] {
			bad("requires: unknown base %q", r)
		}
	}
	if c.Timeout != "" {
		if _, err := time.ParseDuration(c.Timeout); err != nil {
			bad("timeout: %v", err)
		}
	}
	for _, a := range append(append([]string{}, c.Args...), mapValues(c.BuildArgs)...) {
		for _, p := range placeholders.FindAllString(a, -1) {
			if !knownHolders[p] {
				bad("unknown placeholder %s in %q", p, a)
			}
		}
	}
	if k := "REGISTRY"; c.BuildArgs[k] != "" {
		bad("build_args must not set REGISTRY: the harness does")
	}
	for i, s := range c.Setup {
		if err := s.validate(); err != nil {
			bad("setup[%d]: %v", i, err)
		}
	}

	if c.Error != nil {
		if len(c.Error.Contains)+len(c.Error.Matches) == 0 {
			bad("error: give contains or matches")
		}
		for _, m := range c.Error.Matches {
			if _, err := regexp.Compile(m); err != nil {
				bad("error.matches %q: %v", m, err)
			}
		}
		if c.Layers != nil || c.Config != nil || len(c.Files) > 0 || len(c.Absent) > 0 ||
			len(c.LayerFiles) > 0 || c.Run != nil || len(c.History) > 0 || c.Author != nil {
			bad("error cases expect no image: drop layers/config/files/absent/layer_files/run/history/author")
		}
		if len(errs) > 0 {
			return fmt.Errorf("case %s: %s", c.Name, strings.Join(errs, "; "))
		}
		return nil
	}

	if c.Layers == nil && len(c.Files) == 0 && c.Config == nil && c.Run == nil {
		bad("a successful case must expect something: layers, config, files or run")
	}
	if c.Layers != nil && *c.Layers < 0 {
		bad("layers must not be negative")
	}
	for k := range c.Config {
		if !configKeys[k] {
			bad("config key %q is not one the checker compares", k)
		}
	}
	for p, f := range c.Files {
		if !strings.HasPrefix(p, "/") {
			bad("files: %q must be absolute", p)
		}
		if f.Type != "" && !fileTypes[f.Type] {
			bad("files %s: unknown type %q", p, f.Type)
		}
		if f.Mode != "" {
			if _, err := parseMode(f.Mode); err != nil {
				bad("files %s: mode: %v", p, err)
			}
		}
		if f.Content != nil && f.SHA256 != "" {
			bad("files %s: give content or sha256, not both", p)
		}
		if f.SHA256 != "" && !regexp.MustCompile(`^[0-9a-f]{64}$`).MatchString(f.SHA256) {
			bad("files %s: sha256 must be 64 lower-case hex digits", p)
		}
		if (f.Content != nil || f.SHA256 != "" || f.ContentContains != "") && f.Type != "" && f.Type != "file" && f.Type != "hardlink" {
			bad("files %s: content only applies to files", p)
		}
		if f.Link != "" && f.Type != "symlink" && f.Type != "hardlink" {
			bad("files %s: link needs type symlink or hardlink", p)
		}
	}
	for _, p := range c.Absent {
		if !strings.HasPrefix(p, "/") {
			bad("absent: %q must be absolute", p)
		}
		if _, ok := c.Files[p]; ok {
			bad("%s is both in files and absent", p)
		}
	}
	for i, l := range c.LayerFiles {
		if c.Layers != nil && (l.Layer >= *c.Layers || l.Layer < -*c.Layers) {
			bad("layer_files[%d]: layer %d is out of range for %d layers", i, l.Layer, *c.Layers)
		}
		for _, n := range append(append([]string{}, l.Has...), l.Lacks...) {
			if strings.HasPrefix(n, "/") || strings.HasPrefix(n, "./") {
				bad("layer_files[%d]: %q: write names without a leading / or ./", i, n)
			}
		}
	}
	if c.Run != nil && c.Run.Stdout == nil && c.Run.StdoutContains == "" {
		bad("run: give stdout or stdout_contains")
	}
	if len(errs) > 0 {
		return fmt.Errorf("case %s: %s", c.Name, strings.Join(errs, "; "))
	}
	return nil
}

func (s *SetupStep) validate() error {
	for p, m := range s.Mkdir {
		if err := checkSetupPath(p); err != nil {
			return err
		}
		if _, err := parseMode(m); err != nil {
			return fmt.Errorf("mkdir %s: %v", p, err)
		}
	}
	for p, m := range s.Chmod {
		if err := checkSetupPath(p); err != nil {
			return err
		}
		if _, err := parseMode(m); err != nil {
			return fmt.Errorf("chmod %s: %v", p, err)
		}
	}
	for p := range s.Write {
		if err := checkSetupPath(p); err != nil {
			return err
		}
	}
	for p, n := range s.BigFile {
		if err := checkSetupPath(p); err != nil {
			return err
		}
		if n < 0 || n > 1<<30 {
			return fmt.Errorf("bigfile %s: size %d out of range", p, n)
		}
	}
	for p, ents := range s.Tar {
		if err := checkSetupPath(p); err != nil {
			return err
		}
		for _, e := range ents {
			switch e.Type {
			case "", "file", "dir", "symlink", "hardlink":
			default:
				return fmt.Errorf("tar %s: %s: unknown type %q", p, e.Path, e.Type)
			}
			if e.Mode != "" {
				if _, err := parseMode(e.Mode); err != nil {
					return fmt.Errorf("tar %s: %s: %v", p, e.Path, err)
				}
			}
		}
	}
	for p := range s.Symlink {
		if err := checkSetupPath(p); err != nil {
			return err
		}
	}
	for p, old := range s.Hardlink {
		if err := checkSetupPath(p); err != nil {
			return err
		}
		if err := checkSetupPath(old); err != nil {
			return err
		}
	}
	for _, p := range s.Remove {
		if err := checkSetupPath(p); err != nil {
			return err
		}
	}
	return nil
}

func checkSetupPath(p string) error {
	if p == "" || filepath.IsAbs(p) {
		return fmt.Errorf("setup path %q must be relative", p)
	}
	clean := filepath.Clean(p)
	// One "../" is allowed: a file beside the context, never further out.
	if strings.HasPrefix(clean, "../") {
		clean = strings.TrimPrefix(clean, "../")
	}
	if clean == ".." || strings.HasPrefix(clean, "../") {
		return fmt.Errorf("setup path %q leaves the case's work directory", p)
	}
	return nil
}

// firstInstruction returns the first non-comment, non-blank line of a
// Dockerfile, with runs of blanks collapsed.
func firstInstruction(df string) string {
	for _, line := range strings.Split(df, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		return strings.Join(strings.Fields(line), " ")
	}
	return ""
}

func parseMode(s string) (int64, error) {
	if len(s) < 3 || len(s) > 5 || s[0] != '0' && len(s) > 4 {
		return 0, fmt.Errorf("mode %q: write octal like \"0644\"", s)
	}
	m, err := strconv.ParseInt(s, 8, 32)
	if err != nil || m > 07777 {
		return 0, fmt.Errorf("mode %q: write octal like \"0644\"", s)
	}
	return m, nil
}

func mapValues(m map[string]string) []string {
	var out []string
	for _, v := range m {
		out = append(out, v)
	}
	return out
}
