package executor

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/ulikunitz/xz"
)

type tarEntry struct {
	hdr  tar.Header
	body string
}

func makeTar(t *testing.T, entries []tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := e.hdr
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if h.ModTime.IsZero() {
			h.ModTime = time.Date(2010, 1, 2, 3, 4, 5, 0, time.UTC)
		}
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := io.WriteString(tw, e.body); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func compressWith(t *testing.T, kind string, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	var w io.WriteCloser
	var err error
	switch kind {
	case "plain":
		return data
	case "gzip":
		w = gzip.NewWriter(&buf)
	case "xz":
		w, err = xz.NewWriter(&buf)
	case "zstd":
		w, err = zstd.NewWriter(&buf)
	default:
		t.Fatalf("unknown compression %s", kind)
	}
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

var sampleEntries = []tarEntry{
	{hdr: tar.Header{Name: "pkg/", Typeflag: tar.TypeDir, Mode: 0o750, Uid: 1234, Gid: 4321}},
	{hdr: tar.Header{Name: "pkg/bin/tool", Typeflag: tar.TypeReg, Mode: 0o755, Uid: 1234, Gid: 4321}, body: "tool"},
	{hdr: tar.Header{Name: "pkg/README", Typeflag: tar.TypeReg, Mode: 0o444}, body: "readme"},
	{hdr: tar.Header{Name: "pkg/link", Typeflag: tar.TypeSymlink, Linkname: "README"}},
	{hdr: tar.Header{Name: "pkg/hard", Typeflag: tar.TypeLink, Linkname: "pkg/README"}},
}

func TestAddExtractsLocalArchives(t *testing.T) {
	for _, kind := range []string{"plain", "gzip", "xz", "zstd"} {
		t.Run(kind, func(t *testing.T) {
			ctxDir, dst := cpRoots(t)
			// The name says nothing: detection is by content.
			cpWrite(t, filepath.Join(ctxDir, "archive.bin"), string(compressWith(t, kind, makeTar(t, sampleEntries))), 0o644)
			mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"archive.bin"}, Dest: "/opt", DstRoot: dst, Add: true})

			cpCheck(t, filepath.Join(dst, "opt/pkg/bin/tool"), cpWant{content: "tool", mode: 0o755, uid: 1234, gid: 4321})
			cpCheck(t, filepath.Join(dst, "opt/pkg/README"), cpWant{content: "readme", mode: 0o444})
			cpCheck(t, filepath.Join(dst, "opt/pkg"), cpWant{mode: 0o750, uid: 1234, gid: 4321})
			if l, err := os.Readlink(filepath.Join(dst, "opt/pkg/link")); err != nil || l != "README" {
				t.Errorf("link -> %q, %v", l, err)
			}
			a, _ := os.Stat(filepath.Join(dst, "opt/pkg/hard"))
			b, _ := os.Stat(filepath.Join(dst, "opt/pkg/README"))
			if a == nil || b == nil || !os.SameFile(a, b) {
				t.Error("hardlink not preserved")
			}
			fi, _ := os.Stat(filepath.Join(dst, "opt/pkg"))
			if want := time.Date(2010, 1, 2, 3, 4, 5, 0, time.UTC); fi == nil || !fi.ModTime().Equal(want) {
				t.Errorf("dir mtime %v, want %v", fi.ModTime(), want)
			}
			cpMissing(t, filepath.Join(dst, "opt/archive.bin"))
		})
	}
}

func TestAddArchiveChownAndChmod(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "a.tar.gz"), string(compressWith(t, "gzip", makeTar(t, sampleEntries))), 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a.tar.gz"}, Dest: "/x/y/", DstRoot: dst, Add: true, Chown: "77:88", Chmod: "0700"})
	// --chown applies to the entries and the created directories; --chmod
	// does not apply to an extracted archive (BuildKit's unpack ignores it).
	cpCheck(t, filepath.Join(dst, "x/y/pkg/bin/tool"), cpWant{mode: 0o755, uid: 77, gid: 88})
	cpCheck(t, filepath.Join(dst, "x/y"), cpWant{mode: 0o755, uid: 77, gid: 88})
}

