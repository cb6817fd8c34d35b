package snapshot

import (
	"archive/tar"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// These tests drive normalize with hand-made tar streams and a real
// directory standing for the parent layer; they need no root.

// lowerDir returns a lower function over a directory, as Commit builds it
// over the mounted parent.
func lowerDir(root string) func(string) (os.FileInfo, bool) {
	return func(name string) (os.FileInfo, bool) {
		fi, err := os.Lstat(filepath.Join(root, filepath.FromSlash(name)))
		return fi, err == nil
	}
}

func noLower(string) (os.FileInfo, bool) { return nil, false }

// lowerTree makes a parent directory with the given directories (mode
// 0755, mtime fixed) and files.
func lowerTree(t *testing.T, dirs []string, files []string) string {
	t.Helper()
	root := t.TempDir()
	for _, f := range files {
		writeFile(t, filepath.Join(root, f), f, 0o644)
	}
	for _, d := range dirs {
		mkdir(t, filepath.Join(root, d), 0o755)
	}
	// Times last, deepest first.
	for i := len(dirs) - 1; i >= 0; i-- {
		must(t, os.Chtimes(filepath.Join(root, dirs[i]), fixed, fixed))
	}
	return root
}

func uid() int { return os.Getuid() }
func gid() int { return os.Getgid() }

// dirHdr is a directory header matching lowerTree's directories (owner
// the current user).
func dirHdr(name string) entry {
	return entry{hdr: &tar.Header{Typeflag: tar.TypeDir, Name: name, Mode: 0o40755, Uid: uid(), Gid: gid(), ModTime: fixed}}
}

func runNormalize(t *testing.T, in []byte, lower func(string) (os.FileInfo, bool)) ([]entry, int) {
	t.Helper()
	var out bytes.Buffer
	n, err := normalize(context.Background(), bytes.NewReader(in), &out, lower, nil)
	if err != nil {
		t.Fatalf("normalize: %v", err)
	}
	es := readTar(t, &out)
	if n != len(es) {
		t.Errorf("normalize reported %d entries, wrote %d", n, len(es))
	}
	return es, n
}

func TestNormalizeHeaders(t *testing.T) {
	mtime := time.Date(2023, 1, 2, 3, 4, 5, 987654321, time.UTC)
	in := makeTar(t,
		entry{hdr: &tar.Header{
			Typeflag: tar.TypeReg, Name: "bin/ping", Mode: 0o100755, Uid: 0, Gid: 0,
			Uname: "root", Gname: "root", ModTime: mtime, AccessTime: mtime, ChangeTime: mtime,
			Format: tar.FormatPAX,
			PAXRecords: map[string]string{
				"SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
				"SCHILY.xattr.user.note":           "kept",
				"LIBARCHIVE.creationtime":          "12345",
			},
		}, data: []byte("ping")},
		entry{hdr: &tar.Header{Typeflag: tar.TypeSymlink, Name: "bin/p", Linkname: "ping", Uid: 5, Gid: 6, Uname: "u", ModTime: mtime, Format: tar.FormatPAX}},
		entry{hdr: &tar.Header{Typeflag: tar.TypeLink, Name: "bin/ping2", Linkname: "bin/ping", ModTime: mtime, Format: tar.FormatPAX}},
		entry{hdr: &tar.Header{Typeflag: tar.TypeChar, Name: "dev/null", Mode: 0o666, Devmajor: 1, Devminor: 3, ModTime: mtime, Format: tar.FormatPAX}},
		entry{hdr: &tar.Header{Typeflag: tar.TypeFifo, Name: "run/fifo", Mode: 0o600, ModTime: mtime, Format: tar.FormatPAX}},
	)
	es, _ := runNormalize(t, in, noLower)
	if got := names(es); !slices.Equal(got, []string{"bin/ping", "bin/p", "bin/ping2", "dev/null", "run/fifo"}) {
		t.Fatalf("entries %v", got)
	}
	for _, e := range es {
		h := e.hdr
		if !h.ModTime.Equal(mtime.Truncate(time.Second)) {
			t.Errorf("%s: mtime %v, want %v", h.Name, h.ModTime, mtime.Truncate(time.Second))
		}
		if !h.AccessTime.IsZero() || !h.ChangeTime.IsZero() || h.Uname != "" || h.Gname != "" {
			t.Errorf("%s: atime %v ctime %v uname %q gname %q kept", h.Name, h.AccessTime, h.ChangeTime, h.Uname, h.Gname)
		}
	}
	ping := es[0]
	if string(ping.data) != "ping" || ping.hdr.Mode != 0o100755 {
		t.Errorf("bin/ping: %q mode %o", ping.data, ping.hdr.Mode)
	}
	want := map[string]string{"SCHILY.xattr.security.capability": "\x01\x00\x00\x02", "SCHILY.xattr.user.note": "kept"}
	if len(ping.hdr.PAXRecords) != len(want) {
		t.Errorf("PAX records %v, want only the xattrs %v", ping.hdr.PAXRecords, want)
	}
	for k, v := range want {
		if ping.hdr.PAXRecords[k] != v {
			t.Errorf("PAX %s = %q, want %q", k, ping.hdr.PAXRecords[k], v)
		}
	}
	if p := es[1].hdr; p.Linkname != "ping" || p.Uid != 5 || p.Gid != 6 {
		t.Errorf("symlink: %+v", p)
	}
	if l := es[2].hdr; l.Typeflag != tar.TypeLink || l.Linkname != "bin/ping" {
		t.Errorf("hardlink: %+v", l)
	}
	if d := es[3].hdr; d.Typeflag != tar.TypeChar || d.Devmajor != 1 || d.Devminor != 3 {
		t.Errorf("device: %+v", d)
	}
}

// TestNormalizeDeterministic: the same input gives the same bytes.
func TestNormalizeDeterministic(t *testing.T) {
	in := makeTar(t,
		entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, ModTime: fixed.Add(time.Millisecond), AccessTime: time.Now(), Format: tar.FormatPAX}, data: []byte("x")},
	)
	var a, b bytes.Buffer
	_, err := normalize(context.Background(), bytes.NewReader(in), &a, noLower, nil)
	must(t, err)
	in2 := makeTar(t,
		entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: "f", Mode: 0o644, ModTime: fixed.Add(time.Millisecond * 500), AccessTime: time.Now().Add(time.Hour), Format: tar.FormatPAX}, data: []byte("x")},
	)
	_, err = normalize(context.Background(), bytes.NewReader(in2), &b, noLower, nil)
	must(t, err)
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("entries differing only in access time and sub-second mtime give different tars")
	}
}

