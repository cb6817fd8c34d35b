package executor

import (
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func mustDigest(t *testing.T, spec CopySpec) string {
	t.Helper()
	d, err := SourceDigest(spec)
	if err != nil {
		t.Fatalf("SourceDigest: %v", err)
	}
	return d
}

// digestFixture makes a context with a tree of files, an ignore file and a
// symlink and hardlink, and returns a spec copying it.
func digestFixture(t *testing.T) (string, CopySpec) {
	t.Helper()
	ctxDir := t.TempDir()
	cpWrite(t, filepath.Join(ctxDir, ".dockerignore"), "**/*.log\n", 0o644)
	for i := 0; i < 40; i++ {
		cpWrite(t, filepath.Join(ctxDir, fmt.Sprintf("src/d%d/f%d.txt", i%5, i)), fmt.Sprintf("content %d", i), 0o644)
	}
	cpWrite(t, filepath.Join(ctxDir, "src/debug.log"), "noise", 0o644)
	if err := os.Symlink("d0/f0.txt", filepath.Join(ctxDir, "src/link")); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(ctxDir, "src/d1/f1.txt"), filepath.Join(ctxDir, "src/hard")); err != nil {
		t.Fatal(err)
	}
	excluded, err := LoadIgnore(ctxDir, "")
	if err != nil {
		t.Fatal(err)
	}
	return ctxDir, CopySpec{SrcRoot: ctxDir, Sources: []string{"src", "*.md"}, Dest: "/app/", Excluded: excluded}
}

func TestDigestStable(t *testing.T) {
	_, spec := digestFixture(t)
	first := mustDigest(t, spec)
	if len(first) != len("sha256:")+64 || first[:7] != "sha256:" {
		t.Fatalf("digest %q", first)
	}
	for i := 0; i < 5; i++ {
		if d := mustDigest(t, spec); d != first {
			t.Fatalf("run %d: %s != %s", i, d, first)
		}
	}
	// The same tree in another place gives the same digest.
	ctx2, spec2 := digestFixture(t)
	_ = ctx2
	if d := mustDigest(t, spec2); d != first {
		t.Errorf("identical context elsewhere: %s != %s", d, first)
	}
}

func TestDigestIgnoresMtimeAndExcluded(t *testing.T) {
	ctxDir, spec := digestFixture(t)
	before := mustDigest(t, spec)
	old := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, p := range []string{"src/d0/f0.txt", "src/d1", "src"} {
		if err := os.Chtimes(filepath.Join(ctxDir, p), old, old); err != nil {
			t.Fatal(err)
		}
	}
	cpWrite(t, filepath.Join(ctxDir, "src/debug.log"), "other noise", 0o600)
	cpWrite(t, filepath.Join(ctxDir, "src/new.log"), "more noise", 0o600)
	// Outside the copied sources.
	cpWrite(t, filepath.Join(ctxDir, "unrelated.txt"), "x", 0o644)
	if after := mustDigest(t, spec); after != before {
		t.Errorf("digest changed on mtime/excluded/unrelated change: %s != %s", after, before)
	}
}

func TestDigestChanges(t *testing.T) {
	changes := map[string]func(t *testing.T, ctxDir string, spec *CopySpec){
		"content": func(t *testing.T, ctxDir string, _ *CopySpec) {
			cpWrite(t, filepath.Join(ctxDir, "src/d2/f2.txt"), "changed", 0o644)
		},
		"same size content": func(t *testing.T, ctxDir string, _ *CopySpec) {
			cpWrite(t, filepath.Join(ctxDir, "src/d2/f2.txt"), "content X", 0o644)
		},
		"mode": func(t *testing.T, ctxDir string, _ *CopySpec) {
			if err := os.Chmod(filepath.Join(ctxDir, "src/d3/f3.txt"), 0o755); err != nil {
				t.Fatal(err)
			}
		},
		"dir mode": func(t *testing.T, ctxDir string, _ *CopySpec) {
			if err := os.Chmod(filepath.Join(ctxDir, "src/d3"), 0o700); err != nil {
				t.Fatal(err)
			}
		},
		"name": func(t *testing.T, ctxDir string, _ *CopySpec) {
			if err := os.Rename(filepath.Join(ctxDir, "src/d4/f4.txt"), filepath.Join(ctxDir, "src/d4/g4.txt")); err != nil {
				t.Fatal(err)
			}
		},
		"new file": func(t *testing.T, ctxDir string, _ *CopySpec) {
			cpWrite(t, filepath.Join(ctxDir, "src/extra"), "", 0o644)
		},
		"new match": func(t *testing.T, ctxDir string, _ *CopySpec) {
			cpWrite(t, filepath.Join(ctxDir, "README.md"), "", 0o644)
		},
		"empty dir": func(t *testing.T, ctxDir string, _ *CopySpec) {
			if err := os.Mkdir(filepath.Join(ctxDir, "src/empty"), 0o755); err != nil {
				t.Fatal(err)
			}
		},
		"symlink target": func(t *testing.T, ctxDir string, _ *CopySpec) {
			os.Remove(filepath.Join(ctxDir, "src/link"))
			if err := os.Symlink("d0/other", filepath.Join(ctxDir, "src/link")); err != nil {
				t.Fatal(err)
			}
		},
		"hardlink broken": func(t *testing.T, ctxDir string, _ *CopySpec) {
			os.Remove(filepath.Join(ctxDir, "src/hard"))
			cpWrite(t, filepath.Join(ctxDir, "src/hard"), "content 1", 0o644)
		},
		"chmod": func(t *testing.T, _ string, spec *CopySpec) { spec.Chmod = "0700" },
		"chown": func(t *testing.T, _ string, spec *CopySpec) { spec.Chown = "1000:1000" },
		"dest":  func(t *testing.T, _ string, spec *CopySpec) { spec.Dest = "/other/" },
		"workdir relative dest": func(t *testing.T, _ string, spec *CopySpec) {
			spec.Dest, spec.WorkDir = "x", "/w"
		},
		"add": func(t *testing.T, _ string, spec *CopySpec) { spec.Add = true },
		"preserve ownership": func(t *testing.T, _ string, spec *CopySpec) {
			spec.PreserveOwnership = true
		},
	}
	for name, change := range changes {
		t.Run(name, func(t *testing.T) {
			ctxDir, spec := digestFixture(t)
			before := mustDigest(t, spec)
			change(t, ctxDir, &spec)
			if after := mustDigest(t, spec); after == before {
				t.Errorf("digest unchanged after %s", name)
			}
		})
	}
}

