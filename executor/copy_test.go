package executor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// testRoots makes a build context and a destination rootfs.
func cpRoots(t *testing.T) (ctxDir, dst string) {
	t.Helper()
	base := t.TempDir()
	ctxDir, dst = filepath.Join(base, "context"), filepath.Join(base, "rootfs")
	for _, d := range []string{ctxDir, dst} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return ctxDir, dst
}

func cpWrite(t *testing.T, p, content string, mode os.FileMode) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil {
		t.Fatal(err)
	}
}

func mustCopy(t *testing.T, spec CopySpec) {
	t.Helper()
	if err := Copy(context.Background(), spec); err != nil {
		t.Fatalf("Copy(%v -> %s): %v", spec.Sources, spec.Dest, err)
	}
}

type cpWant struct {
	content  string // checked when not ""
	mode     os.FileMode
	uid, gid int
}

func cpCheck(t *testing.T, p string, w cpWant) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatalf("%s: %v", p, err)
	}
	if w.content != "" {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if string(b) != w.content {
			t.Errorf("%s: content %q, want %q", p, b, w.content)
		}
	}
	gotMode := fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
	if w.mode != 0 && gotMode != w.mode {
		t.Errorf("%s: mode %v, want %v", p, gotMode, w.mode)
	}
	cpOwner(t, p, w.uid, w.gid)
}

func cpOwner(t *testing.T, p string, uid, gid int) {
	t.Helper()
	fi, err := os.Lstat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid {
		t.Errorf("%s: owner %d:%d, want %d:%d", p, st.Uid, st.Gid, uid, gid)
	}
}

func cpMissing(t *testing.T, p string) {
	t.Helper()
	if _, err := os.Lstat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s exists (err %v), want it missing", p, err)
	}
}

func cpRequireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to set owners")
	}
}

func TestCopyFileToPath(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "a.txt"), "A", 0o640)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a.txt"}, Dest: "/opt/app/b.txt", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "opt/app/b.txt"), cpWant{content: "A", mode: 0o640})
	// Missing parents: 0755, root.
	cpCheck(t, filepath.Join(dst, "opt"), cpWant{mode: 0o755})
	cpCheck(t, filepath.Join(dst, "opt/app"), cpWant{mode: 0o755})
}

func TestCopyFileTrailingSlashAndExistingDir(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "a.txt"), "A", 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a.txt"}, Dest: "/app/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "app/a.txt"), cpWant{content: "A"})

	// No slash, but an existing directory: the file goes inside.
	if err := os.Mkdir(filepath.Join(dst, "exists"), 0o700); err != nil {
		t.Fatal(err)
	}
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a.txt"}, Dest: "/exists", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "exists/a.txt"), cpWant{content: "A"})
	// The existing directory keeps its mode.
	cpCheck(t, filepath.Join(dst, "exists"), cpWant{mode: 0o700})

	// "dir/." is a directory too.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a.txt"}, Dest: "/dot/.", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "dot/a.txt"), cpWant{content: "A"})
}

func TestCopyRelativeDestUsesWorkDir(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "a.txt"), "A", 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a.txt"}, Dest: "sub/", WorkDir: "/work", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "work/sub/a.txt"), cpWant{content: "A"})
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a.txt"}, Dest: ".", WorkDir: "/w2", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "w2/a.txt"), cpWant{content: "A"})
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a.txt"}, Dest: "renamed", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "renamed"), cpWant{content: "A"})
}

