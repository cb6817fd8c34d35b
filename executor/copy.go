package executor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// The rules below follow BuildKit's Dockerfile frontend (dockerfile2llb
// dispatchCopy), its file backend (solver/llbsolver/file) and fsutil's copy
// package, which together define what `docker build` does for COPY and ADD:
//
//   - every source argument is copied on its own, in order, into the same
//     destination; a wildcard argument copies each match on its own;
//   - the source itself is resolved following symlinks inside SrcRoot, the
//     tree below it is copied without following any;
//   - a directory source copies its contents; a file goes inside dest when
//     dest is an existing directory (or ends in "/"), else becomes dest;
//   - missing directories on the way to dest are created 0755 (or with the
//     --chmod mode), owned by the --chown user or root;
//   - copied entries keep mode, mtime and hardlinks; --chmod replaces the
//     permission bits of every copied file and directory; owners become the
//     --chown user, else 0:0 for the build context (the client resets them)
//     or the source's owners for COPY --from (CopySpec.PreserveOwnership).

// errNotFound marks a source that does not exist in SrcRoot (or that the
// ignore file removed from the context).
var errNotFound = errors.New("not found")

// Copy performs one COPY or ADD step: it copies spec.Sources from SrcRoot (or,
// for ADD, from http(s) URLs) to spec.Dest inside DstRoot, with Docker's
// semantics. Every write stays inside DstRoot whatever symlinks the rootfs
// holds. Sources are resolved and downloaded before anything is written, so a
// missing source leaves DstRoot untouched.
func Copy(ctx context.Context, spec CopySpec) error {
	p, err := newCopyPlan(ctx, spec, true)
	if err != nil {
		return err
	}
	defer p.cleanup()
	return p.run(ctx)
}

// copyPlan is a COPY or ADD step with its sources resolved.
type copyPlan struct {
	spec CopySpec
	op   string
	// dest is the destination inside the rootfs: absolute and clean.
	dest string
	// destDir is set when dest was written as a directory ("dir/", "dir/.",
	// "." or empty).
	destDir bool
	// chmod is set by --chmod; mode then holds the Go file mode it sets.
	chmod bool
	mode  os.FileMode
	// chown is set by --chown, with the resolved ids.
	chown    bool
	uid, gid int
	sources  []*copySource
	// tmpDir holds ADD downloads until they are copied.
	tmpDir string
}

// copySource is one resolved source: a wildcard match, a named path or a
// downloaded URL.
type copySource struct {
	// arg is the source argument as written.
	arg string
	// name is the base name the source gets inside a directory destination.
	name string
	// path is where the source is on the host (symlinks resolved inside
	// SrcRoot, or the download).
	path string
	// rel is path relative to SrcRoot, slash-separated; "." for the root.
	rel string
	fi  os.FileInfo
	// url is the URL of an ADD download.
	url string
	// archive marks an ADD source that is a tar archive to extract.
	archive bool
}

// newCopyPlan validates spec and resolves its sources. With download unset
// (for SourceDigest), URLs are recorded but not fetched, and a --chown by
// name is left unresolved when DstRoot is empty.
func newCopyPlan(ctx context.Context, spec CopySpec, download bool) (*copyPlan, error) {
	p := &copyPlan{spec: spec, op: "COPY"}
	if spec.Add {
		p.op = "ADD"
	}
	if len(spec.Sources) == 0 {
		return nil, fmt.Errorf("%s requires at least one source", p.op)
	}
	if download && spec.DstRoot == "" {
		return nil, fmt.Errorf("%s: no destination root filesystem", p.op)
	}
	p.dest, p.destDir = resolveDest(spec.Dest, spec.WorkDir)

	if spec.Chmod != "" {
		m, err := parseChmod(spec.Chmod)
		if err != nil {
			return nil, err
		}
		p.chmod, p.mode = true, m
	}
	// Numbers need no passwd file, so SourceDigest resolves them even
	// before the rootfs exists.
	if spec.Chown != "" && (spec.DstRoot != "" || numericChown(spec.Chown)) {
		uid, gid, err := ResolveChown(spec.DstRoot, spec.Chown)
		if err != nil {
			return nil, fmt.Errorf("%s --chown=%s: %w", p.op, spec.Chown, err)
		}
		p.chown, p.uid, p.gid = true, uid, gid
	}

	for _, arg := range spec.Sources {
		if isURL(arg) {
			if !spec.Add {
				return nil, fmt.Errorf("source can't be a URL for COPY: %s", arg)
			}
			s := &copySource{arg: arg, url: arg, name: urlFileName(arg)}
			p.sources = append(p.sources, s)
			continue
		}
		srcs, err := p.resolveLocal(arg)
		if err != nil {
			return nil, err
		}
		p.sources = append(p.sources, srcs...)
	}

	if spec.Add {
		for _, s := range p.sources {
			if s.url != "" || !s.fi.Mode().IsRegular() {
				continue
			}
			ok, err := isArchive(s.path)
			if err != nil {
				return nil, err
			}
			s.archive = ok
		}
	}
	if download {
		if err := p.download(ctx); err != nil {
			p.cleanup()
			return nil, err
		}
	}
	return p, nil
}

