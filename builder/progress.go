package builder

import (
	"bytes"
	"fmt"
	"io"
	"sync"
)

// progress serializes the build log: stages run concurrently, so every
// line goes out whole, and a step's output lines carry the step's prefix.
type progress struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *progress) printf(format string, args ...any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	fmt.Fprintf(p.w, format+"\n", args...)
}

// lineWriter returns a writer for a step's output that writes complete
// lines with prefix, and a flush for the last, unterminated line.
func (p *progress) lineWriter(prefix string) *lineWriter {
	return &lineWriter{p: p, prefix: prefix}
}

type lineWriter struct {
	p      *progress
	prefix string
	buf    []byte
}

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

// Flush writes what is left of an unterminated last line.
func (l *lineWriter) Flush() {
	if len(l.buf) > 0 {
		l.emit(l.buf)
		l.buf = nil
	}
}

func (l *lineWriter) emit(line []byte) {
	l.p.mu.Lock()
	defer l.p.mu.Unlock()
	fmt.Fprintf(l.p.w, "%s%s\n", l.prefix, line)
}
