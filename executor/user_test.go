package executor

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

const (
	sbPasswd = `root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin
app:x:1000:1001:app:/home/app:/bin/sh
# a comment line
svc:x:2000:2000::/nonexistent:/bin/false
`
	sbGroup = `root:x:0:
daemon:x:1:
wheel:x:10:root,app
app:x:1001:
svc:x:2000:
docker:x:999:app,svc
`
)

func sbUserRootfs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	sbWriteFile(t, filepath.Join(root, "etc/passwd"), sbPasswd)
	sbWriteFile(t, filepath.Join(root, "etc/group"), sbGroup)
	return root
}

func TestResolveUser(t *testing.T) {
	root := sbUserRootfs(t)
	for _, tc := range []struct {
		spec     string
		uid, gid uint32
		extra    []uint32
	}{
		{"", 0, 0, []uint32{10}}, // root's groups, as Docker and BuildKit
		{"root", 0, 0, []uint32{10}},
		{"0", 0, 0, []uint32{10}},
		{"app", 1000, 1001, []uint32{10, 999}},
		{"1000", 1000, 1001, []uint32{10, 999}},
		{"svc", 2000, 2000, []uint32{999}},
		{"daemon", 1, 1, nil},
		{"4242", 4242, 0, nil}, // numeric without an entry: gid 0
		{"app:docker", 1000, 999, nil},
		{"app:5555", 1000, 5555, nil},
		{"4242:4343", 4242, 4343, nil},
		{"4242:wheel", 4242, 10, nil},
	} {
		uid, gid, extra, err := ResolveUser(root, tc.spec)
		if err != nil {
			t.Errorf("%q: %v", tc.spec, err)
			continue
		}
		if uid != tc.uid || gid != tc.gid || !reflect.DeepEqual(extra, tc.extra) {
			t.Errorf("%q = %d:%d %v, want %d:%d %v", tc.spec, uid, gid, extra, tc.uid, tc.gid, tc.extra)
		}
	}

	for spec, want := range map[string]string{
		"nobody":      "unable to find user nobody: no matching entries in passwd file",
		"app:nogrp":   "unable to find group nogrp",
		"99999999999": "",
	} {
		_, _, _, err := ResolveUser(root, spec)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", spec, err, want)
		}
	}
}

func TestResolveUserWithoutFiles(t *testing.T) {
	root := t.TempDir()
	uid, gid, extra, err := ResolveUser(root, "")
	if err != nil || uid != 0 || gid != 0 || extra != nil {
		t.Errorf("root: %d:%d %v %v", uid, gid, extra, err)
	}
	uid, gid, _, err = ResolveUser(root, "1000:1000")
	if err != nil || uid != 1000 || gid != 1000 {
		t.Errorf("1000:1000: %d:%d %v", uid, gid, err)
	}
	uid, gid, _, err = ResolveUser(root, "1000")
	if err != nil || uid != 1000 || gid != 0 {
		t.Errorf("1000: %d:%d %v", uid, gid, err)
	}
	if _, _, _, err := ResolveUser(root, "app"); err == nil || !strings.Contains(err.Error(), "unable to find user app") {
		t.Errorf("app: %v", err)
	}
}

// The image's /etc/passwd may be a symlink; it must resolve inside the
// rootfs, never to the host's file.
func TestResolveUserSymlinkStaysInRootfs(t *testing.T) {
	root := t.TempDir()
	sbWriteFile(t, filepath.Join(root, "data/passwd"), "app:x:1000:1000::/:/bin/sh\n")
	if err := os.MkdirAll(filepath.Join(root, "etc"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/data/passwd", filepath.Join(root, "etc/passwd")); err != nil {
		t.Fatal(err)
	}
	// An escaping relative link resolves to the rootfs's own /etc/passwd
	// (which parses as a group file too), not the host's.
	if err := os.Symlink("../../../../../../../etc/passwd", filepath.Join(root, "etc/group")); err != nil {
		t.Fatal(err)
	}
	uid, gid, extra, err := ResolveUser(root, "app")
	if err != nil || uid != 1000 || gid != 1000 || extra != nil {
		t.Errorf("app: %d:%d %v %v", uid, gid, extra, err)
	}
	// The host's /etc/passwd has a "root" line; the rootfs's has none.
	if _, _, _, err := ResolveUser(root, "app:root"); err == nil {
		t.Error("group resolved from outside the rootfs")
	}
	if _, gid, _, err := ResolveUser(root, "0:app"); err != nil || gid != 1000 {
		t.Errorf("0:app: gid %d, %v", gid, err)
	}
}

func TestResolveChown(t *testing.T) {
	root := sbUserRootfs(t)
	for _, tc := range []struct {
		spec     string
		uid, gid int
	}{
		{"", 0, 0},
		{"1000", 1000, 1000}, // numeric alone: gid = uid (not the entry's)
		{"4242", 4242, 4242},
		{"app", 1000, 1001}, // name alone: the entry's gid
		{"app:docker", 1000, 999},
		{"app:7", 1000, 7},
		{"4242:wheel", 4242, 10},
		{"10:20", 10, 20},
	} {
		uid, gid, err := ResolveChown(root, tc.spec)
		if err != nil || uid != tc.uid || gid != tc.gid {
			t.Errorf("%q = %d:%d %v, want %d:%d", tc.spec, uid, gid, err, tc.uid, tc.gid)
		}
	}
	for _, spec := range []string{"nobody", "app:nogroup", ":1", "1:", "-1"} {
		if _, _, err := ResolveChown(root, spec); err == nil {
			t.Errorf("%q: no error", spec)
		}
	}
	if _, _, err := ResolveChown(root, "nobody"); err == nil || !strings.Contains(err.Error(), "unable to find user nobody: no matching entries in passwd file") {
		t.Errorf("nobody: %v", err)
	}

	// Numeric specs need no passwd or group file.
	empty := t.TempDir()
	if uid, gid, err := ResolveChown(empty, "33:44"); err != nil || uid != 33 || gid != 44 {
		t.Errorf("33:44 without files: %d:%d %v", uid, gid, err)
	}
	if _, _, err := ResolveChown(empty, "app"); err == nil {
		t.Error("name without passwd: no error")
	}
}