func (p *copyPlan) cleanup() {
	if p.tmpDir != "" {
		os.RemoveAll(p.tmpDir)
		p.tmpDir = ""
	}
}

// resolveDest makes the destination absolute against the working directory,
// as BuildKit's pathRelativeToWorkingDir does, and tells whether it was
// written as a directory.
func resolveDest(dest, workdir string) (string, bool) {
	dir := dest == "" || dest == "." || strings.HasSuffix(dest, "/") || strings.HasSuffix(dest, "/.")
	if !path.IsAbs(dest) {
		if workdir == "" {
			workdir = "/"
		}
		dest = path.Join("/", workdir, dest)
	}
	return path.Clean(dest), dir
}

func isURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// resolveLocal resolves one source argument against SrcRoot. A wildcard that
// matches nothing yields no source, as in BuildKit (whose dockerfile frontend
// sets AllowEmptyWildcard); a named path that does not exist is an error.
func (p *copyPlan) resolveLocal(arg string) ([]*copySource, error) {
	if p.spec.SrcRoot == "" {
		return nil, fmt.Errorf("%s: no source root for %s", p.op, arg)
	}
	// BuildKit silently maps "../x" to "/x" of the context; a path that
	// climbs out of the context is a mistake, so say so (the legacy
	// builder's message).
	rel := path.Clean(strings.TrimLeft(filepath.ToSlash(arg), "/"))
	if rel == ".." || strings.HasPrefix(rel, "../") {
		return nil, fmt.Errorf("forbidden path outside the build context: %s", arg)
	}

	prefix, pattern := splitWildcards(rel)
	if pattern == "" {
		s, err := p.stat(arg, rel, path.Base("/"+rel))
		if err != nil {
			return nil, err
		}
		return []*copySource{s}, nil
	}

	// The part before the first wildcard must exist; BuildKit fails there
	// too (fsutil walks it).
	base, err := securejoin.SecureJoin(p.spec.SrcRoot, prefix)
	if err != nil {
		return nil, fmt.Errorf("%s: resolve %s: %w", p.op, arg, err)
	}
	baseRel, err := p.relToSrc(base)
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(base)
	if err != nil || !fi.IsDir() || p.excluded(prefix) || p.excluded(baseRel) {
		return nil, fmt.Errorf("%q: %w", "/"+rel, errNotFound)
	}
	var matches []string
	if err := p.matchWildcard(base, baseRel, pattern, "", strings.Count(pattern, "/")+1, &matches); err != nil {
		return nil, fmt.Errorf("%s %s: %w", p.op, arg, err)
	}
	var out []*copySource
	for _, m := range matches {
		s, err := p.stat(arg, path.Join(baseRel, m), path.Base(m))
		if err != nil {
			return nil, err
		}
		out = append(out, s)
	}
	return out, nil
}

// matchWildcard walks dir in lexical order and collects the paths (relative
// to the walk's base) that match pattern element by element. A matching
// directory is not descended into. Entries the ignore file removed from the
// context are not there to match.
func (p *copyPlan) matchWildcard(dir, dirRel, pattern, sub string, depth int, out *[]string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		r := path.Join(sub, e.Name())
		if p.excluded(path.Join(dirRel, r)) {
			continue
		}
		if strings.Count(r, "/")+1 == depth {
			ok, err := path.Match(pattern, r)
			if err != nil {
				return err
			}
			if ok {
				*out = append(*out, r)
			}
			continue
		}
		if e.IsDir() {
			if err := p.matchWildcard(filepath.Join(dir, e.Name()), dirRel, pattern, r, depth, out); err != nil {
				return err
			}
		}
	}
	return nil
}

