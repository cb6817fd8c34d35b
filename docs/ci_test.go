// Package docs holds rbuild's documentation. Its tests keep the examples
// honest: every YAML example of ci.md must parse, and every rbuild command
// line in it may use only flags that `rbuild --help` lists.
package docs

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"gopkg.in/yaml.v3"
)

// yamlBlock is one ```yaml fence of a Markdown file.
type yamlBlock struct {
	Line    int    // line of the opening fence
	Section string // the "## " heading it is under
	Text    string
}

// yamlBlocks returns the ```yaml blocks of a Markdown file.
func yamlBlocks(t *testing.T, file string) []yamlBlock {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var (
		out     []yamlBlock
		cur     *yamlBlock
		body    strings.Builder
		section string
		n       int
	)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		n++
		l := sc.Text()
		switch {
		case cur == nil && strings.HasPrefix(l, "## "):
			section = strings.TrimPrefix(l, "## ")
		case cur == nil && (strings.TrimSpace(l) == "```yaml" || strings.TrimSpace(l) == "```yml"):
			cur = &yamlBlock{Line: n, Section: section}
			body.Reset()
		case cur != nil && strings.TrimSpace(l) == "```":
			cur.Text = body.String()
			out = append(out, *cur)
			cur = nil
		case cur != nil:
			body.WriteString(l)
			body.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: unterminated ```yaml block", file, cur.Line)
	}
	return out
}

// command is one rbuild invocation found in an example.
type command struct {
	Line int      // line in the Markdown file (approximate for scalars)
	Args []string // arguments after the rbuild binary
	From string   // how it was written, for messages
}

// commands finds rbuild invocations in a parsed YAML document: container
// specs (command: [.../rbuild] plus args: [...]) and shell lines in any
// string (GitLab script, GitHub run, ...).
func commands(doc *yaml.Node, baseLine int) []command {
	var out []command
	skip := map[*yaml.Node]bool{}
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n == nil || skip[n] {
			return
		}
		switch n.Kind {
		case yaml.MappingNode:
			var cmdNode, argsNode *yaml.Node
			for i := 0; i+1 < len(n.Content); i += 2 {
				switch n.Content[i].Value {
				case "command":
					cmdNode = n.Content[i+1]
				case "args":
					argsNode = n.Content[i+1]
				}
			}
			if cmdNode != nil && cmdNode.Kind == yaml.SequenceNode && len(cmdNode.Content) > 0 && isRbuild(cmdNode.Content[0].Value) {
				var argv []string
				for _, c := range cmdNode.Content[1:] {
					argv = append(argv, c.Value)
				}
				if argsNode != nil && argsNode.Kind == yaml.SequenceNode {
					for _, c := range argsNode.Content {
						argv = append(argv, c.Value)
					}
					skip[argsNode] = true
				}
				skip[cmdNode] = true
				out = append(out, command{Line: baseLine + cmdNode.Line, Args: argv, From: "command/args of a container"})
			}
			for _, c := range n.Content {
				walk(c)
			}
		case yaml.SequenceNode, yaml.DocumentNode:
			for _, c := range n.Content {
				walk(c)
			}
		case yaml.ScalarNode:
			if len(strings.Fields(n.Value)) < 2 {
				// A name (name: rbuild), an image, a path: no command.
				return
			}
			for _, argv := range shellCommands(n.Value) {
				out = append(out, command{Line: baseLine + n.Line, Args: argv, From: "shell line"})
			}
		}
	}
	walk(doc)
	return out
}

func isRbuild(word string) bool { return path.Base(word) == "rbuild" }

// ghExpr is a GitHub Actions expression, which may hold spaces.
var ghExpr = regexp.MustCompile(`\$\{\{[^}]*\}\}`)

// shellCommands returns the arguments of every rbuild command in a shell
// script: lines joined at backslash-newline, split into words with shell
// quoting, rbuild recognised in command position (after sudo, env and
// variable assignments, or a control operator).
func shellCommands(script string) [][]string {
	script = strings.ReplaceAll(script, "\\\n", " ")
	script = ghExpr.ReplaceAllString(script, "GHEXPR")
	var out [][]string
	for _, line := range strings.Split(script, "\n") {
		words := shellWords(line)
		start := true
		for i := 0; i < len(words); i++ {
			w := words[i]
			switch {
			case isOperator(w):
				start = true
			case start && (w == "sudo" || w == "env" || w == "exec" || isAssignment(w)):
			case start && isRbuild(w):
				var argv []string
				for i++; i < len(words) && !isOperator(words[i]); i++ {
					argv = append(argv, words[i])
				}
				out = append(out, argv)
				start = true
			default:
				start = false
			}
		}
	}
	return out
}

func isOperator(w string) bool {
	switch w {
	case "&&", "||", ";", "|", "then", "do", "else", ">", ">>", "<":
		return true
	}
	return false
}

var assignment = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*=`)