func TestDigestChownResolution(t *testing.T) {
	ctxDir, spec := digestFixture(t)
	dst := t.TempDir()
	cpWrite(t, filepath.Join(dst, "etc/passwd"), "app:x:1000:1000::/:/bin/sh\n", 0o644)
	cpWrite(t, filepath.Join(dst, "etc/group"), "app:x:1000:\n", 0o644)
	_ = ctxDir

	// Numeric ids resolve without a rootfs.
	spec.Chown = "1000:1000"
	numeric := mustDigest(t, spec)
	spec.DstRoot = dst
	if d := mustDigest(t, spec); d != numeric {
		t.Errorf("numeric chown depends on the rootfs")
	}
	// A name resolves against DstRoot, to different ids than another name.
	spec.Chown = "app"
	byName := mustDigest(t, spec)
	spec.Chown = "0:0"
	if d := mustDigest(t, spec); d == byName {
		t.Error("chown by name and 0:0 digest alike")
	}
	// Unresolvable names fail like Copy does.
	spec.Chown = "ghost"
	if _, err := SourceDigest(spec); err == nil {
		t.Error("unknown user: no error")
	}
	// Without a rootfs, a name is hashed as written.
	spec.DstRoot = ""
	spec.Chown = "app"
	if _, err := SourceDigest(spec); err != nil {
		t.Errorf("name without rootfs: %v", err)
	}
}

func TestDigestErrors(t *testing.T) {
	ctxDir, spec := digestFixture(t)
	spec.Sources = []string{"missing"}
	if _, err := SourceDigest(spec); err == nil {
		t.Error("missing source: no error")
	}
	spec.Sources = []string{"../x"}
	if _, err := SourceDigest(spec); err == nil {
		t.Error("escape: no error")
	}
	_ = ctxDir
}

func TestDigestArchiveAndURL(t *testing.T) {
	body := "v1"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Last-Modified", time.Now().UTC().Format(http.TimeFormat))
		io.WriteString(w, body)
	}))
	defer srv.Close()
	ctxDir := t.TempDir()
	cpWrite(t, filepath.Join(ctxDir, "a.tar"), string(makeTar(t, sampleEntries)), 0o644)

	spec := CopySpec{SrcRoot: ctxDir, Sources: []string{"a.tar", srv.URL + "/f.bin"}, Dest: "/d/", Add: true}
	d1 := mustDigest(t, spec)
	if d := mustDigest(t, spec); d != d1 {
		t.Error("URL digest not stable (Last-Modified must not count)")
	}
	body = "v2"
	d2 := mustDigest(t, spec)
	if d2 == d1 {
		t.Error("URL content change not seen")
	}
	// Extracting and copying the same file differ.
	spec.Sources = []string{"a.tar"}
	add := mustDigest(t, spec)
	spec.Add = false
	if cp := mustDigest(t, spec); cp == add {
		t.Error("ADD of an archive and COPY of it digest alike")
	}
}

func BenchmarkSourceDigest(b *testing.B) {
	ctxDir := b.TempDir()
	for i := 0; i < 2000; i++ {
		p := filepath.Join(ctxDir, fmt.Sprintf("src/d%d/f%d", i%50, i))
		os.MkdirAll(filepath.Dir(p), 0o755)
		os.WriteFile(p, make([]byte, 16<<10), 0o644)
	}
	spec := CopySpec{SrcRoot: ctxDir, Sources: []string{"src"}, Dest: "/app/"}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := SourceDigest(spec); err != nil {
			b.Fatal(err)
		}
	}
}