// stat resolves rel (relative to SrcRoot) following symlinks inside SrcRoot,
// as BuildKit follows the source of COPY, and checks it is part of the
// context.
func (p *copyPlan) stat(arg, rel, name string) (*copySource, error) {
	notFound := fmt.Errorf("%q: %w", "/"+cleanRel(rel), errNotFound)
	if p.excluded(rel) {
		return nil, notFound
	}
	host, err := securejoin.SecureJoin(p.spec.SrcRoot, rel)
	if err != nil {
		return nil, fmt.Errorf("%s: resolve %s: %w", p.op, arg, err)
	}
	fi, err := os.Lstat(host)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR) {
			return nil, notFound
		}
		return nil, fmt.Errorf("%s %s: %w", p.op, arg, err)
	}
	resolved, err := p.relToSrc(host)
	if err != nil {
		return nil, err
	}
	if p.excluded(resolved) {
		return nil, notFound
	}
	if name == "/" || name == "." {
		name = path.Base("/" + resolved)
	}
	return &copySource{arg: arg, name: name, path: host, rel: resolved, fi: fi}, nil
}

func (p *copyPlan) relToSrc(host string) (string, error) {
	r, err := filepath.Rel(p.spec.SrcRoot, host)
	if err != nil {
		return "", fmt.Errorf("%s: %w", p.op, err)
	}
	return cleanRel(r), nil
}

func (p *copyPlan) excluded(rel string) bool {
	if p.spec.Excluded == nil {
		return false
	}
	rel = cleanRel(rel)
	return rel != "." && p.spec.Excluded(rel)
}

// splitWildcards splits a clean relative path at its first element holding a
// wildcard: "a/b/*.go/c" gives "a/b" and "*.go/c"; no wildcard gives "".
func splitWildcards(rel string) (prefix, pattern string) {
	parts := strings.Split(rel, "/")
	for i, part := range parts {
		if containsWildcards(part) {
			return path.Join(parts[:i]...), strings.Join(parts[i:], "/")
		}
	}
	return rel, ""
}

// containsWildcards reports an unescaped *, ? or [ (filepath.Match syntax).
func containsWildcards(s string) bool {
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
		case '*', '?', '[':
			return true
		}
	}
	return false
}

// parseChmod parses --chmod: an octal mode up to 07777, as BuildKit's
// frontend accepts it. Symbolic modes ("u+x") are not supported.
func parseChmod(s string) (os.FileMode, error) {
	v, err := strconv.ParseUint(s, 8, 32)
	if err != nil || v > 0o7777 {
		return 0, fmt.Errorf("invalid chmod parameter: '%s'. it should be octal string and between 0 and 07777", s)
	}
	m := os.FileMode(v & 0o777)
	if v&0o4000 != 0 {
		m |= os.ModeSetuid
	}
	if v&0o2000 != 0 {
		m |= os.ModeSetgid
	}
	if v&0o1000 != 0 {
		m |= os.ModeSticky
	}
	return m, nil
}

// modeFor is the mode a copied entry gets: --chmod, else the source's.
func (p *copyPlan) modeFor(fi os.FileInfo) os.FileMode {
	if p.chmod {
		return p.mode
	}
	return fi.Mode() & (os.ModePerm | os.ModeSetuid | os.ModeSetgid | os.ModeSticky)
}

// ownerFor is the owner a copied entry gets.
func (p *copyPlan) ownerFor(s *copySource, fi os.FileInfo) (int, int) {
	if p.chown {
		return p.uid, p.gid
	}
	if p.spec.PreserveOwnership && s.url == "" {
		if st, ok := fi.Sys().(*syscall.Stat_t); ok {
			return int(st.Uid), int(st.Gid)
		}
	}
	return 0, 0
}

// dirOwner owns the directories created on the way to the destination:
// the --chown user, else root.
func (p *copyPlan) dirOwner() (int, int) {
	if p.chown {
		return p.uid, p.gid
	}
	return 0, 0
}

