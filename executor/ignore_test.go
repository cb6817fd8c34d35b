package executor

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
)

func TestIgnoreRules(t *testing.T) {
	ctxDir := t.TempDir()
	cpWrite(t, filepath.Join(ctxDir, ".dockerignore"), "\ufeff# comment\n"+
		"  *.log  \n"+
		"!important.log\n"+
		"/build\n"+
		"**/*.tmp\n"+
		"docs/*/draft\n"+
		"vendor\n"+
		"!vendor/keep\n"+
		"Dockerfile\n", 0o644)
	for _, d := range []string{"vendor/keep", "vendor/drop", "build", "docs/a"} {
		if err := os.MkdirAll(filepath.Join(ctxDir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	excluded, err := LoadIgnore(ctxDir, filepath.Join(ctxDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	for rel, want := range map[string]bool{
		"app.log":             true,
		"important.log":       false,
		"sub/app.log":         false, // "*.log" is anchored at the root
		"build":               true,
		"build/out/bin":       true, // a parent matches
		"./build/x":           true,
		"/build/x":            true,
		"a/b/c.tmp":           true,
		"c.tmp":               true,
		"docs/a/draft":        true,
		"docs/a/final":        false,
		"vendor/drop":         true,
		"vendor/keep":         false,
		"vendor/keep/file.go": false,
		// Excluded, but an exception lies below: reported as not excluded
		// so that walks descend into it.
		"vendor": false,
		// Nothing special about the Dockerfile or the ignore file.
		"Dockerfile":    true,
		".dockerignore": false,
		".":             false,
		"":              false,
		"main.go":       false,
	} {
		if got := excluded(rel); got != want {
			t.Errorf("excluded(%q) = %v, want %v", rel, got, want)
		}
	}
}

func TestIgnoreExcludedDirWithoutException(t *testing.T) {
	ctxDir := t.TempDir()
	cpWrite(t, filepath.Join(ctxDir, ".dockerignore"), "node_modules\n.git\n!.git/HEAD\n", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "node_modules/x/index.js"), "", 0o644)
	cpWrite(t, filepath.Join(ctxDir, ".git/HEAD"), "", 0o644)
	excluded, err := LoadIgnore(ctxDir, "")
	if err != nil {
		t.Fatal(err)
	}
	if !excluded("node_modules") {
		t.Error("node_modules: not excluded")
	}
	if excluded(".git") || excluded(".git/HEAD") || !excluded(".git/config") {
		t.Error(".git exception not honoured")
	}
}

func TestIgnoreWildcardExceptionDescends(t *testing.T) {
	ctxDir := t.TempDir()
	cpWrite(t, filepath.Join(ctxDir, ".dockerignore"), "*\n!**/*.go\n", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "pkg/a.go"), "", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "pkg/a.txt"), "", 0o644)
	excluded, err := LoadIgnore(ctxDir, "")
	if err != nil {
		t.Fatal(err)
	}
	if excluded("pkg") || excluded("pkg/a.go") || !excluded("pkg/a.txt") {
		t.Errorf("pkg %v, pkg/a.go %v, pkg/a.txt %v", excluded("pkg"), excluded("pkg/a.go"), excluded("pkg/a.txt"))
	}
}

func TestIgnoreDockerfileSpecificFileWins(t *testing.T) {
	ctxDir := t.TempDir()
	cpWrite(t, filepath.Join(ctxDir, ".dockerignore"), "from-context\n", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "build/app.Dockerfile.dockerignore"), "from-dockerfile\n", 0o644)

	excluded, err := LoadIgnore(ctxDir, filepath.Join(ctxDir, "build/app.Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !excluded("from-dockerfile") || excluded("from-context") {
		t.Error("Dockerfile-specific ignore file not used alone")
	}

	// Without one, the context's file applies.
	excluded, err = LoadIgnore(ctxDir, filepath.Join(ctxDir, "build/other.Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if excluded("from-dockerfile") || !excluded("from-context") {
		t.Error("context ignore file not used")
	}

	// Dockerfile.dockerignore next to the default Dockerfile.
	cpWrite(t, filepath.Join(ctxDir, "Dockerfile.dockerignore"), "special\n", 0o644)
	excluded, err = LoadIgnore(ctxDir, filepath.Join(ctxDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	if !excluded("special") || excluded("from-context") {
		t.Error("Dockerfile.dockerignore not used")
	}
}

func TestIgnoreNoFile(t *testing.T) {
	excluded, err := LoadIgnore(t.TempDir(), "")
	if err != nil {
		t.Fatal(err)
	}
	if excluded("anything") {
		t.Error("excluded without an ignore file")
	}
}

func TestIgnoreBadPattern(t *testing.T) {
	ctxDir := t.TempDir()
	cpWrite(t, filepath.Join(ctxDir, ".dockerignore"), "[\n", 0o644)
	if _, err := LoadIgnore(ctxDir, ""); err == nil {
		t.Error("bad pattern: no error")
	}
}

func TestIgnoreConcurrentUse(t *testing.T) {
	ctxDir := t.TempDir()
	cpWrite(t, filepath.Join(ctxDir, ".dockerignore"), "*.log\n!keep*.log\nsub/**/x\n", 0o644)
	excluded, err := LoadIgnore(ctxDir, "")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := 0; j < 200; j++ {
				if !excluded("a.log") || excluded("keep1.log") || !excluded("sub/a/b/x") {
					t.Error("wrong result under concurrency")
					return
				}
			}
		}()
	}
	wg.Wait()
}