func TestCopyDirCopiesContents(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "src/top.txt"), "top", 0o600)
	cpWrite(t, filepath.Join(ctxDir, "src/sub/deep.sh"), "#!/bin/sh", 0o755)
	if err := os.Chmod(filepath.Join(ctxDir, "src/sub"), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(ctxDir, "src/empty"), 0o711); err != nil {
		t.Fatal(err)
	}
	old := time.Date(2001, 2, 3, 4, 5, 6, 0, time.UTC)
	for _, p := range []string{"src/top.txt", "src/sub/deep.sh", "src/sub", "src"} {
		if err := os.Chtimes(filepath.Join(ctxDir, p), old, old); err != nil {
			t.Fatal(err)
		}
	}

	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"src"}, Dest: "/app", DstRoot: dst})
	cpMissing(t, filepath.Join(dst, "app/src"))
	cpCheck(t, filepath.Join(dst, "app/top.txt"), cpWant{content: "top", mode: 0o600})
	cpCheck(t, filepath.Join(dst, "app/sub/deep.sh"), cpWant{content: "#!/bin/sh", mode: 0o755})
	cpCheck(t, filepath.Join(dst, "app/sub"), cpWant{mode: 0o750})
	cpCheck(t, filepath.Join(dst, "app/empty"), cpWant{mode: 0o711})
	// The created destination directory is 0755, not the source's mode...
	cpCheck(t, filepath.Join(dst, "app"), cpWant{mode: 0o755})
	// ...and mtimes are kept, the destination's included.
	for _, p := range []string{"app/top.txt", "app/sub/deep.sh", "app/sub", "app"} {
		fi, err := os.Stat(filepath.Join(dst, p))
		if err != nil {
			t.Fatal(err)
		}
		if !fi.ModTime().Equal(old) {
			t.Errorf("%s: mtime %v, want %v", p, fi.ModTime(), old)
		}
	}
}

func TestCopyMergesAndReplaces(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "src/sub/new.txt"), "new", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "src/file.txt"), "fresh", 0o644)
	cpWrite(t, filepath.Join(dst, "app/sub/kept.txt"), "kept", 0o644)
	cpWrite(t, filepath.Join(dst, "app/file.txt"), "stale and longer", 0o600)

	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"src"}, Dest: "/app", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "app/sub/kept.txt"), cpWant{content: "kept"})
	cpCheck(t, filepath.Join(dst, "app/sub/new.txt"), cpWant{content: "new"})
	cpCheck(t, filepath.Join(dst, "app/file.txt"), cpWant{content: "fresh", mode: 0o644})

	// A directory cannot replace a file, nor a file a directory.
	cpWrite(t, filepath.Join(dst, "blocker/sub"), "file", 0o644)
	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"src"}, Dest: "/blocker", DstRoot: dst})
	if err == nil || !strings.Contains(err.Error(), "cannot copy to non-directory") {
		t.Errorf("dir over file: err %v", err)
	}
	cpWrite(t, filepath.Join(ctxDir, "x"), "x", 0o644)
	if err := os.MkdirAll(filepath.Join(dst, "d/x"), 0o755); err != nil {
		t.Fatal(err)
	}
	err = Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"x"}, Dest: "/d/", DstRoot: dst})
	if err == nil || !strings.Contains(err.Error(), "cannot replace to directory") {
		t.Errorf("file over dir: err %v", err)
	}
}

func TestCopyWildcards(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "a.txt"), "a", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "b.txt"), "b", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "c.md"), "c", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "dir/x.go"), "x", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "dir/sub/y.go"), "y", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "dor/z.go"), "z", 0o644)

	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"*.txt"}, Dest: "/w1/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "w1/a.txt"), cpWant{content: "a"})
	cpCheck(t, filepath.Join(dst, "w1/b.txt"), cpWant{content: "b"})
	cpMissing(t, filepath.Join(dst, "w1/c.md"))

	// "dir/*": each match is copied on its own; a matched directory copies
	// its contents.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"dir/*"}, Dest: "/w2/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "w2/x.go"), cpWant{content: "x"})
	cpCheck(t, filepath.Join(dst, "w2/y.go"), cpWant{content: "y"})

	// Wildcards per path element; "*" does not cross "/".
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"d?r/*.go"}, Dest: "/w3/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "w3/x.go"), cpWant{content: "x"})
	cpCheck(t, filepath.Join(dst, "w3/z.go"), cpWant{content: "z"})
	cpMissing(t, filepath.Join(dst, "w3/y.go"))

	// A wildcard matching nothing is not an error in BuildKit, and copies
	// nothing (not even the destination directory).
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"*.none"}, Dest: "/w4/", DstRoot: dst})
	cpMissing(t, filepath.Join(dst, "w4"))
	// ...but its directory part has to exist.
	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"nodir/*.go"}, Dest: "/w5/", DstRoot: dst})
	if !errors.Is(err, errNotFound) {
		t.Errorf("missing wildcard base: err %v", err)
	}
	// Several wildcard matches into a path that is no directory: error.
	err = Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"*.txt"}, Dest: "/single", DstRoot: dst})
	if err == nil || !strings.Contains(err.Error(), "must be a directory") {
		t.Errorf("several matches to a file: err %v", err)
	}
	// A bad pattern is reported.
	if err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"[.txt"}, Dest: "/w6/", DstRoot: dst}); err == nil {
		t.Error("bad pattern: no error")
	}
}