func isAssignment(w string) bool { return assignment.MatchString(w) }

// shellWords splits a line into words as sh would, for the quoting used in
// the examples: '...', "..." with backslash escapes, unquoted backslash.
func shellWords(line string) []string {
	var (
		words []string
		cur   strings.Builder
		in    bool // inside a word
		quote rune
	)
	flush := func() {
		if in {
			words = append(words, cur.String())
			cur.Reset()
			in = false
		}
	}
	rs := []rune(line)
	for i := 0; i < len(rs); i++ {
		r := rs[i]
		switch {
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case quote == '"':
			switch {
			case r == '"':
				quote = 0
			case r == '\\' && i+1 < len(rs) && strings.ContainsRune(`"\$`+"`", rs[i+1]):
				i++
				cur.WriteRune(rs[i])
			default:
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, in = r, true
		case r == '\\' && i+1 < len(rs):
			i++
			cur.WriteRune(rs[i])
			in = true
		case r == ' ' || r == '\t':
			flush()
		case r == '#' && !in:
			return words
		default:
			cur.WriteRune(r)
			in = true
		}
	}
	flush()
	return words
}

// flagSet is what `rbuild [SUBCOMMAND] --help` lists.
type flagSet struct {
	long  map[string]bool // name → takes a value
	short map[string]string
}

var helpFlag = regexp.MustCompile(`^\s+(?:-([A-Za-z0-9]), )?--([a-z0-9][a-z0-9-]*)(?: ([a-zA-Z]+))?(?:\s{2,}|$)`)

func parseHelp(help string) flagSet {
	fs := flagSet{long: map[string]bool{}, short: map[string]string{}}
	inFlags := false
	for _, l := range strings.Split(help, "\n") {
		if strings.HasSuffix(strings.TrimSpace(l), "Flags:") {
			inFlags = true
			continue
		}
		if !inFlags {
			continue
		}
		m := helpFlag.FindStringSubmatch(l)
		if m == nil {
			continue
		}
		fs.long[m[2]] = m[3] != ""
		if m[1] != "" {
			fs.short[m[1]] = m[2]
		}
	}
	return fs
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// rbuildBinary builds ./cmd/rbuild once (or uses $RBUILD_BIN).
func rbuildBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("RBUILD_BIN"); p != "" {
			binPath = p
			return
		}
		dir, err := os.MkdirTemp("", "rbuild-docs-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "rbuild")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/rbuild")
		cmd.Dir = ".."
		cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("go build ./cmd/rbuild: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

var (
	helpMu    sync.Mutex
	helpCache = map[string]flagSet{}
)

// flagsOf returns the flags of rbuild's subcommand sub ("" for the root).
func flagsOf(t *testing.T, sub string) flagSet {
	t.Helper()
	helpMu.Lock()
	defer helpMu.Unlock()
	if fs, ok := helpCache[sub]; ok {
		return fs
	}
	args := []string{"--help"}
	if sub != "" {
		args = []string{sub, "--help"}
	}
	out, err := exec.Command(rbuildBinary(t), args...).CombinedOutput()
	if err != nil {
		t.Fatalf("rbuild %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	fs := parseHelp(string(out))
	if sub != "version" && len(fs.long) < 10 {
		t.Fatalf("rbuild %s lists only %d flags:\n%s", strings.Join(args, " "), len(fs.long), out)
	}
	helpCache[sub] = fs
	return fs
}

// subcommands are rbuild's commands that the examples may name.
var subcommands = map[string]int{"build": 1, "version": 0} // → positional arguments

// checkArgs checks one rbuild invocation against --help.
func checkArgs(t *testing.T, argv []string) []string {
	var probs []string
	sub := ""
	if len(argv) > 0 {
		if _, ok := subcommands[argv[0]]; ok {
			sub, argv = argv[0], argv[1:]
		}
	}
	fs := flagsOf(t, sub)
	var positional []string
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		switch {
		case a == "-" || !strings.HasPrefix(a, "-"):
			positional = append(positional, a)
		case strings.HasPrefix(a, "--"):
			name, _, hasValue := strings.Cut(a[2:], "=")
			takes, ok := fs.long[name]
			if !ok {
				probs = append(probs, fmt.Sprintf("unknown flag --%s", name))
				continue
			}
			if takes && !hasValue {
				if i+1 >= len(argv) {
					probs = append(probs, fmt.Sprintf("--%s needs a value", name))
					continue
				}
				i++
			}
		default:
			name, ok := fs.short[a[1:2]]
			if !ok {
				probs = append(probs, fmt.Sprintf("unknown flag -%s", a[1:2]))
				continue
			}
			if fs.long[name] && len(a) == 2 {
				if i+1 >= len(argv) {
					probs = append(probs, fmt.Sprintf("-%s needs a value", a[1:2]))
					continue
				}
				i++
			}
		}
	}
	want := 1 // the root command builds too: rbuild [flags] CONTEXT
	if n, ok := subcommands[sub]; ok && sub != "" {
		want = n
	}
	if len(positional) != want {
		probs = append(probs, fmt.Sprintf("%d positional arguments %q, want %d", len(positional), positional, want))
	}
	return probs
}

// TestCIExamples parses every YAML example of ci.md and checks each rbuild
// command line in it against `rbuild --help`.
func TestCIExamples(t *testing.T) {
	const file = "ci.md"
	blocks := yamlBlocks(t, file)
	if len(blocks) == 0 {
		t.Fatalf("%s has no ```yaml blocks", file)
	}
	perSection := map[string]int{}
	total := 0
	for _, b := range blocks {
		dec := yaml.NewDecoder(strings.NewReader(b.Text))
		for {
			var doc yaml.Node
			err := dec.Decode(&doc)
			if err != nil {
				if !errors.Is(err, io.EOF) {
					t.Errorf("%s:%d (%s): YAML: %v", file, b.Line, b.Section, err)
				}
				break
			}
			for _, c := range commands(&doc, b.Line) {
				total++
				perSection[b.Section]++
				for _, p := range checkArgs(t, c.Args) {
					t.Errorf("%s:%d (%s, %s): rbuild %s: %s", file, c.Line, b.Section, c.From, strings.Join(c.Args, " "), p)
				}
			}
		}
	}
	// Every CI system the page covers shows at least one rbuild command
	// (guards against an extractor that silently finds nothing).
	for _, s := range []string{"Kubernetes Job", "GitLab CI", "GitHub Actions", "Tekton Task"} {
		if perSection[s] == 0 {
			t.Errorf("%s: no rbuild command found in the YAML of section %q", file, s)
		}
	}
	t.Logf("%d YAML blocks, %d rbuild commands checked", len(blocks), total)
}

// TestShellCommands pins the extractor on the forms the examples use.
func TestShellCommands(t *testing.T) {
	for _, tc := range []struct {
		script string
		want   [][]string
	}{
		{`rbuild build -t "a b" .`, [][]string{{"build", "-t", "a b", "."}}},
		{"sudo DOCKER_CONFIG=\"$HOME/.docker\" rbuild build \\\n  --tag x \\\n  .", [][]string{{"build", "--tag", "x", "."}}},
		{`id=$(docker create registry.example.com/tools/rbuild:1.0)`, nil},
		{`sudo docker cp "$id:/usr/local/bin/rbuild" /usr/local/bin/rbuild`, nil},
		{`cd x && /usr/local/bin/rbuild --push=false . | tee log`, [][]string{{"--push=false", "."}}},
		{`echo "--tag ${{ github.sha }}" # rbuild --bogus`, nil},
	} {
		got := shellCommands(tc.script)
		if fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("shellCommands(%q) = %q, want %q", tc.script, got, tc.want)
		}
	}
}

// TestCheckArgs pins the flag checker against the real --help.
func TestCheckArgs(t *testing.T) {
	for _, tc := range []struct {
		argv []string
		ok   bool
	}{
		{[]string{"build", "--tag=x", "--cache-repo", "r", "."}, true},
		{[]string{"build", "-t", "x", "-f", "-", "."}, true},
		{[]string{"--push=false", "."}, true},
		{[]string{"version"}, true},
		{[]string{"build", "--no-such-flag", "."}, false},
		{[]string{"build", "-Z", "."}, false},
		{[]string{"build", "--tag", "x"}, false}, // no context
		{[]string{"build", "."}, true},
	} {
		probs := checkArgs(t, tc.argv)
		if (len(probs) == 0) != tc.ok {
			t.Errorf("checkArgs(%q) = %q, want ok=%v", tc.argv, probs, tc.ok)
		}
	}
}
