package executor

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestChrootIsolation(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())
	sbWriteFile(t, filepath.Join(rootfs, "etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/home/app:/bin/sh\n")
	sbWriteFile(t, filepath.Join(rootfs, "etc/group"), "root:x:0:\napp:x:1000:\n")
	etcBefore, err := os.Stat(filepath.Join(rootfs, "etc"))
	if err != nil {
		t.Fatal(err)
	}
	spec := RunSpec{Rootfs: rootfs, Isolation: "chroot", Env: []string{"GREETING=hi"}, Dir: "/work"}

	out := sbMustRun(t, spec, `echo "$GREETING from $(pwd)"; cat /etc/hosts | grep -c localhost; echo x > /dev/null && echo devnull-ok; echo made > /made`)
	for _, want := range []string{"hi from /work", "devnull-ok"} {
		if !strings.Contains(out, want) {
			t.Errorf("output %q lacks %q", out, want)
		}
	}
	if got, _ := os.ReadFile(filepath.Join(rootfs, "made")); string(got) != "made\n" {
		t.Errorf("/made = %q: the command did not write into the root filesystem", got)
	}
	// What was provided for the run is gone, and /etc is as it was.
	sbAbsent(t, rootfs, "etc/hosts", "etc/resolv.conf", "dev")
	etcAfter, err := os.Stat(filepath.Join(rootfs, "etc"))
	if err != nil {
		t.Fatal(err)
	}
	if !etcAfter.ModTime().Equal(etcBefore.ModTime()) {
		t.Errorf("/etc mtime changed from %v to %v", etcBefore.ModTime(), etcAfter.ModTime())
	}

	// USER, exit codes, and the command cannot see the host's root.
	spec.User = "app"
	out = sbMustRun(t, spec, "id -u; id -g; ls /proc 2>&1 | head -1")
	if !strings.HasPrefix(out, "1000\n1000\n") {
		t.Errorf("id output %q, want 1000/1000", out)
	}
	spec.User = ""
	_, err = sbRun(t, spec, "exit 5")
	var ee *ExitError
	if !errors.As(err, &ee) || ee.Code != 5 {
		t.Errorf("exit 5 gave %v", err)
	}
	if _, err := sbRun(t, spec, "test -e /usr/local/go || test -e /work/main"); err == nil {
		t.Errorf("the chrooted command sees the host's files")
	}

	// RUN --mount needs mounts: refused with a clear error.
	spec.Mounts = []Mount{{Source: t.TempDir(), Target: "/cache"}}
	if _, err := sbRun(t, spec, "true"); err == nil || !strings.Contains(err.Error(), "chroot isolation") {
		t.Errorf("a mount under chroot isolation: %v", err)
	}
}

func TestChrootCancel(t *testing.T) {
	sbRequire(t)
	rootfs := sbRootfs(t, t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := Run(ctx, RunSpec{Rootfs: rootfs, Isolation: "chroot", Args: []string{"/bin/sh", "-c", "sleep 30"}, StateDir: t.TempDir()})
	if err == nil || time.Since(start) > 10*time.Second {
		t.Errorf("canceled run returned %v after %v", err, time.Since(start))
	}
}
