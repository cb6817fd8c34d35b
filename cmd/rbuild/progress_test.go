package main

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// openPTY opens a pseudo-terminal pair and returns its terminal side, set
// to cols columns.
func openPTY(t *testing.T, cols int) *os.File {
	t.Helper()
	ptm, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skipf("no pseudo-terminals here: %v", err)
	}
	t.Cleanup(func() { ptm.Close() })
	if err := unix.IoctlSetPointerInt(int(ptm.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Fatal(err)
	}
	n, err := unix.IoctlGetInt(int(ptm.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Fatal(err)
	}
	pts, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pts.Close() })
	if err := unix.IoctlSetWinsize(int(pts.Fd()), unix.TIOCSWINSZ, &unix.Winsize{Row: 24, Col: uint16(cols)}); err != nil {
		t.Fatal(err)
	}
	return pts
}

func TestProgressMode(t *testing.T) {
	term := openPTY(t, 123)
	r, pipe, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var buf bytes.Buffer
	for _, c := range []struct {
		mode   string
		w      io.Writer
		tty    bool
		width  int
		warned bool
	}{
		{"auto", term, true, 123, false},
		{"tty", term, true, 123, false},
		{"plain", term, false, 0, false},
		{"auto", pipe, false, 0, false},
		{"auto", &buf, false, 0, false},
		{"tty", pipe, false, 0, true},
	} {
		tty, width := progressMode(c.mode, c.w)
		if tty != c.tty || width != c.width {
			t.Errorf("--progress=%s on %T: tty %v width %d, want %v %d", c.mode, c.w, tty, width, c.tty, c.width)
		}
	}
	pipe.Close()
	var got bytes.Buffer
	if _, err := got.ReadFrom(r); err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(got.String(), "WARNING: --progress=tty"); n != 1 {
		t.Errorf("warnings on the pipe: %q, want one about --progress=tty", got.String())
	}
}