func TestAddNonArchiveIsCopied(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "fake.tar.gz"), "not an archive", 0o640)
	cpWrite(t, filepath.Join(ctxDir, "empty.tar"), "", 0o644)
	// A gzip stream that is not a tar is not an archive either.
	cpWrite(t, filepath.Join(ctxDir, "text.gz"), string(compressWith(t, "gzip", []byte("hello"))), 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"fake.tar.gz", "empty.tar", "text.gz"}, Dest: "/d/", DstRoot: dst, Add: true})
	cpCheck(t, filepath.Join(dst, "d/fake.tar.gz"), cpWant{content: "not an archive", mode: 0o640})
	cpCheck(t, filepath.Join(dst, "d/empty.tar"), cpWant{})
	cpCheck(t, filepath.Join(dst, "d/text.gz"), cpWant{})

	// COPY never extracts.
	cpWrite(t, filepath.Join(ctxDir, "real.tar"), string(makeTar(t, sampleEntries)), 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"real.tar"}, Dest: "/c/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "c/real.tar"), cpWant{})
}

func TestAddArchiveCannotEscape(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	host := t.TempDir() // stands for the host's "/"
	entries := []tarEntry{
		{hdr: tar.Header{Name: "../../../../../../../../" + host + "/dotdot", Typeflag: tar.TypeReg, Mode: 0o644}, body: "x"},
		{hdr: tar.Header{Name: host + "/abs", Typeflag: tar.TypeReg, Mode: 0o644}, body: "x"},
		// A symlink to the host, then a file through it.
		{hdr: tar.Header{Name: "esc", Typeflag: tar.TypeSymlink, Linkname: host}},
		{hdr: tar.Header{Name: "esc/through", Typeflag: tar.TypeReg, Mode: 0o644}, body: "x"},
		{hdr: tar.Header{Name: "up", Typeflag: tar.TypeSymlink, Linkname: "../../../../../../../.."}},
		{hdr: tar.Header{Name: "up/" + host + "/through-up", Typeflag: tar.TypeReg, Mode: 0o644}, body: "x"},
		// A hardlink to a host file.
		{hdr: tar.Header{Name: "hl", Typeflag: tar.TypeLink, Linkname: "../../../../../../../" + host + "/victim"}},
	}
	cpWrite(t, filepath.Join(host, "victim"), "victim", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "evil.tar"), string(makeTar(t, entries[:6])), 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"evil.tar"}, Dest: "/out", DstRoot: dst, Add: true})
	for _, name := range []string{"dotdot", "abs", "through", "through-up"} {
		cpMissing(t, filepath.Join(host, name))
	}
	// Everything landed inside the destination.
	cpCheck(t, filepath.Join(dst, "out", host, "dotdot"), cpWant{content: "x"})
	cpCheck(t, filepath.Join(dst, "out", host, "abs"), cpWant{content: "x"})
	cpCheck(t, filepath.Join(dst, "out", host, "through"), cpWant{content: "x"})
	cpCheck(t, filepath.Join(dst, "out", host, "through-up"), cpWant{content: "x"})

	cpWrite(t, filepath.Join(ctxDir, "hl.tar"), string(makeTar(t, entries[6:])), 0o644)
	if err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"hl.tar"}, Dest: "/hl", DstRoot: dst, Add: true}); err == nil {
		t.Error("hardlink to a path outside the archive: no error")
	}
	if fi, err := os.Stat(filepath.Join(host, "victim")); err != nil || fi.Sys() == nil {
		t.Fatal(err)
	} else if n := nlink(fi); n != 1 {
		t.Errorf("host file got %d links", n)
	}

	// A destination symlink out of the rootfs is resolved inside it.
	if err := os.Symlink(host, filepath.Join(dst, "hostlink")); err != nil {
		t.Fatal(err)
	}
	cpWrite(t, filepath.Join(ctxDir, "ok.tar"), string(makeTar(t, sampleEntries)), 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"ok.tar"}, Dest: "/hostlink", DstRoot: dst, Add: true})
	cpMissing(t, filepath.Join(host, "pkg"))
	cpCheck(t, filepath.Join(dst, host, "pkg/README"), cpWant{content: "readme"})
}

