package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCaseFiles checks every case under bench/cases: case.json parses
// with known keys only, the Dockerfile exists and takes the REGISTRY arg,
// and the file the one-file phase edits is there or generated.
func TestCaseFiles(t *testing.T) {
	cases, err := loadCases("cases")
	if err != nil {
		t.Fatal(err)
	}
	if len(cases) < 6 {
		t.Fatalf("%d cases, want the six of issue 3", len(cases))
	}
	quick := 0
	for _, c := range cases {
		df, err := os.ReadFile(filepath.Join(c.Dir, "Dockerfile"))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(df), "ARG REGISTRY\n") {
			t.Errorf("%s: the Dockerfile must start with ARG REGISTRY", c.Name)
		}
		if !strings.Contains(c.Change.Append, "{{REP}}") {
			t.Errorf("%s: change.append needs {{REP}}, so every repeat's edit is new", c.Name)
		}
		if c.Quick {
			quick++
		}
	}
	if quick == 0 {
		t.Error("no quick case: BENCH_QUICK=1 would run nothing")
	}
}

func TestGenerateIsDeterministic(t *testing.T) {
	dir := t.TempDir()
	c := &benchCase{Name: "g", Dir: dir, Generate: []generate{{File: "big", Size: 1000}, {Dir: "d", Count: 150, Size: 64}}}
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	for _, d := range []string{a, b} {
		if err := prepareContext(c, d); err != nil {
			t.Fatal(err)
		}
	}
	for _, p := range []string{"big", "d/000/00000.txt", "d/001/00149.txt"} {
		x, err := os.ReadFile(filepath.Join(a, p))
		if err != nil {
			t.Fatal(err)
		}
		y, err := os.ReadFile(filepath.Join(b, p))
		if err != nil {
			t.Fatal(err)
		}
		if string(x) != string(y) {
			t.Errorf("%s differs between two generations", p)
		}
	}
	if fi, err := os.Stat(filepath.Join(a, "big")); err != nil || fi.Size() != 1000 {
		t.Errorf("big: %v %v, want 1000 bytes", fi, err)
	}
}

func TestStepTimes(t *testing.T) {
	log := `    0.000 $ rbuild build ...
    0.300 [stage-0 1/3] RUN sleep 1
    0.400   stage-0| out
    1.300 [stage-0 2/3] COPY a /a
    1.400 [stage-0 3/3] RUN true
    1.600 exporting to registry
`
	if got := stepTimes(log, rbuildRun, rbuildNext); got < 1.19 || got > 1.21 {
		t.Errorf("rbuild RUN time %.3f, want 1.2", got)
	}
	bk := `    0.1 #5 [2/3] RUN sleep 1
    1.2 #5 DONE 1.1s
    1.2 #6 [3/3] COPY a /a
    1.3 #6 DONE 0.1s
`
	if got := (&dockerBuilder{}).RunTime(bk); got != 1.1 {
		t.Errorf("BuildKit RUN time %.3f, want 1.1", got)
	}
}

func TestStat(t *testing.T) {
	s := statOf([]float64{3, 1, 2})
	if s.Median != 2 || s.Min != 1 || s.Max != 3 {
		t.Errorf("statOf = %+v", s)
	}
	if s := statOf([]float64{1, 2, 3, 4}); s.Median != 2.5 {
		t.Errorf("even median = %v", s.Median)
	}
}