// dirPerm is the mode of directories created on the way to the destination.
// Since fsutil's fix for moby/buildkit#4945 BuildKit creates them with the
// --chmod mode when one is given.
func (p *copyPlan) dirPerm() os.FileMode {
	if p.chmod {
		return p.mode & os.ModePerm
	}
	return 0o755
}

func (p *copyPlan) run(ctx context.Context) error {
	if len(p.sources) == 0 {
		return nil
	}
	if len(p.sources) > 1 && !p.destDir {
		// BuildKit would copy every source over the previous one; Docker's
		// reference asks for a directory ending in "/". An existing
		// directory is accepted as BuildKit puts each source inside it.
		host, err := p.hostPath(p.dest)
		if err != nil {
			return err
		}
		if fi, err := os.Stat(host); err != nil || !fi.IsDir() {
			return fmt.Errorf("When using %s with more than one source file, the destination must be a directory and end with a /", p.op)
		}
	}
	for _, s := range p.sources {
		if err := ctx.Err(); err != nil {
			return err
		}
		var err error
		if s.archive {
			err = p.extract(ctx, s)
		} else {
			err = p.copySource(ctx, s)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// hostPath resolves a path of the rootfs to a host path inside DstRoot,
// following the rootfs' symlinks as if DstRoot were "/".
func (p *copyPlan) hostPath(rootfsPath string) (string, error) {
	host, err := securejoin.SecureJoin(p.spec.DstRoot, rootfsPath)
	if err != nil {
		return "", fmt.Errorf("%s: resolve %s: %w", p.op, rootfsPath, err)
	}
	return host, nil
}

// show turns a host path inside DstRoot back into the rootfs path, for
// errors.
func (p *copyPlan) show(host string) string {
	r, err := filepath.Rel(p.spec.DstRoot, host)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return host
	}
	return path.Join("/", filepath.ToSlash(r))
}

// mkdirAll creates the missing directories of host, a resolved path inside
// DstRoot, with mode perm and the given owner. Existing directories are left
// as they are.
func (p *copyPlan) mkdirAll(host string, perm os.FileMode, uid, gid int) error {
	r, err := filepath.Rel(p.spec.DstRoot, host)
	if err != nil || r == ".." || strings.HasPrefix(r, "../") {
		return fmt.Errorf("%s: %s is outside the root filesystem", p.op, host)
	}
	cur := p.spec.DstRoot
	if r == "." {
		return nil
	}
	for _, part := range strings.Split(r, string(filepath.Separator)) {
		cur = filepath.Join(cur, part)
		fi, err := os.Lstat(cur)
		if err == nil {
			if fi.IsDir() {
				continue
			}
			// host came from SecureJoin, so its existing parts hold no
			// symlink; one showing up means the tree changed under us.
			return fmt.Errorf("%s: mkdir %s: %w", p.op, p.show(cur), syscall.ENOTDIR)
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%s: %w", p.op, err)
		}
		if err := os.Mkdir(cur, perm); err != nil {
			return fmt.Errorf("%s: mkdir %s: %w", p.op, p.show(cur), err)
		}
		// Mkdir is subject to the umask.
		if err := os.Chmod(cur, perm); err != nil {
			return fmt.Errorf("%s: %w", p.op, err)
		}
		if err := lchown(cur, uid, gid); err != nil {
			return fmt.Errorf("%s: %w", p.op, err)
		}
	}
	return nil
}

// copySource copies one local source (or download) into the destination.
func (p *copyPlan) copySource(ctx context.Context, s *copySource) error {
	ensure := p.dest
	if !p.destDir {
		ensure = path.Dir(p.dest)
	}
	uid, gid := p.dirOwner()
	ensureHost, err := p.hostPath(ensure)
	if err != nil {
		return err
	}
	if err := p.mkdirAll(ensureHost, p.dirPerm(), uid, gid); err != nil {
		return err
	}
	dst, err := p.hostPath(p.dest)
	if err != nil {
		return err
	}
	destFi, err := os.Stat(dst)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", p.op, err)
	}

	c := &treeCopier{plan: p, src: s, inodes: map[inodeKey]string{}}
	if s.fi.IsDir() {
		if destFi == nil {
			if err := p.mkdirAll(dst, p.dirPerm(), uid, gid); err != nil {
				return err
			}
		} else if !destFi.IsDir() {
			return fmt.Errorf("%s: cannot copy to non-directory: %s", p.op, p.show(dst))
		}
		if err := c.copyDirContents(ctx, s.path, s.rel, dst); err != nil {
			return err
		}
		// The destination directory keeps its mode and owner but takes the
		// source directory's times, as fsutil restores them.
		return setTimes(dst, s.fi)
	}

	target := dst
	if destFi != nil && destFi.IsDir() {
		target = filepath.Join(dst, s.name)
	}
	// A symlinked destination can resolve to a path whose parents are
	// missing; BuildKit creates them too.
	if err := p.mkdirAll(filepath.Dir(target), p.dirPerm(), uid, gid); err != nil {
		return err
	}
	return c.copyEntry(ctx, s.path, s.rel, target, s.fi)
}

type inodeKey struct{ dev, ino uint64 }

// treeCopier copies one source tree; hardlinks are preserved within it.
type treeCopier struct {
	plan   *copyPlan
	src    *copySource
	inodes map[inodeKey]string
}

// copyDirContents copies the entries of srcDir into the existing directory
// dstDir, in name order, skipping what the ignore file excludes.
func (c *treeCopier) copyDirContents(ctx context.Context, srcDir, srcRel, dstDir string) error {
	entries, err := readDirSorted(srcDir)
	if err != nil {
		return fmt.Errorf("%s: %w", c.plan.op, err)
	}
	for _, e := range entries {
		if err := ctx.Err(); err != nil {
			return err
		}
		rel := path.Join(srcRel, e.Name())
		if c.src.url == "" && c.plan.excluded(rel) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			return fmt.Errorf("%s: %w", c.plan.op, err)
		}
		if err := c.copyEntry(ctx, filepath.Join(srcDir, e.Name()), rel, filepath.Join(dstDir, e.Name()), fi); err != nil {
			return err
		}
	}
	return nil
}

