package executor

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"golang.org/x/sys/unix"
)

// mountStubs are the mountpoints the sandbox needs in the rootfs but that
// the rootfs did not have: /proc, /dev, /sys, /etc/hosts, the targets of
// RUN --mount and any missing parent directories of those.
//
// runc would create them itself, on the rootfs's real filesystem, and they
// would then show up in the layer diff. So they are created here, before the
// sandbox starts, and removed after it stopped if they are still empty (an
// empty directory, an empty regular file): a RUN step that really put
// something there keeps it, as Docker does.
//
// Creating and removing an entry changes the parent directory's mtime. With
// an overlay snapshot that alone puts the parent into the diff, and it makes
// layers non-reproducible, so the parent's times are restored too: to the
// times from before the stubs were created when nothing else touched the
// directory during the run, otherwise to the times it had just before the
// stubs were removed (the step's own changes stay visible).
type mountStubs struct {
	// created lists host paths in creation order (parents first).
	created []stubEntry
	// parents are the pre-existing directories that got a new entry.
	parents map[string]*parentTimes
	// forced are stubs removed whatever they hold: files the sandbox
	// filled in itself (chroot isolation's /etc/hosts, device nodes).
	forced map[string]bool
}

type stubEntry struct {
	path   string
	dir    bool
	parent string // the pre-existing parent, for top-level stubs only
}

type parentTimes struct {
	before     [2]unix.Timespec // atime, mtime before any stub was made
	afterSetup [2]unix.Timespec // after all stubs were made
}

// createMountStubs creates the missing mountpoints for targets (container
// paths) inside rootfs. dirs says for each target whether it is a directory
// (else a file). Symlinks in the rootfs are followed as the sandbox would
// see them (github.com/cyphar/filepath-securejoin), so the stub is made where
// runc would mount.
func createMountStubs(rootfs string, targets []string, dirs []bool) (*mountStubs, error) {
	s := &mountStubs{parents: map[string]*parentTimes{}}
	for i, target := range targets {
		if err := s.create(rootfs, target, dirs[i]); err != nil {
			s.cleanup()
			return nil, err
		}
	}
	if err := s.setupDone(); err != nil {
		s.cleanup()
		return nil, err
	}
	return s, nil
}

// setupDone records the parents' times once the stubs are in place; call
// it again after replacing stubs (filling them in, making device nodes), so
// that cleanup can tell the step's own changes from the set-up's.
func (s *mountStubs) setupDone() error {
	for dir, pt := range s.parents {
		t, err := getTimes(dir)
		if err != nil {
			return err
		}
		pt.afterSetup = t
	}
	return nil
}

// force marks a stub to be removed at cleanup even though it is no longer
// empty.
func (s *mountStubs) force(path string) {
	if s.forced == nil {
		s.forced = map[string]bool{}
	}
	s.forced[path] = true
}

func (s *mountStubs) create(rootfs, target string, isDir bool) error {
	hostPath, err := securejoin.SecureJoin(rootfs, target)
	if err != nil {
		return fmt.Errorf("mountpoint %s: %w", target, err)
	}
	rel, err := filepath.Rel(rootfs, hostPath)
	if err != nil || rel == "." || strings.HasPrefix(rel, "..") {
		// The rootfs itself (a mount on "/") needs no stub.
		return nil
	}
	parts := strings.Split(rel, string(filepath.Separator))
	cur := rootfs
	for i, part := range parts {
		parent := cur
		cur = filepath.Join(cur, part)
		last := i == len(parts)-1
		st, err := os.Lstat(cur)
		if err == nil {
			if !last && !st.IsDir() {
				// A file where a directory is needed: runc will fail
				// with a clear error; nothing to create here.
				return nil
			}
			continue
		}
		if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		entry := stubEntry{path: cur, dir: !last || isDir}
		if !s.isCreated(parent) {
			// First missing component: remember the times of its
			// pre-existing parent.
			if _, known := s.parents[parent]; !known {
				t, err := getTimes(parent)
				if err != nil {
					return err
				}
				s.parents[parent] = &parentTimes{before: t}
			}
			entry.parent = parent
		}
		if entry.dir {
			err = unix.Mkdir(cur, 0o755)
		} else {
			var fd int
			fd, err = unix.Open(cur, unix.O_CREAT|unix.O_EXCL|unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o644)
			if err == nil {
				unix.Close(fd)
			}
		}
		if err != nil {
			return &os.PathError{Op: "create mountpoint", Path: cur, Err: err}
		}
		s.created = append(s.created, entry)
	}
	return nil
}