func TestCopyMissingSource(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "a.txt"), "a", 0o644)
	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"a.txt", "missing"}, Dest: "/app/", DstRoot: dst})
	if !errors.Is(err, errNotFound) || err.Error() != `"/missing": not found` {
		t.Fatalf("err = %v, want \"/missing\": not found", err)
	}
	// Sources are resolved before anything is written.
	cpMissing(t, filepath.Join(dst, "app"))
}

func TestCopyMultipleSources(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "a"), "a", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "b"), "b", 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a", "b"}, Dest: "/m/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "m/a"), cpWant{content: "a"})
	cpCheck(t, filepath.Join(dst, "m/b"), cpWant{content: "b"})

	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"a", "b"}, Dest: "/nodir", DstRoot: dst})
	if err == nil || !strings.Contains(err.Error(), "When using COPY with more than one source file, the destination must be a directory and end with a /") {
		t.Errorf("err = %v", err)
	}
	cpMissing(t, filepath.Join(dst, "nodir"))
	// An existing directory without the slash is accepted, as BuildKit
	// copies each source into it.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"a", "b"}, Dest: "/m", DstRoot: dst})
}

func TestCopyCannotEscapeContext(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	// A file beside the context that an escape would reach.
	cpWrite(t, filepath.Join(filepath.Dir(ctxDir), "outside.txt"), "secret", 0o644)
	for _, src := range []string{"../outside.txt", "/../outside.txt", "a/../../outside.txt", ".."} {
		err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{src}, Dest: "/x/", DstRoot: dst})
		want := "forbidden path outside the build context: " + src
		if err == nil || err.Error() != want {
			t.Errorf("%s: err %v, want %q", src, err, want)
		}
	}
	cpMissing(t, filepath.Join(dst, "x"))

	// A leading "/" is the context root.
	cpWrite(t, filepath.Join(ctxDir, "in.txt"), "in", 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"/in.txt"}, Dest: "/y/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "y/in.txt"), cpWant{content: "in"})

	// A symlink in the context pointing out of it resolves inside it, as if
	// the context were "/".
	if err := os.Symlink("../outside.txt", filepath.Join(ctxDir, "up")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(filepath.Dir(ctxDir), "outside.txt"), filepath.Join(ctxDir, "abs")); err != nil {
		t.Fatal(err)
	}
	for _, src := range []string{"up", "abs"} {
		err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{src}, Dest: "/z/", DstRoot: dst})
		if !errors.Is(err, errNotFound) {
			t.Errorf("%s: err %v, want not found", src, err)
		}
	}
	cpWrite(t, filepath.Join(ctxDir, "outside.txt"), "inside", 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"up"}, Dest: "/z/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "z/up"), cpWant{content: "inside"})
}

func TestCopyDestinationSymlinksStayInRootfs(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	host := t.TempDir() // stands for the host's "/"
	cpWrite(t, filepath.Join(ctxDir, "f.txt"), "payload", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "tree/etc/passwd"), "payload", 0o644)

	links := map[string]string{
		"abs":    host,                   // absolute, to the host
		"root":   "/",                    // absolute, to "/"
		"dotdot": "../../../../../../..", // relative, climbing out
	}
	for name, target := range links {
		if err := os.Symlink(target, filepath.Join(dst, name)); err != nil {
			t.Fatal(err)
		}
	}

	// Writes through destination symlinks resolve inside DstRoot.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"f.txt"}, Dest: "/root/x/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "x/f.txt"), cpWant{content: "payload"})
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"f.txt"}, Dest: "/dotdot/y.txt", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "y.txt"), cpWant{content: "payload"})
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"f.txt"}, Dest: "/abs/z.txt", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, host, "z.txt"), cpWant{content: "payload"})
	cpMissing(t, filepath.Join(host, "z.txt"))

	// Inside a copied tree, a symlink in the rootfs where the source has a
	// directory is an error, never followed.
	if err := os.MkdirAll(filepath.Join(dst, "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(host, filepath.Join(dst, "app/etc")); err != nil {
		t.Fatal(err)
	}
	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"tree"}, Dest: "/app", DstRoot: dst})
	if err == nil || !strings.Contains(err.Error(), "cannot copy to non-directory") {
		t.Errorf("err %v", err)
	}
	cpMissing(t, filepath.Join(host, "passwd"))

	// A symlink in the rootfs where the source has a file is replaced.
	if err := os.MkdirAll(filepath.Join(dst, "app2/etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(host, "passwd"), filepath.Join(dst, "app2/etc/passwd")); err != nil {
		t.Fatal(err)
	}
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"tree"}, Dest: "/app2", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "app2/etc/passwd"), cpWant{content: "payload"})
	cpMissing(t, filepath.Join(host, "passwd"))
}