func TestAddURL(t *testing.T) {
	lastMod := time.Date(2020, 5, 6, 7, 8, 9, 0, time.UTC)
	tgz := compressWith(t, "gzip", makeTar(t, sampleEntries))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/files/app.bin":
			w.Header().Set("Last-Modified", lastMod.Format(http.TimeFormat))
			io.WriteString(w, "binary")
		case "/files/pkg.tar.gz":
			w.Write(tgz)
		case "/":
			io.WriteString(w, "index")
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	if !strings.HasPrefix(srv.URL, "http://127.0.0.1:") {
		t.Fatalf("test server on %s", srv.URL)
	}
	ctxDir, dst := cpRoots(t)

	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{srv.URL + "/files/app.bin?x=1"}, Dest: "/dl/", DstRoot: dst, Add: true})
	cpCheck(t, filepath.Join(dst, "dl/app.bin"), cpWant{content: "binary", mode: 0o600})
	if fi, _ := os.Stat(filepath.Join(dst, "dl/app.bin")); fi == nil || !fi.ModTime().Equal(lastMod) {
		t.Errorf("mtime of download: %v, want %v", fi.ModTime(), lastMod)
	}

	// To a file path, with --chmod and --chown.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{srv.URL + "/files/app.bin"}, Dest: "/usr/local/bin/app", DstRoot: dst, Add: true, Chmod: "755", Chown: "5:6"})
	cpCheck(t, filepath.Join(dst, "usr/local/bin/app"), cpWant{content: "binary", mode: 0o755, uid: 5, gid: 6})

	// Downloads are never extracted.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{srv.URL + "/files/pkg.tar.gz"}, Dest: "/t/", DstRoot: dst, Add: true})
	cpCheck(t, filepath.Join(dst, "t/pkg.tar.gz"), cpWant{content: string(tgz)})

	// No name in the URL path.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{srv.URL + "/"}, Dest: "/u/", DstRoot: dst, Add: true})
	cpCheck(t, filepath.Join(dst, "u/__unnamed__"), cpWant{content: "index"})

	// Mixed with a local file.
	cpWrite(t, filepath.Join(ctxDir, "local"), "l", 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"local", srv.URL + "/files/app.bin"}, Dest: "/mix/", DstRoot: dst, Add: true})
	cpCheck(t, filepath.Join(dst, "mix/local"), cpWant{content: "l"})
	cpCheck(t, filepath.Join(dst, "mix/app.bin"), cpWant{content: "binary"})

	// A failed download writes nothing.
	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"local", srv.URL + "/missing"}, Dest: "/fail/", DstRoot: dst, Add: true})
	if err == nil || !strings.Contains(err.Error(), "404") {
		t.Errorf("404: err %v", err)
	}
	cpMissing(t, filepath.Join(dst, "fail"))
}

func TestAddArchiveRootEntryAndReplace(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	entries := []tarEntry{
		{hdr: tar.Header{Name: "./", Typeflag: tar.TypeDir, Mode: 0o700}},
		{hdr: tar.Header{Name: "./f", Typeflag: tar.TypeReg, Mode: 0o644}, body: "new"},
		{hdr: tar.Header{Name: "./d", Typeflag: tar.TypeDir, Mode: 0o755}},
	}
	cpWrite(t, filepath.Join(dst, "r/f"), "old", 0o644)
	cpWrite(t, filepath.Join(dst, "r/d/kept"), "kept", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "r.tar"), string(makeTar(t, entries)), 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"r.tar"}, Dest: "/r", DstRoot: dst, Add: true})
	cpCheck(t, filepath.Join(dst, "r"), cpWant{mode: 0o700})
	cpCheck(t, filepath.Join(dst, "r/f"), cpWant{content: "new"})
	cpCheck(t, filepath.Join(dst, "r/d/kept"), cpWant{content: "kept"})

	// A non-directory entry for the archive root may not replace dest.
	bad := []tarEntry{{hdr: tar.Header{Name: ".", Typeflag: tar.TypeSymlink, Linkname: "/"}}}
	cpWrite(t, filepath.Join(ctxDir, "bad.tar"), string(makeTar(t, bad)), 0o644)
	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"bad.tar"}, Dest: "/r", DstRoot: dst, Add: true})
	if err == nil || !strings.Contains(err.Error(), "refusing") {
		t.Errorf("err %v", err)
	}
	if fi, statErr := os.Lstat(filepath.Join(dst, "r")); statErr != nil || !fi.IsDir() {
		t.Error("destination replaced")
	}
}

func TestUrlFileName(t *testing.T) {
	for in, want := range map[string]string{
		"https://example.com/a/b.tgz?x=y": "b.tgz",
		"https://example.com/":            "__unnamed__",
		"https://example.com":             "__unnamed__",
		"http://h/dir/":                   "dir",
	} {
		if got := urlFileName(in); got != want {
			t.Errorf("urlFileName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestIsArchiveErrors(t *testing.T) {
	if _, err := isArchive(filepath.Join(t.TempDir(), "none")); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("err %v", err)
	}
}

func nlink(fi os.FileInfo) uint64 {
	return uint64(fi.Sys().(*syscall.Stat_t).Nlink)
}