func (s *mountStubs) isCreated(path string) bool {
	for _, e := range s.created {
		if e.path == path {
			return true
		}
	}
	return false
}

// cleanup removes the stubs that are still empty, deepest first, and
// restores the times of their pre-existing parents. It must run only after
// the sandbox's mount namespace is gone (nothing is mounted on them then).
func (s *mountStubs) cleanup() error {
	if s == nil {
		return nil
	}
	// Times just before removal: what the step itself left.
	beforeRemoval := map[string][2]unix.Timespec{}
	for dir := range s.parents {
		if t, err := getTimes(dir); err == nil {
			beforeRemoval[dir] = t
		}
	}

	var errs []error
	kept := map[string]bool{} // pre-existing parents that keep a stub
	removedUnder := map[string]bool{}
	entries := append([]stubEntry(nil), s.created...)
	sort.SliceStable(entries, func(i, j int) bool {
		return strings.Count(entries[i].path, "/") > strings.Count(entries[j].path, "/")
	})
	for _, e := range entries {
		removed, err := removeIfEmpty(e.path)
		if s.forced[e.path] && !removed && err == nil {
			if err = os.Remove(e.path); err == nil {
				removed = true
			}
		}
		if err != nil {
			errs = append(errs, err)
		}
		if e.parent != "" {
			if removed {
				removedUnder[e.parent] = true
			} else {
				kept[e.parent] = true
			}
		}
	}

	for dir, pt := range s.parents {
		if !removedUnder[dir] {
			continue
		}
		restore, ok := beforeRemoval[dir]
		if !ok {
			continue
		}
		// Nothing else changed the directory during the run and every stub
		// in it is gone: it is as it was before.
		if !kept[dir] && restore[1] == pt.afterSetup[1] {
			restore = pt.before
		}
		ts := []unix.Timespec{restore[0], restore[1]}
		if err := unix.UtimesNanoAt(unix.AT_FDCWD, dir, ts, unix.AT_SYMLINK_NOFOLLOW); err != nil && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, &os.PathError{Op: "restore times", Path: dir, Err: err})
		}
	}
	s.created = nil
	return errors.Join(errs...)
}

// removeIfEmpty removes path if it is an empty directory or an empty regular
// file; anything else (content, a symlink, another type) was put there by
// the RUN step and stays.
func removeIfEmpty(path string) (bool, error) {
	st, err := os.Lstat(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, err
	}
	switch {
	case st.IsDir():
		err = unix.Rmdir(path)
		if errors.Is(err, unix.ENOTEMPTY) || errors.Is(err, unix.EEXIST) {
			return false, nil
		}
	case st.Mode().IsRegular() && st.Size() == 0:
		err = unix.Unlink(path)
	default:
		return false, nil
	}
	if err != nil {
		// EBUSY would mean it is still mounted on somewhere: reported, so
		// that a leak never passes silently.
		return false, &os.PathError{Op: "remove mountpoint", Path: path, Err: err}
	}
	return true, nil
}

func getTimes(path string) ([2]unix.Timespec, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return [2]unix.Timespec{}, &os.PathError{Op: "lstat", Path: path, Err: err}
	}
	return [2]unix.Timespec{st.Atim, st.Mtim}, nil
}