func TestCopySymlinks(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "dir/target.txt"), "T", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "real/inner.txt"), "I", 0o644)
	for link, target := range map[string]string{
		"dir/rel":      "target.txt",
		"dir/abs":      "/etc/passwd",
		"dir/dangling": "nowhere",
		"filelink":     "dir/target.txt",
		"dirlink":      "real",
	} {
		if err := os.Symlink(target, filepath.Join(ctxDir, link)); err != nil {
			t.Fatal(err)
		}
	}

	// Inside a tree, symlinks are copied as symlinks.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"dir"}, Dest: "/app/", DstRoot: dst})
	for link, target := range map[string]string{"rel": "target.txt", "abs": "/etc/passwd", "dangling": "nowhere"} {
		got, err := os.Readlink(filepath.Join(dst, "app", link))
		if err != nil || got != target {
			t.Errorf("app/%s -> %q (%v), want %q", link, got, err, target)
		}
	}

	// The source itself is followed: a link to a file copies the file under
	// the link's name, a link to a directory copies its contents.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"filelink", "dirlink"}, Dest: "/top/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "top/filelink"), cpWant{content: "T"})
	cpCheck(t, filepath.Join(dst, "top/inner.txt"), cpWant{content: "I"})

	// A dangling source is not found.
	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"dir/dangling"}, Dest: "/d/", DstRoot: dst})
	if !errors.Is(err, errNotFound) {
		t.Errorf("dangling: err %v", err)
	}
}

func TestCopyHardlinks(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "d/a"), "same", 0o644)
	if err := os.MkdirAll(filepath.Join(ctxDir, "d/sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(filepath.Join(ctxDir, "d/a"), filepath.Join(ctxDir, "d/sub/b")); err != nil {
		t.Fatal(err)
	}
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"d"}, Dest: "/h", DstRoot: dst})
	a, err := os.Stat(filepath.Join(dst, "h/a"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.Stat(filepath.Join(dst, "h/sub/b"))
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(a, b) {
		t.Error("hardlinked files were copied as two files")
	}
	if src, _ := os.Stat(filepath.Join(ctxDir, "d/a")); os.SameFile(src, a) {
		t.Error("destination is linked to the source")
	}
}

func TestCopyOwnership(t *testing.T) {
	cpRequireRoot(t)
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "d/f"), "f", 0o644)
	for _, p := range []string{"d/f", "d"} {
		if err := os.Lchown(filepath.Join(ctxDir, p), 1234, 5678); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink("f", filepath.Join(ctxDir, "d/l")); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(filepath.Join(ctxDir, "d/l"), 1234, 5678); err != nil {
		t.Fatal(err)
	}

	// From the build context: 0:0.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"d"}, Dest: "/ctx", DstRoot: dst})
	cpOwner(t, filepath.Join(dst, "ctx/f"), 0, 0)
	cpOwner(t, filepath.Join(dst, "ctx/l"), 0, 0)

	// COPY --from: the source owners stay.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"d"}, Dest: "/from", DstRoot: dst, PreserveOwnership: true})
	cpOwner(t, filepath.Join(dst, "from/f"), 1234, 5678)
	cpOwner(t, filepath.Join(dst, "from/l"), 1234, 5678)
	cpOwner(t, filepath.Join(dst, "from"), 0, 0)

	// --chown numeric: everything copied and every directory created.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"d"}, Dest: "/c1/deep", DstRoot: dst, Chown: "1000:1001"})
	for _, p := range []string{"c1", "c1/deep", "c1/deep/f", "c1/deep/l"} {
		cpOwner(t, filepath.Join(dst, p), 1000, 1001)
	}
	// A uid alone gives gid = uid.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"d/f"}, Dest: "/c2/", DstRoot: dst, Chown: "42"})
	cpOwner(t, filepath.Join(dst, "c2/f"), 42, 42)
	cpOwner(t, filepath.Join(dst, "c2"), 42, 42)
	// --chown wins over PreserveOwnership.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"d/f"}, Dest: "/c3/", DstRoot: dst, Chown: "7:8", PreserveOwnership: true})
	cpOwner(t, filepath.Join(dst, "c3/f"), 7, 8)
}

