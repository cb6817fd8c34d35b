package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"time"

	"github.com/rbuild/rbuild/internal/testenv"
)

// benchCase is one directory of bench/cases: a Dockerfile, an optional
// context/ and case.json.
type benchCase struct {
	Name string `json:"-"`
	Dir  string `json:"-"`

	Description string `json:"description"`
	// Base lists the base images the Dockerfile uses: busybox, debian,
	// golang, node.
	Base []string `json:"base"`
	// Quick cases run in BENCH_QUICK=1 mode.
	Quick bool `json:"quick,omitempty"`
	// Change is the edit of the one-file-changed phase.
	Change change `json:"change"`
	// Generate makes big inputs in the context copy; they are never
	// committed.
	Generate []generate `json:"generate,omitempty"`
	// Timeout bounds one build (a Go duration; default 15m).
	Timeout string `json:"timeout,omitempty"`

	timeout time.Duration
}

// change appends Append to the context file Path.
type change struct {
	Path   string `json:"path"`
	Append string `json:"append"`
}

// generate makes either Count files of Size bytes under Dir (100 per
// subdirectory), or one File of Size bytes. Contents are deterministic
// pseudo-random bytes (text for the small files), so they compress like
// real data would.
type generate struct {
	Dir   string `json:"dir,omitempty"`
	File  string `json:"file,omitempty"`
	Count int    `json:"count,omitempty"`
	Size  int64  `json:"size"`
}

var caseName = regexp.MustCompile(`^[a-z0-9]+(-[a-z0-9]+)*$`)

func loadCases(dir string) ([]*benchCase, error) { return testenv.LoadDirs(dir, loadCase) }

func loadCase(dir string) (*benchCase, error) {
	name := filepath.Base(dir)
	if !caseName.MatchString(name) {
		return nil, fmt.Errorf("%s: case names are lower-case words and dashes", dir)
	}
	b, err := os.ReadFile(filepath.Join(dir, "case.json"))
	if err != nil {
		return nil, err
	}
	c := &benchCase{Name: name, Dir: dir}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		return nil, fmt.Errorf("%s/case.json: %w", dir, err)
	}
	if c.Description == "" {
		return nil, fmt.Errorf("%s/case.json: description is required", dir)
	}
	for _, b := range c.Base {
		if _, ok := baseRefs[b]; !ok {
			return nil, fmt.Errorf("%s/case.json: unknown base image %q", dir, b)
		}
	}
	if c.Change.Path == "" || c.Change.Append == "" {
		return nil, fmt.Errorf("%s/case.json: change.path and change.append are required", dir)
	}
	for _, g := range c.Generate {
		if (g.Dir == "") == (g.File == "") || g.Size <= 0 || (g.Dir != "" && g.Count <= 0) {
			return nil, fmt.Errorf("%s/case.json: generate wants dir+count+size or file+size", dir)
		}
	}
	c.timeout = 15 * time.Minute
	if c.Timeout != "" {
		if c.timeout, err = time.ParseDuration(c.Timeout); err != nil {
			return nil, fmt.Errorf("%s/case.json: timeout: %w", dir, err)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "Dockerfile")); err != nil {
		return nil, err
	}
	// The changed file must exist in the committed context or be generated.
	if _, err := os.Stat(filepath.Join(dir, "context", c.Change.Path)); err != nil && !c.generates(c.Change.Path) {
		return nil, fmt.Errorf("%s/case.json: change.path %s is not in context/", dir, c.Change.Path)
	}
	return c, nil
}

// generates reports whether p is made by a generate entry.
func (c *benchCase) generates(p string) bool {
	for _, g := range c.Generate {
		if g.File == p {
			return true
		}
		if g.Dir != "" {
			if rel, err := filepath.Rel(g.Dir, p); err == nil && rel != "." && !filepath.IsAbs(rel) && rel[0] != '.' {
				return true
			}
		}
	}
	return false
}

// quickScale divides generated inputs in quick mode, so that it runs in a
// few minutes; the report says so next to the case.
const quickScale = 10

func selectCases(all []*benchCase, cfg config) []*benchCase {
	var out []*benchCase
	for _, c := range all {
		if cfg.Quick && len(c.Generate) > 0 {
			for i := range c.Generate {
				g := &c.Generate[i]
				if g.File != "" {
					g.Size = max(g.Size/quickScale, 1)
				} else {
					g.Count = (g.Count + quickScale - 1) / quickScale
				}
			}
			c.Description += fmt.Sprintf(" (Quick mode: the generated file is 1/%d of this size and there are 1/%d as many small files.)", quickScale, quickScale)
		}
		if len(cfg.Cases) > 0 {
			if contains(cfg.Cases, c.Name) {
				out = append(out, c)
			}
			continue
		}
		if cfg.Quick && !c.Quick {
			continue
		}
		out = append(out, c)
	}
	return out
}

// prepareContext copies the case's context and Dockerfile to dst (world
// readable, for the unprivileged builders) and generates its big inputs.
func prepareContext(c *benchCase, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	src := filepath.Join(c.Dir, "context")
	if _, err := os.Stat(src); err == nil {
		if err := copyTree(src, dst); err != nil {
			return err
		}
	}
	if err := copyFile(filepath.Join(c.Dir, "Dockerfile"), filepath.Join(dst, "Dockerfile"), 0o644); err != nil {
		return err
	}
	for _, g := range c.Generate {
		if g.File != "" {
			if err := genFile(filepath.Join(dst, g.File), g.Size, 1); err != nil {
				return err
			}
			continue
		}
		for i := 0; i < g.Count; i++ {
			p := filepath.Join(dst, g.Dir, fmt.Sprintf("%03d", i/100), fmt.Sprintf("%05d.txt", i))
			if err := genText(p, g.Size, uint64(i)+2); err != nil {
				return err
			}
		}
	}
	return nil
}

func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		t := filepath.Join(dst, rel)
		fi, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.MkdirAll(t, 0o755)
		case fi.Mode()&fs.ModeSymlink != 0:
			l, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(l, t)
		default:
			mode := os.FileMode(0o644)
			if fi.Mode()&0o100 != 0 {
				mode = 0o755
			}
			return copyFile(p, t, mode)
		}
	})
}

func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Chmod(mode); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// xorshift is a small deterministic generator: the same inputs on every
// machine without committing them.
type xorshift uint64

func (x *xorshift) next() uint64 {
	v := uint64(*x)
	v ^= v << 13
	v ^= v >> 7
	v ^= v << 17
	*x = xorshift(v)
	return v
}

func genFile(p string, size int64, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	x := xorshift(seed*0x9E3779B97F4A7C15 + 1)
	var b [8]byte
	for n := int64(0); n < size; n += 8 {
		v := x.next()
		for i := range b {
			b[i] = byte(v >> (8 * i))
		}
		k := int64(8)
		if size-n < k {
			k = size - n
		}
		if _, err := w.Write(b[:k]); err != nil {
			f.Close()
			return err
		}
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

const words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu"

func genText(p string, size int64, seed uint64) error {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	x := xorshift(seed*0x9E3779B97F4A7C15 + 1)
	fields := bytes.Fields([]byte(words))
	var b bytes.Buffer
	for int64(b.Len()) < size {
		v := x.next()
		b.Write(fields[v%uint64(len(fields))])
		if v>>32%12 == 0 {
			b.WriteByte('\n')
		} else {
			b.WriteByte(' ')
		}
	}
	return os.WriteFile(p, b.Bytes()[:size], 0o644)
}
