package integration

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rbuild/rbuild/internal/testenv"
)

// defaultBuildTimeout bounds one build unless case.json sets "timeout".
const defaultBuildTimeout = 5 * time.Minute

// buildRun is one build of a case, as root or as the unprivileged user.
type buildRun struct {
	Case *Case
	Mode string   // "root" or "user"
	User *account // nil for root

	Dir        string // this run's directory (owned by User)
	Context    string // the copy of context/ after setup
	Dockerfile string // rendered Dockerfile ("" when it lives in the context or is missing)
	Out        string // {{OUT}}: a directory for --output, --iidfile and the like
	State      string // --root
	Tag        string // REGISTRY/cases/NAME:MODE

	Args   []string // full argv after the binary
	Env    []string // added to (and overriding) the usual environment
	Stdout string
	Stderr string
	Err    error // nil when the build exited 0
	Took   time.Duration
}

// placeholders returns the replacements for {{...}} in case data.
func (r *buildRun) placeholders(b *baseImages) *strings.Replacer {
	return strings.NewReplacer(
		"{{REGISTRY}}", b.Registry,
		"{{BUSYBOX_DIGEST}}", b.BusyboxDigest,
		"{{OUT}}", r.Out,
	)
}

// prepareRun lays out a run directory: context copy with setup applied,
// rendered Dockerfile, empty state and output directories, all owned by the
// account that will build.
func prepareRun(t testing.TB, work string, c *Case, mode string, acct *account, b *baseImages) *buildRun {
	t.Helper()
	r := &buildRun{Case: c, Mode: mode, User: acct}
	var err error
	r.Dir, err = os.MkdirTemp(filepath.Join(work, "runs"), c.Name+"-"+mode+"-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(r.Dir, 0o755); err != nil {
		t.Fatal(err)
	}
	r.Context = filepath.Join(r.Dir, "context")
	r.Out = filepath.Join(r.Dir, "out")
	r.State = filepath.Join(r.Dir, "state")
	for _, d := range []string{r.Out, r.State, filepath.Join(r.Dir, "tmp"), filepath.Join(r.Dir, "xdg")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(filepath.Join(r.Dir, "xdg"), 0o700); err != nil {
		t.Fatal(err)
	}
	src := filepath.Join(c.Dir, "context")
	if _, err := os.Stat(src); err == nil {
		if err := copyTree(src, r.Context); err != nil {
			t.Fatalf("copying context: %v", err)
		}
	} else if err := os.Mkdir(r.Context, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range c.Setup {
		if err := applySetup(r.Context, s); err != nil {
			t.Fatalf("setup[%d]: %v", i, err)
		}
	}

	rep := r.placeholders(b)
	df, err := os.ReadFile(filepath.Join(c.Dir, c.Dockerfile))
	switch {
	case err != nil && c.Error == nil:
		t.Fatalf("reading %s: %v", c.Dockerfile, err)
	case err != nil:
		// A bad-input case about a missing Dockerfile: point at where it
		// would be.
		if !c.DockerfileInContext {
			r.Dockerfile = filepath.Join(r.Dir, c.Dockerfile)
		}
	default:
		text := rep.Replace(string(df))
		target := filepath.Join(r.Dir, c.Dockerfile)
		if c.DockerfileInContext {
			target = filepath.Join(r.Context, "Dockerfile")
		} else {
			r.Dockerfile = target
		}
		if err := os.WriteFile(target, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if acct != nil {
		if err := acct.Chown(r.Dir); err != nil {
			t.Fatalf("chown run directory: %v", err)
		}
		// chown clears setuid and setgid bits: set the modes again.
		for i, s := range c.Setup {
			if err := applySetup(r.Context, SetupStep{Chmod: s.Chmod}); err != nil {
				t.Fatalf("setup[%d] chmod after chown: %v", i, err)
			}
		}
	}

	r.Tag = fmt.Sprintf("%s/cases/%s:%s", b.Registry, c.Name, mode)
	args := []string{"build",
		"--root", r.State,
		"--progress", "plain",
		"--insecure-registry", b.Registry,
		"-t", r.Tag,
		"--build-arg", "REGISTRY=" + b.Registry,
	}
	keys := make([]string, 0, len(c.BuildArgs))
	for k := range c.BuildArgs {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		args = append(args, "--build-arg", k+"="+rep.Replace(c.BuildArgs[k]))
	}
	for _, a := range c.Args {
		args = append(args, rep.Replace(a))
	}
	switch {
	case c.StdinDockerfile:
		args = append(args, "-f", "-")
	case r.Dockerfile != "":
		args = append(args, "-f", r.Dockerfile)
	}
	r.Args = append(args, r.Context)
	return r
}

// run executes the build and records its outcome.
func (r *buildRun) run(bin string) {
	timeout := defaultBuildTimeout
	if r.Case.Timeout != "" {
		timeout, _ = time.ParseDuration(r.Case.Timeout)
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	cmd := exec.CommandContext(ctx, bin, r.Args...)
	cmd.Dir = r.Dir
	home := "/root"
	if r.User != nil {
		home = r.User.Home
	}
	cmd.Env = []string{
		"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
		"HOME=" + home,
		"TMPDIR=" + filepath.Join(r.Dir, "tmp"),
		"LANG=C.UTF-8",
	}
	if r.User != nil {
		cmd.Env = append(cmd.Env,
			"USER="+r.User.Name,
			"LOGNAME="+r.User.Name,
			"XDG_RUNTIME_DIR="+filepath.Join(r.Dir, "xdg"),
		)
	}
	cmd.Env = append(cmd.Env, r.Env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if r.User != nil {
		cmd.SysProcAttr.Credential = r.User.Credential()
	}
	// On timeout kill the whole process group: rbuild's sandboxes too.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 10 * time.Second
	if r.Case.StdinDockerfile {
		b, err := os.ReadFile(filepath.Join(r.Dir, r.Case.Dockerfile))
		if err != nil {
			r.Err = err
			return
		}
		cmd.Stdin = bytes.NewReader(b)
	}
	var stdout, stderr bytes.Buffer
	log, _ := os.Create(filepath.Join(r.Dir, "build.log"))
	if log != nil {
		defer log.Close()
		fmt.Fprintf(log, "$ %s %s\n", bin, strings.Join(r.Args, " "))
		cmd.Stdout = io.MultiWriter(&stdout, log)
		cmd.Stderr = io.MultiWriter(&stderr, log)
	} else {
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
	}
	start := time.Now()
	r.Err = cmd.Run()
	r.Took = time.Since(start)
	if ctx.Err() != nil {
		r.Err = fmt.Errorf("timed out after %s: %w", timeout, r.Err)
	}
	r.Stdout, r.Stderr = stdout.String(), stderr.String()
}

// report describes the run for a failure message.
func (r *buildRun) report() string {
	var b strings.Builder
	fmt.Fprintf(&b, "rbuild %s\n", strings.Join(r.Args, " "))
	if r.User != nil {
		fmt.Fprintf(&b, "(as %s, uid %d)\n", r.User.Name, r.User.UID)
	}
	fmt.Fprintf(&b, "exit: %v after %s\n", r.Err, r.Took.Round(time.Millisecond))
	if r.Stdout != "" {
		fmt.Fprintf(&b, "--- stdout (tail)\n%s\n", testenv.Tail(r.Stdout, 40))
	}
	if r.Stderr != "" {
		fmt.Fprintf(&b, "--- stderr (tail)\n%s\n", testenv.Tail(r.Stderr, 40))
	}
	return b.String()
}

// exitedNonZero tells a build that failed by itself from one that could
// not start or was killed.
func exitedNonZero(err error) bool {
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		return false
	}
	ws, ok := ee.Sys().(syscall.WaitStatus)
	return ok && ws.Exited() && ws.ExitStatus() != 0
}

// copyTree copies a directory tree (regular files, directories, symlinks)
// keeping permission bits.
func copyTree(src, dst string) error {
	return filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		switch {
		case fi.Mode()&os.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case fi.IsDir():
			if err := os.MkdirAll(target, 0o755); err != nil {
				return err
			}
			return os.Chmod(target, fi.Mode().Perm())
		case fi.Mode().IsRegular():
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			if err := os.WriteFile(target, b, fi.Mode().Perm()); err != nil {
				return err
			}
			return os.Chmod(target, fi.Mode().Perm())
		default:
			return fmt.Errorf("%s: unsupported file type %s", p, fi.Mode().Type())
		}
	})
}

// applySetup performs one setup step on the context directory ctxDir.
func applySetup(ctxDir string, s SetupStep) error {
	at := func(p string) string { return filepath.Join(ctxDir, p) }
	mkparent := func(p string) error { return os.MkdirAll(filepath.Dir(p), 0o755) }

	for _, p := range sortedKeys(s.Mkdir) {
		m, _ := parseMode(s.Mkdir[p])
		if err := os.MkdirAll(at(p), 0o755); err != nil {
			return err
		}
		if err := os.Chmod(at(p), os.FileMode(m).Perm()|modeBits(m)); err != nil {
			return err
		}
	}
	for _, p := range sortedKeys(s.Write) {
		if err := mkparent(at(p)); err != nil {
			return err
		}
		if err := os.WriteFile(at(p), []byte(s.Write[p]), 0o644); err != nil {
			return err
		}
	}
	for _, p := range sortedKeys(s.BigFile) {
		if err := mkparent(at(p)); err != nil {
			return err
		}
		if err := writeBigFile(at(p), s.BigFile[p]); err != nil {
			return err
		}
	}
	for _, p := range sortedKeys(s.Tar) {
		if err := mkparent(at(p)); err != nil {
			return err
		}
		var ents []tentry
		for _, e := range s.Tar[p] {
			te := tentry{Path: e.Path, UID: e.UID, GID: e.GID, Content: []byte(e.Content), Link: e.Link}
			switch e.Type {
			case "", "file":
				te.Type = tar.TypeReg
			case "dir":
				te.Type = tar.TypeDir
			case "symlink":
				te.Type = tar.TypeSymlink
			case "hardlink":
				te.Type = tar.TypeLink
			}
			if e.Mode != "" {
				te.Mode, _ = parseMode(e.Mode)
			}
			ents = append(ents, te)
		}
		gz := strings.HasSuffix(p, ".gz") || strings.HasSuffix(p, ".tgz")
		b, err := tarBytes(ents, gz)
		if err != nil {
			return err
		}
		if err := os.WriteFile(at(p), b, 0o644); err != nil {
			return err
		}
	}
	for _, p := range sortedKeys(s.Symlink) {
		if err := mkparent(at(p)); err != nil {
			return err
		}
		if err := os.Symlink(s.Symlink[p], at(p)); err != nil {
			return err
		}
	}
	for _, p := range sortedKeys(s.Hardlink) {
		if err := mkparent(at(p)); err != nil {
			return err
		}
		if err := os.Link(at(s.Hardlink[p]), at(p)); err != nil {
			return err
		}
	}
	for _, p := range sortedKeys(s.Chmod) {
		m, _ := parseMode(s.Chmod[p])
		if err := os.Chmod(at(p), os.FileMode(m).Perm()|modeBits(m)); err != nil {
			return err
		}
	}
	for _, p := range s.Remove {
		if err := os.RemoveAll(at(p)); err != nil {
			return err
		}
	}
	return nil
}

// modeBits converts setuid, setgid and sticky from octal to os.FileMode.
func modeBits(m int64) os.FileMode {
	var fm os.FileMode
	if m&0o4000 != 0 {
		fm |= os.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= os.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= os.ModeSticky
	}
	return fm
}

// bigFileByte is the content of a bigfile at offset i: not constant, so
// that a builder that mixes up blocks is caught, and cheap to recompute.
func bigFileByte(i int64) byte { return byte(i*31 + i>>12) }

func writeBigFile(p string, size int64) error {
	f, err := os.Create(p)
	if err != nil {
		return err
	}
	w := io.Writer(f)
	buf := make([]byte, 1<<16)
	for off := int64(0); off < size; {
		n := int64(len(buf))
		if size-off < n {
			n = size - off
		}
		for i := int64(0); i < n; i++ {
			buf[i] = bigFileByte(off + i)
		}
		if _, err := w.Write(buf[:n]); err != nil {
			f.Close()
			return err
		}
		off += n
	}
	return f.Close()
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
