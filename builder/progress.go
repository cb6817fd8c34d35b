package builder

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// progress serializes the build log: stages run concurrently, so every
// line goes out whole, and a step's output lines carry the step's prefix.
//
// In tty mode (a terminal), the log lines stay as in plain mode, but a
// running RUN step's output is not logged line by line: the running steps
// are drawn in a live area at the bottom, each with its elapsed time and
// its last few lines of output, redrawn in place; a finished step leaves
// one line with its time. A failing step's last lines are in its error.
type progress struct {
	mu sync.Mutex
	w  io.Writer

	tty   bool
	width int         // terminal columns: live lines are cut to fit
	tasks []*liveTask // the running steps, oldest first
	drawn int         // lines of the live area on screen now
	timer *time.Timer // pending redraw of the elapsed times
	now   func() time.Time
}

// liveLines is how many lines of a running step's output the live area
// shows.
const liveLines = 6

// liveTick is how often the elapsed times are redrawn.
const liveTick = 200 * time.Millisecond

type liveTask struct {
	step  string
	title string
	start time.Time
	lines []string // the last liveLines lines
	total int
}

func newProgress(w io.Writer, tty bool, width int) *progress {
	if width <= 0 {
		width = 80
	}
	return &progress{w: w, tty: tty, width: width, now: time.Now}
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	line := fmt.Sprintf(format, args...)
	if !p.tty {
		fmt.Fprintln(p.w, line)
		return
	}
	p.clear()
	fmt.Fprintln(p.w, line)
	p.draw()
}

// stepOutput returns the writer for a RUN step's output: whole lines with
// prefix in plain mode, the step's part of the live area (under title) in
// tty mode, ending with "step DONE time". Its Flush ends the step's output.
func (p *progress) stepOutput(step, title, prefix string) *lineWriter {
	l := &lineWriter{p: p, prefix: prefix}
	if p.tty {
		p.mu.Lock()
		l.task = &liveTask{step: step, title: title, start: p.now()}
		p.tasks = append(p.tasks, l.task)
		p.clear()
		p.draw()
		p.mu.Unlock()
	}
	return l
}

type lineWriter struct {
	p      *progress
	prefix string
	task   *liveTask // tty mode
	buf    []byte
	failed bool
}

// Fail marks the step as failed: its last line says ERROR, not DONE.
func (l *lineWriter) Fail() { l.failed = true }

func (l *lineWriter) Write(b []byte) (int, error) {
	l.buf = append(l.buf, b...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			break
		}
		l.emit(l.buf[:i])
		l.buf = l.buf[i+1:]
	}
	return len(b), nil
}

// Flush writes what is left of an unterminated last line and, in tty
// mode, replaces the step's live lines by one line with its time and
// whether it failed (its error, with the last lines, follows).
func (l *lineWriter) Flush() {
	if len(l.buf) > 0 {
		l.emit(l.buf)
		l.buf = nil
	}
	if l.task == nil {
		return
	}
	p := l.p
	p.mu.Lock()
	defer p.mu.Unlock()
	for i, t := range p.tasks {
		if t == l.task {
			p.tasks = append(p.tasks[:i], p.tasks[i+1:]...)
			break
		}
	}
	p.clear()
	verdict := "DONE"
	if l.failed {
		verdict = "ERROR"
	}
	fmt.Fprintf(p.w, "%s %s %s (%d lines of output)\n", l.task.step, verdict, elapsed(p.now().Sub(l.task.start)), l.task.total)
	p.draw()
	l.task = nil
}

func (l *lineWriter) emit(line []byte) {
	p := l.p
	p.mu.Lock()
	defer p.mu.Unlock()
	if l.task == nil {
		fmt.Fprintf(p.w, "%s%s\n", l.prefix, line)
		return
	}
	t := l.task
	t.total++
	t.lines = append(t.lines, string(line))
	if len(t.lines) > liveLines {
		t.lines = t.lines[len(t.lines)-liveLines:]
	}
	p.clear()
	p.draw()
}

// clear erases the live area (the cursor is at its end).
func (p *progress) clear() {
	if p.drawn > 0 {
		fmt.Fprintf(p.w, "\x1b[%dA\x1b[J", p.drawn)
		p.drawn = 0
	}
}

// draw writes the live area below the log and schedules the next redraw
// of the elapsed times while steps run. Lines are cut to the terminal's
// width so that the cursor moves back by exactly the lines written.
func (p *progress) draw() {
	if len(p.tasks) == 0 {
		return
	}
	var b strings.Builder
	n := 0
	for _, t := range p.tasks {
		// The time stays visible: the title is what gets cut.
		tm := elapsed(p.now().Sub(t.start))
		fmt.Fprintf(&b, "%s %s\n", fit(t.title, p.width-len(tm)-1), tm)
		n++
		for _, line := range t.lines {
			fmt.Fprintf(&b, "%s\n", fit("  │ "+line, p.width))
			n++
		}
	}
	io.WriteString(p.w, b.String())
	p.drawn = n
	if p.timer == nil {
		p.timer = time.AfterFunc(liveTick, p.tick)
	}
}

func (p *progress) tick() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.timer = nil
	if len(p.tasks) == 0 {
		return
	}
	p.clear()
	p.draw()
}

// fit cuts s to width columns (counting runes; control characters of the
// command's output are replaced, as they would move the cursor).
func fit(s string, width int) string {
	s = strings.Map(func(r rune) rune {
		if r < ' ' || r == 0x7f {
			return ' '
		}
		return r
	}, s)
	if utf8.RuneCountInString(s) < width {
		return s
	}
	r := []rune(s)
	return string(r[:width-1])
}

func elapsed(d time.Duration) string {
	return fmt.Sprintf("%.1fs", d.Seconds())
}
