package builder

import (
	"bytes"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// screen replays what progress wrote to a terminal: whole lines, cursor
// up (ESC [ n A) and erase to the end (ESC [ J), the only controls it
// uses. It fails on any other escape sequence.
func screen(t *testing.T, out string) []string {
	t.Helper()
	var rows []string
	cur := 0
	ctl := regexp.MustCompile(`^\x1b\[(\d*)([A-Za-z])`)
	for len(out) > 0 {
		if out[0] == 0x1b {
			m := ctl.FindStringSubmatch(out)
			if m == nil {
				t.Fatalf("unknown escape sequence at %q", out)
			}
			switch m[2] {
			case "A":
				n, _ := strconv.Atoi(m[1])
				cur -= n
				if cur < 0 {
					t.Fatalf("cursor moved above the first line")
				}
			case "J":
				rows = rows[:cur]
			default:
				t.Fatalf("unexpected control %q", m[0])
			}
			out = out[len(m[0]):]
			continue
		}
		i := strings.IndexAny(out, "\n\x1b")
		if i < 0 || out[i] != '\n' {
			t.Fatalf("a line without its newline: %q", out)
		}
		if cur < len(rows) {
			rows[cur] = out[:i]
		} else {
			rows = append(rows, out[:i])
		}
		cur++
		out = out[i+1:]
	}
	if cur != len(rows) {
		t.Fatalf("cursor on line %d of %d at the end", cur, len(rows))
	}
	return rows
}

func TestProgressPlain(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, false, 0)
	p.printf("[a 1/2] RUN %s", "make")
	out := p.stepOutput("[a 1/2]", "[a 1/2] RUN make", "  a| ")
	fmt.Fprint(out, "one\ntw")
	fmt.Fprint(out, "o\nthree")
	out.Flush()
	p.printf("[a 2/2] COPY x /x")
	want := "[a 1/2] RUN make\n  a| one\n  a| two\n  a| three\n[a 2/2] COPY x /x\n"
	if buf.String() != want {
		t.Errorf("plain progress:\n%q\nwant\n%q", buf.String(), want)
	}
}

func TestProgressTTY(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, true, 40)
	clock := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p.now = func() time.Time { return clock }

	p.printf("[a 1/3] FROM busybox")
	p.printf("[a 2/3] RUN build")
	out := p.stepOutput("[a 2/3]", "[a 2/3] RUN build --with-a-long-option=value", "  a| ")
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(out, "line %d\n", i)
	}
	clock = clock.Add(1500 * time.Millisecond)
	p.printf("WARNING: something") // a log line while the step runs
	fmt.Fprint(out, "a line much longer than the terminal\r\x1b[2K is wide\n")
	fmt.Fprint(out, "unterminated") // shown once the step ends

	// While it runs: the log above, the step's title with its time and
	// its last lines below, cut to the width.
	got := screen(t, buf.String())
	want := []string{
		"[a 1/3] FROM busybox",
		"[a 2/3] RUN build",
		"WARNING: something",
		"[a 2/3] RUN build --with-a-long-op 1.5s",
		"  │ line 6",
		"  │ line 7",
		"  │ line 8",
		"  │ line 9",
		"  │ line 10",
		"  │ a line much longer than the termina",
	}
	checkScreen(t, "while running", got, want)
	for _, row := range got {
		if n := len([]rune(row)); n >= 40 {
			t.Errorf("a row of %d columns on a 40-column terminal: %q", n, row)
		}
	}

	clock = clock.Add(time.Second)
	out.Flush()
	p.printf("[a 3/3] COPY x /x")
	checkScreen(t, "finished", screen(t, buf.String()), []string{
		"[a 1/3] FROM busybox",
		"[a 2/3] RUN build",
		"WARNING: something",
		"[a 2/3] DONE 2.5s (12 lines of output)",
		"[a 3/3] COPY x /x",
	})
}

func checkScreen(t *testing.T, when string, got, want []string) {
	t.Helper()
	if g, w := strings.Join(got, "\n"), strings.Join(want, "\n"); g != w {
		t.Errorf("%s, the screen shows:\n%s\nwant\n%s", when, g, w)
	}
}

// Concurrent stages share the live area; every step ends as one line and
// nothing of the live area is left on screen (run with -race).
func TestProgressTTYConcurrent(t *testing.T) {
	var buf syncBuffer
	p := newProgress(&buf, true, 80)
	var wg sync.WaitGroup
	for s := 0; s < 4; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			step := fmt.Sprintf("[s%d 1/1]", s)
			p.printf("%s RUN work", step)
			out := p.stepOutput(step, step+" RUN work", "")
			for i := 0; i < 50; i++ {
				fmt.Fprintf(out, "s%d line %d\n", s, i)
			}
			out.Flush()
		}()
	}
	wg.Wait()
	time.Sleep(2 * liveTick) // a redraw after the end draws nothing
	got := screen(t, buf.String())
	if len(got) != 8 {
		t.Fatalf("%d lines left on screen, want 8 (a title and a DONE line per stage):\n%s", len(got), strings.Join(got, "\n"))
	}
	done := 0
	for _, row := range got {
		if strings.Contains(row, "DONE") {
			done++
			if !strings.HasSuffix(row, "(50 lines of output)") {
				t.Errorf("DONE line %q", row)
			}
		}
	}
	if done != 4 {
		t.Errorf("%d DONE lines, want 4:\n%s", done, strings.Join(got, "\n"))
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A failed step's line says so; its last lines come with the build's error.
func TestProgressTTYFailure(t *testing.T) {
	var buf bytes.Buffer
	p := newProgress(&buf, true, 80)
	p.now = func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }
	out := p.stepOutput("[a 1/1]", "[a 1/1] RUN false", "")
	fmt.Fprintln(out, "about to fail")
	out.Fail()
	out.Flush()
	checkScreen(t, "failed", screen(t, buf.String()), []string{"[a 1/1] ERROR 0.0s (1 lines of output)"})
}
