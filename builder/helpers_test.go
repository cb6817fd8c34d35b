package builder

import (
	"sort"
	"time"

	"github.com/moby/buildkit/frontend/dockerfile/shell"
)

var timeZero = time.Unix(1000000000, 0)

func newLex() *shell.Lex { return shell.NewLex('\\') }

func sortedCopy(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}