func TestCopyChownByName(t *testing.T) {
	cpRequireRoot(t)
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "f"), "f", 0o644)
	cpWrite(t, filepath.Join(dst, "etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1500:1600::/home/app:/bin/sh\n", 0o644)
	cpWrite(t, filepath.Join(dst, "etc/group"), "root:x:0:\napp:x:1600:\nstaff:x:50:app\n", 0o644)

	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"f"}, Dest: "/n1/", DstRoot: dst, Chown: "app"})
	cpOwner(t, filepath.Join(dst, "n1/f"), 1500, 1600)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"f"}, Dest: "/n2/", DstRoot: dst, Chown: "app:staff"})
	cpOwner(t, filepath.Join(dst, "n2/f"), 1500, 50)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"f"}, Dest: "/n3/", DstRoot: dst, Chown: "99:staff"})
	cpOwner(t, filepath.Join(dst, "n3/f"), 99, 50)

	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"f"}, Dest: "/n4/", DstRoot: dst, Chown: "nobody"})
	if err == nil {
		t.Error("unknown user: no error")
	}
}

func TestCopyChmod(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "d/f"), "f", 0o600)
	cpWrite(t, filepath.Join(ctxDir, "d/sub/g"), "g", 0o777)
	if err := os.Symlink("f", filepath.Join(ctxDir, "d/l")); err != nil {
		t.Fatal(err)
	}

	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"d"}, Dest: "/m/new", DstRoot: dst, Chmod: "0751"})
	// Files and directories of the tree all get the mode...
	cpCheck(t, filepath.Join(dst, "m/new/f"), cpWant{mode: 0o751})
	cpCheck(t, filepath.Join(dst, "m/new/sub"), cpWant{mode: 0o751})
	cpCheck(t, filepath.Join(dst, "m/new/sub/g"), cpWant{mode: 0o751})
	// ...and, as in current BuildKit, so do the directories it creates.
	cpCheck(t, filepath.Join(dst, "m/new"), cpWant{mode: 0o751})
	cpCheck(t, filepath.Join(dst, "m"), cpWant{mode: 0o751})
	if fi, err := os.Lstat(filepath.Join(dst, "m/new/l")); err != nil || fi.Mode()&os.ModeSymlink == 0 {
		t.Errorf("symlink lost: %v %v", fi, err)
	}

	// Special bits are set too.
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"d/f"}, Dest: "/s/f", DstRoot: dst, Chmod: "4755"})
	cpCheck(t, filepath.Join(dst, "s/f"), cpWant{mode: 0o755 | os.ModeSetuid})

	for _, bad := range []string{"999", "17777", "u+x", "-1"} {
		if err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"d/f"}, Dest: "/bad/", DstRoot: dst, Chmod: bad}); err == nil || !strings.Contains(err.Error(), "invalid chmod parameter") {
			t.Errorf("chmod %q: err %v", bad, err)
		}
	}
}

func TestCopyPreservesSourceModesAndTimesOfFiles(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "x"), "x", 0o711|os.ModeSetuid)
	when := time.Date(1999, 12, 31, 23, 59, 58, 123456789, time.UTC)
	if err := os.Chtimes(filepath.Join(ctxDir, "x"), when, when); err != nil {
		t.Fatal(err)
	}
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"x"}, Dest: "/x", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "x"), cpWant{content: "x", mode: 0o711 | os.ModeSetuid})
	fi, _ := os.Stat(filepath.Join(dst, "x"))
	if !fi.ModTime().Equal(when) {
		t.Errorf("mtime %v, want %v", fi.ModTime(), when)
	}
}