func TestNormalizePruning(t *testing.T) {
	lower := lowerTree(t, []string{"a", "a/b", "a/b/c", "c", "d"}, []string{"d/file"})
	cases := []struct {
		name string
		in   []entry
		want []string
	}{
		{
			name: "unchanged directories with nothing below are dropped",
			in:   []entry{dirHdr("a/"), dirHdr("a/b/"), dirHdr("c/")},
			want: nil,
		},
		{
			name: "a change deep down keeps every parent, in order",
			in:   []entry{dirHdr("a/"), dirHdr("a/b/"), dirHdr("a/b/c/"), fileEntry("a/b/c/new", "n")},
			want: []string{"a/", "a/b/", "a/b/c/", "a/b/c/new"},
		},
		{
			name: "only the parents of the change are kept",
			in:   []entry{dirHdr("a/"), dirHdr("a/b/"), fileEntry("a/x", "x"), dirHdr("c/")},
			want: []string{"a/", "a/x"},
		},
		{
			name: "a whiteout is a change",
			in:   []entry{dirHdr("d/"), fileEntry("d/.wh.file", "")},
			want: []string{"d/", "d/.wh.file"},
		},
		{
			name: "an opaque whiteout is a change",
			in:   []entry{dirHdr("c/"), fileEntry("c/.wh..wh..opq", "")},
			want: []string{"c/", "c/.wh..wh..opq"},
		},
		{
			name: "a sibling with a common prefix is not a child",
			in:   []entry{dirHdr("a/"), fileEntry("ab", "ab")},
			want: []string{"ab"},
		},
		{
			name: "./ prefixed names",
			in:   []entry{dirHdr("./a/"), dirHdr("./a/b/"), fileEntry("./a/b/f", "f"), dirHdr("./c/")},
			want: []string{"a/", "a/b/", "a/b/f"},
		},
		{
			name: "new directories stay",
			in:   []entry{dirHdr("new/"), dirHdr("a/"), dirHdr("a/newdir/")},
			want: []string{"new/", "a/", "a/newdir/"},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			es, n := runNormalize(t, makeTar(t, c.in...), lowerDir(lower))
			if got := names(es); !slices.Equal(got, c.want) {
				t.Errorf("entries %v, want %v", got, c.want)
			}
			if n != len(c.want) {
				t.Errorf("count %d, want %d", n, len(c.want))
			}
		})
	}
}

