package executor

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	securejoin "github.com/cyphar/filepath-securejoin"
	"github.com/moby/sys/user"
	"golang.org/x/sys/unix"
)

// ResolveUser resolves a Dockerfile USER value against the passwd and group
// files of rootfs, with Docker's semantics (the same moby/sys/user logic the
// engine and BuildKit use):
//
//   - "" is root (0:0) with the groups /etc/group gives root;
//   - "name" or "uid" selects the passwd entry; the primary gid is the entry's
//     gid and the supplementary groups are the /etc/group entries that list
//     the user by name;
//   - a numeric uid without a passwd entry is allowed and gets gid 0 and no
//     supplementary groups;
//   - ":group" or ":gid" sets the primary gid explicitly (a numeric gid needs
//     no group entry) and, as in Docker, then no supplementary groups are
//     added;
//   - an unknown name is an error ("unable to find user NAME: no matching
//     entries in passwd file").
//
// The files are read from inside rootfs with symlinks resolved within it, so
// an image cannot point them at the host's files.
func ResolveUser(rootfs, spec string) (uid, gid uint32, extraGids []uint32, err error) {
	passwd, group, closeFiles, err := openUserFiles(rootfs)
	if err != nil {
		return 0, 0, nil, err
	}
	defer closeFiles()

	eu, err := user.GetExecUser(spec, nil, passwd, group)
	if err != nil {
		return 0, 0, nil, err
	}
	for _, g := range eu.Sgids {
		extraGids = append(extraGids, uint32(g))
	}
	return uint32(eu.Uid), uint32(eu.Gid), extraGids, nil
}

// ResolveChown resolves a COPY/ADD --chown value against rootfs the way
// Docker's builders do, which differs from USER for the defaults:
//
//   - "" is 0:0;
//   - a numeric uid alone gives gid = uid (not 0 as for USER);
//   - a name alone gives the gid of its passwd entry;
//   - "user:group" looks each part up (names in passwd/group, numbers used
//     as they are);
//   - unknown names are errors.
func ResolveChown(rootfs, spec string) (uid, gid int, err error) {
	if spec == "" {
		return 0, 0, nil
	}
	userPart, groupPart, hasGroup := strings.Cut(spec, ":")
	if userPart == "" || (hasGroup && groupPart == "") {
		return 0, 0, fmt.Errorf("invalid --chown value %q", spec)
	}

	uidNum, uidIsNum := parseID(userPart)
	gidNum, gidIsNum := parseID(groupPart)
	// Purely numeric specs need no files (the image may have none).
	if uidIsNum && (!hasGroup || gidIsNum) {
		if !hasGroup {
			return uidNum, uidNum, nil
		}
		return uidNum, gidNum, nil
	}

	passwd, group, closeFiles, err := openUserFiles(rootfs)
	if err != nil {
		return 0, 0, err
	}
	defer closeFiles()

	if uidIsNum {
		uid, gid = uidNum, uidNum
	} else {
		if passwd == nil {
			return 0, 0, fmt.Errorf("unable to find user %s: %w", userPart, user.ErrNoPasswdEntries)
		}
		users, err := user.ParsePasswdFilter(passwd, func(u user.User) bool { return u.Name == userPart })
		if err != nil {
			return 0, 0, fmt.Errorf("unable to find user %s: %w", userPart, err)
		}
		if len(users) == 0 {
			return 0, 0, fmt.Errorf("unable to find user %s: %w", userPart, user.ErrNoPasswdEntries)
		}
		uid, gid = users[0].Uid, users[0].Gid
	}

	if hasGroup {
		if gidIsNum {
			gid = gidNum
		} else {
			if group == nil {
				return 0, 0, fmt.Errorf("unable to find group %s: %w", groupPart, user.ErrNoGroupEntries)
			}
			groups, err := user.ParseGroupFilter(group, func(g user.Group) bool { return g.Name == groupPart })
			if err != nil {
				return 0, 0, fmt.Errorf("unable to find group %s: %w", groupPart, err)
			}
			if len(groups) == 0 {
				return 0, 0, fmt.Errorf("unable to find group %s: %w", groupPart, user.ErrNoGroupEntries)
			}
			gid = groups[0].Gid
		}
	}
	return uid, gid, nil
}

// parseID reports whether s is a valid numeric uid/gid (0..2^31-1, the range
// Docker and the OCI tools accept).
func parseID(s string) (int, bool) {
	if s == "" {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 31)
	if err != nil {
		return 0, false
	}
	return int(n), true
}

// openUserFiles opens rootfs/etc/passwd and rootfs/etc/group, resolving the
// paths inside rootfs. A missing file gives a nil reader (moby/sys/user then
// treats names as unknown and numbers as plain ids), as Docker does.
func openUserFiles(rootfs string) (passwd, group io.Reader, closeFn func(), err error) {
	pf, err := openInRoot(rootfs, "/etc/passwd")
	if err != nil {
		return nil, nil, nil, err
	}
	gf, err := openInRoot(rootfs, "/etc/group")
	if err != nil {
		if pf != nil {
			pf.Close()
		}
		return nil, nil, nil, err
	}
	closeFn = func() {
		if pf != nil {
			pf.Close()
		}
		if gf != nil {
			gf.Close()
		}
	}
	// Avoid typed-nil interfaces: GetExecUser checks the readers for nil.
	if pf != nil {
		passwd = pf
	}
	if gf != nil {
		group = gf
	}
	return passwd, group, closeFn, nil
}

// openInRoot opens the file at path inside rootfs for reading, following
// symlinks as if rootfs were "/" (github.com/cyphar/filepath-securejoin).
// It returns nil, nil when the file does not exist.
func openInRoot(rootfs, path string) (*os.File, error) {
	p, err := securejoin.SecureJoin(rootfs, path)
	if err != nil {
		return nil, err
	}
	// SecureJoin resolved every symlink, so the last component must not be
	// one now; O_NOFOLLOW catches a swap in between.
	f, err := os.OpenFile(p, os.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
			return nil, nil
		}
		return nil, err
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		if err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%s in the image is not a regular file", path)
	}
	return f, nil
}
