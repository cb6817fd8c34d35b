package main

import (
	"bufio"
	"bytes"
	"debug/elf"
	"debug/gosym"
	"fmt"
	"io"
	"os/exec"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// perfSummary prints where an rbuild build's CPU time went, from a
// `perf record -g` of its process tree (BENCH_PERF=1). rbuild runs in its
// own mount namespace and runc starts RUN steps from a memfd copy of it, so
// perf cannot name rbuild's functions; they are named here from the
// binary's Go symbol table. Each sample is charged to its innermost rbuild
// function, kernel time included (so a syscall's cost lands on the Go
// function that made it); the inclusive list counts every function on the
// stack once per sample.
func perfSummary(w io.Writer, data, binary string, comms []string, top int) error {
	sym, err := newGoSymbols(binary)
	if err != nil {
		return err
	}
	out, err := exec.Command("perf", "script", "-i", data, "-F", "comm,pid,ip,sym,dso").Output()
	if err != nil {
		return fmt.Errorf("perf script: %w", err)
	}
	wanted := map[string]bool{}
	for _, c := range comms {
		wanted[c] = true
	}
	frameRE := regexp.MustCompile(`^\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$`)
	type frame struct {
		ip       uint64
		sym, dso string
	}
	var byComm = map[string]int{}
	self, incl := map[string]int{}, map[string]int{}
	total, ours := 0, 0
	var comm string
	var frames []frame
	flush := func() {
		if comm == "" {
			return
		}
		total++
		byComm[comm]++
		if wanted[comm] {
			ours++
			leaf := ""
			seen := map[string]bool{}
			for _, f := range frames {
				name := ""
				if isRbuildDSO(f.dso) {
					name = sym.name(f.ip)
				}
				if name == "" {
					continue
				}
				if leaf == "" {
					leaf = name
				}
				if !seen[name] {
					seen[name] = true
					incl[name]++
				}
			}
			if leaf == "" && len(frames) > 0 {
				leaf = frames[0].sym + " (" + frames[0].dso + ")"
			}
			if len(frames) > 0 && frames[0].dso == "[kernel.kallsyms]" {
				leaf += " [kernel]"
			}
			self[leaf]++
		}
		comm, frames = "", nil
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := strings.ReplaceAll(sc.Text(), " (deleted)", "")
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case line[0] != ' ' && line[0] != '\t':
			flush()
			comm = strings.Fields(line)[0]
		default:
			if m := frameRE.FindStringSubmatch(line); m != nil {
				ip, _ := strconv.ParseUint(m[1], 16, 64)
				frames = append(frames, frame{ip, m[2], m[3]})
			}
		}
	}
	flush()
	if ours == 0 {
		return fmt.Errorf("no samples of %s in %s", strings.Join(comms, ", "), data)
	}
	fmt.Fprintf(w, "%d samples; by process:", total)
	for _, kv := range sorted(byComm, 8) {
		fmt.Fprintf(w, " %s %.1f%%", kv.k, 100*float64(kv.v)/float64(total))
	}
	fmt.Fprintf(w, "\n\n%d samples of %s. Self, charged to the innermost rbuild function:\n", ours, strings.Join(comms, ", "))
	for _, kv := range sorted(self, top) {
		fmt.Fprintf(w, "  %5.1f%%  %s\n", 100*float64(kv.v)/float64(ours), kv.k)
	}
	fmt.Fprintf(w, "\nInclusive (on the stack):\n")
	for _, kv := range sorted(incl, 2*top) {
		fmt.Fprintf(w, "  %5.1f%%  %s\n", 100*float64(kv.v)/float64(ours), kv.k)
	}
	return nil
}

// isRbuildDSO recognizes how perf names rbuild's code: "/" for the
// process re-executed in its own mount namespace, the memfd copy runc
// makes for RUN steps, or the binary's path.
func isRbuildDSO(dso string) bool {
	return dso == "/" || strings.HasPrefix(dso, "/memfd:runc_cloned") || strings.HasSuffix(dso, "/rbuild") || dso == "rbuild"
}

type kv struct {
	k string
	v int
}

func sorted(m map[string]int, n int) []kv {
	var out []kv
	for k, v := range m {
		out = append(out, kv{k, v})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].v > out[j].v || out[i].v == out[j].v && out[i].k < out[j].k })
	if len(out) > n {
		out = out[:n]
	}
	return out
}

// goSymbols names PCs of a Go binary. perf reports addresses in a mapping
// it cannot resolve as file offsets; loads maps them back to addresses.
type goSymbols struct {
	tab   *gosym.Table
	loads []elf.ProgHeader
}

func newGoSymbols(binary string) (*goSymbols, error) {
	f, err := elf.Open(binary)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	pcln := f.Section(".gopclntab")
	text := f.Section(".text")
	if pcln == nil || text == nil {
		return nil, fmt.Errorf("%s: no Go symbol table (build it without -s)", binary)
	}
	data, err := pcln.Data()
	if err != nil {
		return nil, err
	}
	// The line table is relative to runtime.text, which is not the start
	// of .text in a cgo binary (C code comes first).
	start := text.Addr
	if syms, err := f.Symbols(); err == nil {
		for _, y := range syms {
			if y.Name == "runtime.text" {
				start = y.Value
				break
			}
		}
	}
	tab, err := gosym.NewTable(nil, gosym.NewLineTable(data, start))
	if err != nil {
		return nil, err
	}
	s := &goSymbols{tab: tab}
	for _, p := range f.Progs {
		if p.Type == elf.PT_LOAD {
			s.loads = append(s.loads, p.ProgHeader)
		}
	}
	return s, nil
}

func (s *goSymbols) name(off uint64) string {
	for _, p := range s.loads {
		if off >= p.Off && off < p.Off+p.Filesz {
			if fn := s.tab.PCToFunc(off - p.Off + p.Vaddr); fn != nil {
				return fn.Name
			}
			return ""
		}
	}
	return ""
}