// readDirSorted lists a directory in name order (os.ReadDir sorts), the
// order fsutil copies in and SourceDigest hashes in.
func readDirSorted(dir string) ([]fs.DirEntry, error) {
	return os.ReadDir(dir)
}

// copyEntry copies one entry (recursively for a directory) to target, whose
// parent exists and holds no symlink.
func (c *treeCopier) copyEntry(ctx context.Context, src, rel, target string, fi os.FileInfo) error {
	p := c.plan
	tfi, err := os.Lstat(target)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("%s: %w", p.op, err)
	}

	if fi.IsDir() {
		if tfi == nil {
			// Owner-only until the contents are in; copyMeta sets the mode.
			if err := os.Mkdir(target, 0o700); err != nil {
				return fmt.Errorf("%s: %w", p.op, err)
			}
		} else if !tfi.IsDir() {
			return fmt.Errorf("%s: cannot copy to non-directory: %s", p.op, p.show(target))
		}
		if err := c.copyDirContents(ctx, src, rel, target); err != nil {
			return err
		}
		return c.copyMeta(src, target, fi)
	}

	if tfi != nil {
		if tfi.IsDir() {
			return fmt.Errorf("%s: cannot replace to directory %s with file", p.op, p.show(target))
		}
		if err := os.Remove(target); err != nil {
			return fmt.Errorf("%s: %w", p.op, err)
		}
	}

	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case fi.Mode().IsRegular():
		if st != nil && st.Nlink > 1 {
			key := inodeKey{uint64(st.Dev), st.Ino}
			if first, ok := c.inodes[key]; ok {
				if err := os.Link(first, target); err != nil {
					return fmt.Errorf("%s: hardlink %s: %w", p.op, p.show(target), err)
				}
				return nil
			}
			c.inodes[key] = target
		}
		if err := copyFileContent(src, target); err != nil {
			return fmt.Errorf("%s: copy %s: %w", p.op, p.show(target), err)
		}
	case fi.Mode()&os.ModeSymlink != 0:
		link, err := os.Readlink(src)
		if err != nil {
			return fmt.Errorf("%s: %w", p.op, err)
		}
		if err := os.Symlink(link, target); err != nil {
			return fmt.Errorf("%s: %w", p.op, err)
		}
	case st != nil && fi.Mode()&(os.ModeDevice|os.ModeNamedPipe|os.ModeSocket) != 0:
		if err := unix.Mknod(target, st.Mode, int(st.Rdev)); err != nil {
			return fmt.Errorf("%s: mknod %s: %w", p.op, p.show(target), err)
		}
	default:
		return fmt.Errorf("%s: %s: unsupported file type %s", p.op, rel, fi.Mode().Type())
	}
	return c.copyMeta(src, target, fi)
}