// TestNormalizeChangedDirectories: any difference from the parent's
// directory keeps the entry.
func TestNormalizeChangedDirectories(t *testing.T) {
	lower := lowerTree(t, []string{"d"}, []string{"file"})
	must(t, os.Symlink("d", filepath.Join(lower, "link")))
	changed := map[string]func(h *tar.Header){
		"mode":          func(h *tar.Header) { h.Mode = 0o40700 },
		"setgid":        func(h *tar.Header) { h.Mode |= 0o2000 },
		"sticky":        func(h *tar.Header) { h.Mode |= 0o1000 },
		"owner":         func(h *tar.Header) { h.Uid = uid() + 1 },
		"group":         func(h *tar.Header) { h.Gid = gid() + 1 },
		"mtime":         func(h *tar.Header) { h.ModTime = fixed.Add(time.Second) },
		"xattr":         func(h *tar.Header) { h.PAXRecords = map[string]string{"SCHILY.xattr.user.x": "1"} },
		"file in lower": func(h *tar.Header) { h.Name = "file/" },
		"symlink below": func(h *tar.Header) { h.Name = "link/" },
		"not in lower":  func(h *tar.Header) { h.Name = "missing/" },
	}
	for what, change := range changed {
		t.Run(what, func(t *testing.T) {
			e := dirHdr("d/")
			change(e.hdr)
			es, _ := runNormalize(t, makeTar(t, e), lowerDir(lower))
			if len(es) != 1 {
				t.Errorf("directory with a different %s was dropped", what)
			}
		})
	}
	t.Run("same", func(t *testing.T) {
		// Sub-second mtimes compare to the second, as tar keeps them.
		e := dirHdr("d/")
		e.hdr.ModTime = fixed.Add(400 * time.Millisecond)
		es, _ := runNormalize(t, makeTar(t, e), lowerDir(lower))
		if len(es) != 0 {
			t.Errorf("identical directory kept: %v", names(es))
		}
	})
	t.Run("root entry", func(t *testing.T) {
		es, _ := runNormalize(t, makeTar(t, dirHdr("./")), lowerDir(lower))
		if len(es) != 1 {
			t.Errorf("the root entry should never be pruned: %v", names(es))
		}
	})
}

func TestNormalizeErrors(t *testing.T) {
	in := makeTar(t, fileEntry("f", "x"))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := normalize(ctx, bytes.NewReader(in), &bytes.Buffer{}, noLower, nil); err == nil {
		t.Error("normalize with a canceled context succeeded")
	}
	// Cut inside a file's data (a pipe from the differ: no seeking).
	big := makeTar(t, fileEntry("big", strings.Repeat("x", 4000)))
	if _, err := normalize(context.Background(), io.MultiReader(bytes.NewReader(big[:2000])), &bytes.Buffer{}, noLower, nil); err == nil {
		t.Error("normalize of a truncated tar succeeded")
	}
	if _, err := normalize(context.Background(), strings.NewReader("not a tar stream at all, but long enough to fill a header block"+strings.Repeat(".", 600)), &bytes.Buffer{}, noLower, nil); err == nil {
		t.Error("normalize of garbage succeeded")
	}
	n, err := normalize(context.Background(), bytes.NewReader(makeTar(t)), &bytes.Buffer{}, noLower, nil)
	if err != nil || n != 0 {
		t.Errorf("empty tar: %d entries, %v", n, err)
	}
}

// TestNormalizeEpoch: with SOURCE_DATE_EPOCH, entries newer than the epoch
// get it, older ones keep their time, and clamping does not stop an
// unchanged directory from being pruned.
func TestNormalizeEpoch(t *testing.T) {
	epoch := fixed.Add(-24 * time.Hour)
	// The parent's directory d is newer than the epoch, as on disk.
	lower := lowerTree(t, []string{"d", "e"}, nil)
	old := fixed.Add(-48 * time.Hour)
	in := makeTar(t,
		dirHdr("d/"), // copied up, unchanged: pruned
		dirHdr("e/"), // unchanged but holds a change: kept, clamped
		entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: "e/new", Mode: 0o644, ModTime: fixed}, data: []byte("n")},
		entry{hdr: &tar.Header{Typeflag: tar.TypeReg, Name: "old", Mode: 0o644, ModTime: old}, data: []byte("o")},
		entry{hdr: &tar.Header{Typeflag: tar.TypeSymlink, Name: "link", Linkname: "old", ModTime: fixed}},
	)
	var out bytes.Buffer
	n, err := normalize(context.Background(), bytes.NewReader(in), &out, lowerDir(lower), &epoch)
	must(t, err)
	es := readTar(t, &out)
	if got := names(es); !slices.Equal(got, []string{"e/", "e/new", "old", "link"}) || n != 4 {
		t.Fatalf("entries %v (%d), want [e/ e/new old link]", got, n)
	}
	for _, e := range es {
		want := epoch
		if e.name() == "old" {
			want = old
		}
		if !e.hdr.ModTime.Equal(want) {
			t.Errorf("%s: mtime %v, want %v", e.name(), e.hdr.ModTime, want)
		}
	}
}
