package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// progressMode decides --progress: "tty" draws running steps live, "plain"
// logs every line, "auto" is tty when the log goes to a terminal. Asked
// for tty without a terminal (a CI log, a pipe), rbuild says so and logs
// plainly: escape sequences would only garble the log. It returns whether
// to draw live and the terminal's width.
func progressMode(mode string, w io.Writer) (bool, int) {
	width, isTerm := terminalWidth(w)
	switch mode {
	case "plain":
		return false, 0
	case "tty":
		if !isTerm {
			fmt.Fprintln(w, "WARNING: --progress=tty: the log is not a terminal; writing plain progress")
			return false, 0
		}
	}
	return isTerm, width
}

// terminalWidth reports whether w is a terminal, and its width in columns.
func terminalWidth(w io.Writer) (int, bool) {
	f, ok := w.(*os.File)
	if !ok {
		return 0, false
	}
	fd := int(f.Fd())
	if _, err := unix.IoctlGetTermios(fd, unix.TCGETS); err != nil {
		return 0, false
	}
	ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ)
	if err != nil || ws.Col == 0 {
		return 80, true
	}
	return int(ws.Col), true
}