func TestCopyExcluded(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, ".dockerignore"), "*.log\n!keep.log\nsecret\nnode_modules\n.git\n!.git/HEAD\n", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "app.go"), "go", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "debug.log"), "log", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "keep.log"), "keep", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "secret/key"), "key", 0o600)
	cpWrite(t, filepath.Join(ctxDir, "node_modules/m/index.js"), "js", 0o644)
	cpWrite(t, filepath.Join(ctxDir, ".git/HEAD"), "ref", 0o644)
	cpWrite(t, filepath.Join(ctxDir, ".git/config"), "cfg", 0o644)
	excluded, err := LoadIgnore(ctxDir, filepath.Join(ctxDir, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}

	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"."}, Dest: "/app", DstRoot: dst, Excluded: excluded})
	cpCheck(t, filepath.Join(dst, "app/app.go"), cpWant{content: "go"})
	cpCheck(t, filepath.Join(dst, "app/keep.log"), cpWant{content: "keep"})
	cpCheck(t, filepath.Join(dst, "app/.git/HEAD"), cpWant{content: "ref"})
	cpCheck(t, filepath.Join(dst, "app/.dockerignore"), cpWant{})
	for _, p := range []string{"debug.log", "secret", "node_modules", ".git/config"} {
		cpMissing(t, filepath.Join(dst, "app", p))
	}

	// Excluded paths cannot be named, nor matched by a wildcard.
	for _, src := range []string{"debug.log", "secret", "secret/key", "node_modules/m"} {
		err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{src}, Dest: "/n/", DstRoot: dst, Excluded: excluded})
		if !errors.Is(err, errNotFound) {
			t.Errorf("%s: err %v, want not found", src, err)
		}
	}
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"*.log"}, Dest: "/w/", DstRoot: dst, Excluded: excluded})
	cpCheck(t, filepath.Join(dst, "w/keep.log"), cpWant{content: "keep"})
	cpMissing(t, filepath.Join(dst, "w/debug.log"))

	// A symlink to an excluded file leads nowhere, as in the sent context.
	if err := os.Symlink("secret/key", filepath.Join(ctxDir, "keylink")); err != nil {
		t.Fatal(err)
	}
	err = Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"keylink"}, Dest: "/k/", DstRoot: dst, Excluded: excluded})
	if !errors.Is(err, errNotFound) {
		t.Errorf("link to excluded: err %v", err)
	}
}

func TestCopyRootSource(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "a"), "a", 0o644)
	cpWrite(t, filepath.Join(ctxDir, "d/b"), "b", 0o644)
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"/"}, Dest: "/", DstRoot: dst})
	cpCheck(t, filepath.Join(dst, "a"), cpWant{content: "a"})
	cpCheck(t, filepath.Join(dst, "d/b"), cpWant{content: "b"})
}

func TestCopySpecialFiles(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	if err := syscall.Mkfifo(filepath.Join(ctxDir, "fifo"), 0o640); err != nil {
		t.Skip("mkfifo:", err)
	}
	mustCopy(t, CopySpec{SrcRoot: ctxDir, Sources: []string{"."}, Dest: "/sp/", DstRoot: dst})
	fi, err := os.Lstat(filepath.Join(dst, "sp/fifo"))
	if err != nil || fi.Mode()&os.ModeNamedPipe == 0 || fi.Mode().Perm() != 0o640 {
		t.Errorf("fifo: %v %v", fi, err)
	}
}

func TestCopyCanceled(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	cpWrite(t, filepath.Join(ctxDir, "a"), "a", 0o644)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := Copy(ctx, CopySpec{SrcRoot: ctxDir, Sources: []string{"a"}, Dest: "/a", DstRoot: dst}); !errors.Is(err, context.Canceled) {
		t.Errorf("err %v", err)
	}
}

func TestCopyRejectsURL(t *testing.T) {
	ctxDir, dst := cpRoots(t)
	err := Copy(context.Background(), CopySpec{SrcRoot: ctxDir, Sources: []string{"http://127.0.0.1:1/x"}, Dest: "/", DstRoot: dst})
	if err == nil || !strings.Contains(err.Error(), "URL") {
		t.Errorf("err %v", err)
	}
}