// copyFileContent copies a regular file; io.Copy between two *os.File uses
// copy_file_range, so the data stays in the kernel (and is reflinked where
// the filesystem can).
func copyFileContent(src, target string) error {
	// The source is never a symlink here (the top one is resolved, those
	// below are copied as links): O_NOFOLLOW keeps a swapped-in link of an
	// untrusted stage from being read through.
	in, err := os.OpenFile(src, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	// O_EXCL|O_NOFOLLOW: target was just removed; never write through a
	// link that appeared in between.
	out, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL|syscall.O_NOFOLLOW, 0o600)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// copyMeta applies owner, mode, xattrs and times to a copied entry, in the
// order that keeps them: chown clears set-id bits, so it comes before chmod.
func (c *treeCopier) copyMeta(src, target string, fi os.FileInfo) error {
	p := c.plan
	uid, gid := p.ownerFor(c.src, fi)
	if err := lchown(target, uid, gid); err != nil {
		return fmt.Errorf("%s: %w", p.op, err)
	}
	isLink := fi.Mode()&os.ModeSymlink != 0
	if !isLink {
		if err := os.Chmod(target, p.modeFor(fi)); err != nil {
			return fmt.Errorf("%s: %w", p.op, err)
		}
	}
	copyXattrs(src, target)
	if err := setTimes(target, fi); err != nil {
		return fmt.Errorf("%s: %w", p.op, err)
	}
	return nil
}

// lchown sets the owner of p without following a symlink. EINVAL means the
// ids are not mapped in this user namespace (single-uid rootless mode): the
// ownership cannot be kept on disk there, which rbuild warns about when it
// picks that mode.
func lchown(p string, uid, gid int) error {
	if err := os.Lchown(p, uid, gid); err != nil && !errors.Is(err, syscall.EINVAL) {
		return err
	}
	return nil
}

// setTimes gives target the access and modification times of fi, without
// following a symlink.
func setTimes(target string, fi os.FileInfo) error {
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		mt := unix.NsecToTimespec(fi.ModTime().UnixNano())
		return unix.UtimesNanoAt(unix.AT_FDCWD, target, []unix.Timespec{mt, mt}, unix.AT_SYMLINK_NOFOLLOW)
	}
	ts := []unix.Timespec{
		{Sec: st.Atim.Sec, Nsec: st.Atim.Nsec},
		{Sec: st.Mtim.Sec, Nsec: st.Mtim.Nsec},
	}
	if err := unix.UtimesNanoAt(unix.AT_FDCWD, target, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return &os.PathError{Op: "utimes", Path: target, Err: err}
	}
	return nil
}

// copyXattrs copies extended attributes, best effort as BuildKit does
// (errors are only logged there): the destination filesystem may not support
// them, or not on symlinks.
func copyXattrs(src, target string) {
	for _, x := range listXattrs(src) {
		_ = unix.Lsetxattr(target, x.name, x.value, 0)
	}
}

type xattr struct {
	name  string
	value []byte
}

// listXattrs returns the extended attributes of p that belong in an image,
// sorted by name. SELinux labels are the build host's, not the image's.
func listXattrs(p string) []xattr {
	size, err := unix.Llistxattr(p, nil)
	if err != nil || size <= 0 {
		return nil
	}
	buf := make([]byte, size)
	size, err = unix.Llistxattr(p, buf)
	if err != nil || size <= 0 {
		return nil
	}
	var out []xattr
	for _, name := range strings.Split(string(buf[:size]), "\x00") {
		if name == "" || name == "security.selinux" {
			continue
		}
		n, err := unix.Lgetxattr(p, name, nil)
		if err != nil {
			continue
		}
		val := make([]byte, n)
		if n > 0 {
			n, err = unix.Lgetxattr(p, name, val)
			if err != nil {
				continue
			}
			val = val[:n]
		}
		out = append(out, xattr{name: name, value: val})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].name < out[j].name })
	return out
}
