package executor

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"

	"github.com/moby/patternmatcher"
	"github.com/moby/patternmatcher/ignorefile"
)

// DockerignoreName is the build context's ignore file.
const DockerignoreName = ".dockerignore"

// LoadIgnore reads the ignore file of a build and returns the predicate for
// CopySpec.Excluded. Like BuildKit it first looks for a Dockerfile-specific
// file, <dockerfilePath>.dockerignore (e.g. build/app.Dockerfile.dockerignore),
// and only when that is absent for contextDir/.dockerignore. A relative
// dockerfilePath is taken relative to the current directory, as `docker
// build -f` does; an empty one skips the Dockerfile-specific lookup.
//
// Patterns follow Docker: ignorefile.ReadAll syntax, '!' exceptions, a path is
// excluded when it or one of its parents matches. The Dockerfile and the
// ignore file get no special treatment: BuildKit copies them like any other
// file unless a pattern excludes them.
//
// The predicate takes slash-separated paths relative to contextDir. A
// directory that is excluded but may hold entries re-included by an exception
// (".git" with "!.git/HEAD") is reported as not excluded, so that walks
// descend into it and test its entries one by one; a directory with no
// possible exception below it is reported excluded and can be skipped whole.
// Without an ignore file, or with no patterns, it excludes nothing. It is
// safe for concurrent use.
func LoadIgnore(contextDir, dockerfilePath string) (func(rel string) bool, error) {
	data, name, err := readIgnoreFile(contextDir, dockerfilePath)
	if err != nil {
		return nil, err
	}
	patterns, err := ignorefile.ReadAll(bytes.NewReader(data))
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", name, err)
	}
	return newIgnoreMatcher(contextDir, patterns, name)
}

// readIgnoreFile returns the content and the name of the ignore file that
// applies, or nil data when there is none.
func readIgnoreFile(contextDir, dockerfilePath string) ([]byte, string, error) {
	var candidates []string
	if dockerfilePath != "" && dockerfilePath != "-" {
		candidates = append(candidates, dockerfilePath+DockerignoreName)
	}
	candidates = append(candidates, filepath.Join(contextDir, DockerignoreName))
	for _, name := range candidates {
		data, err := os.ReadFile(name)
		if err == nil {
			return data, name, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, "", fmt.Errorf("read ignore file: %w", err)
		}
	}
	return nil, "", nil
}

// newIgnoreMatcher builds the predicate from already parsed patterns; name is
// used in errors only.
func newIgnoreMatcher(contextDir string, patterns []string, name string) (func(rel string) bool, error) {
	if len(patterns) == 0 {
		return func(string) bool { return false }, nil
	}
	pm, err := patternmatcher.New(patterns)
	if err != nil {
		return nil, fmt.Errorf("invalid pattern in %s: %w", name, err)
	}
	m := &ignoreMatcher{contextDir: contextDir, pm: pm, prefixOnlyExceptions: true}
	for _, p := range pm.Patterns() {
		if !p.Exclusion() {
			continue
		}
		s := patternWithoutTrailingGlob(p.String())
		m.exceptions = append(m.exceptions, s)
		// An exception with wildcards could match anywhere: such a set
		// forces walking every excluded directory, as fsutil does.
		if strings.ContainsAny(s, `*[]?^\`) {
			m.prefixOnlyExceptions = false
		}
	}
	return m.excluded, nil
}

type ignoreMatcher struct {
	contextDir string
	// mu guards pm: PatternMatcher compiles lazily and is not safe for
	// concurrent use.
	mu                   sync.Mutex
	pm                   *patternmatcher.PatternMatcher
	exceptions           []string
	prefixOnlyExceptions bool
}

func (m *ignoreMatcher) excluded(rel string) bool {
	rel = cleanRel(rel)
	if rel == "." {
		// The context root is never matched: "*" empties it, it does not
		// remove it.
		return false
	}
	m.mu.Lock()
	matched, err := m.pm.MatchesOrParentMatches(rel)
	m.mu.Unlock()
	if err != nil || !matched {
		// Patterns were validated by New; a match error means no match.
		return false
	}
	if len(m.exceptions) == 0 {
		return true
	}
	fi, err := os.Lstat(filepath.Join(m.contextDir, filepath.FromSlash(rel)))
	if err != nil || !fi.IsDir() {
		return true
	}
	return !m.mayReinclude(rel)
}

// mayReinclude reports whether an exception pattern could match something
// below the excluded directory dir (the same test as fsutil's walker).
func (m *ignoreMatcher) mayReinclude(dir string) bool {
	if !m.prefixOnlyExceptions {
		return true
	}
	dirSlash := dir + "/"
	for _, e := range m.exceptions {
		if strings.HasPrefix(e+"/", dirSlash) {
			return true
		}
	}
	return false
}

func patternWithoutTrailingGlob(p string) string {
	p = filepath.ToSlash(p)
	p = strings.TrimSuffix(p, "/**")
	return strings.TrimSuffix(p, "/*")
}

// cleanRel normalises a context-relative path: slash-separated, no leading
// "/" or "./", "." for the root.
func cleanRel(rel string) string {
	rel = path.Clean("/" + filepath.ToSlash(rel))
	if rel == "/" {
		return "."
	}
	return rel[1:]
}
