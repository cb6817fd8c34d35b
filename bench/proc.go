package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Long-running processes (the registry, dockerd) are registered here when
// started, so that a failure anywhere still stops them, by PID.
var (
	stopMu  sync.Mutex
	stopper []func()
)

func atStop(f func()) {
	stopMu.Lock()
	defer stopMu.Unlock()
	stopper = append(stopper, f)
}

// stopAll runs the registered stops, last started first.
func stopAll() {
	stopMu.Lock()
	fs := stopper
	stopper = nil
	stopMu.Unlock()
	for i := len(fs) - 1; i >= 0; i-- {
		fs[i]()
	}
}

// stopProcess sends SIGTERM to pid, waits up to grace for done to close,
// then sends SIGKILL.
func stopProcess(pid int, done <-chan struct{}, grace time.Duration) {
	if pid <= 0 {
		return
	}
	// An exited (and reaped) process's PID may belong to another by now.
	select {
	case <-done:
		return
	default:
	}
	_ = syscall.Kill(pid, syscall.SIGTERM)
	select {
	case <-done:
		return
	case <-time.After(grace):
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
	}
}

// removeTree unmounts whatever is mounted below dir (dockerd's overlays)
// and removes it.
func removeTree(dir string) error {
	dir = filepath.Clean(dir)
	mounts, _ := mountsBelow(dir)
	for _, m := range mounts {
		if err := syscall.Unmount(m, 0); err != nil {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
	return os.RemoveAll(dir)
}

// mountsBelow lists mount points at or below dir, deepest first.
func mountsBelow(dir string) ([]string, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) < 5 {
			continue
		}
		mp := unescapeMount(f[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			out = append(out, mp)
		}
	}
	sort.Slice(out, func(i, j int) bool { return len(out[i]) > len(out[j]) })
	return out, nil
}

func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// cmdSpec is one command of a build.
type cmdSpec struct {
	Argv []string
	Env  []string
	Dir  string
	// Cred runs the command as another user.
	Cred *syscall.Credential
}

func (c cmdSpec) String() string {
	var env []string
	for _, e := range c.Env {
		// Only the variables that change behaviour, not HOME and PATH.
		if strings.HasPrefix(e, "DOCKER_BUILDKIT=") {
			env = append(env, e)
		}
	}
	return strings.TrimSpace(strings.Join(env, " ") + " " + shellJoin(c.Argv))
}

func shellJoin(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		if a == "" || strings.ContainsAny(a, " \t\"'$\\;&|<>*?()") {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		} else {
			q[i] = a
		}
	}
	return strings.Join(q, " ")
}

// usage is what one or more commands cost.
type usage struct {
	Wall time.Duration
	User time.Duration
	Sys  time.Duration
	// TreeMaxRSS is ru_maxrss of the command (the largest single process
	// of its tree that was waited for, RUN commands included), KiB.
	TreeMaxRSS int64
	// BuilderRSS is the largest VmHWM seen of the builder's own processes
	// (those running one of the builder's executables), KiB.
	BuilderRSS int64
	// Run is how long RUN commands ran (see sampler).
	Run time.Duration
}

func (u *usage) add(o usage) {
	u.Wall += o.Wall
	u.User += o.User
	u.Sys += o.Sys
	u.TreeMaxRSS = max(u.TreeMaxRSS, o.TreeMaxRSS)
	u.BuilderRSS = max(u.BuilderRSS, o.BuilderRSS)
	u.Run += o.Run
}

// runMeasured runs one command to completion in its own process group,
// with its output stamped into log, and returns its cost: wall time, the
// rusage of its process tree from wait4, and the peak RSS of the processes
// whose executable is one of exes (sampled from /proc).
func runMeasured(ctx context.Context, spec cmdSpec, log io.Writer, exes []string, timeout time.Duration) (usage, error) {
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	fmt.Fprintf(log, "$ %s\n", spec)
	cmd := exec.Command(spec.Argv[0], spec.Argv[1:]...)
	cmd.Env = spec.Env
	cmd.Dir = spec.Dir
	cmd.Stdout = log
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Credential: spec.Cred, Pdeathsig: syscall.SIGKILL}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return usage{}, err
	}
	pid := cmd.Process.Pid
	samp := startSampler(func() []int { return []int{pid} }, exes)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		// The whole group: the builder and what it started.
		_ = syscall.Kill(-pid, syscall.SIGKILL)
		<-done
		err = fmt.Errorf("%s: %w", spec.Argv[0], ctx.Err())
	}
	wall := time.Since(start)
	peak, runTime := samp.stop()
	u := usage{Wall: wall, BuilderRSS: peak, Run: runTime}
	if st := cmd.ProcessState; st != nil {
		u.User = st.UserTime()
		u.Sys = st.SystemTime()
		if ru, ok := st.SysUsage().(*syscall.Rusage); ok {
			u.TreeMaxRSS = ru.Maxrss
		}
	}
	// Anything of the group still alive (a daemonized helper) goes too.
	_ = syscall.Kill(-pid, syscall.SIGKILL)
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			err = fmt.Errorf("%s: %v", filepath.Base(spec.Argv[0]), ee.ProcessState)
		}
		fmt.Fprintf(log, "bench: %v\n", err)
	}
	return u, err
}

// sampler polls /proc every samplePeriod for two things in the process
// trees under roots:
//
//   - the peak RSS (VmHWM) of the builder's own processes, those running
//     one of its executables. VmHWM only grows during a process's life, so
//     the last value read is its peak.
//   - how long RUN commands ran: the union of the lifetimes of every other
//     process of the tree (not the builder, not a runtime helper such as
//     runc or a re-executed "exe"), from its start time in /proc/PID/stat
//     to the last time it was seen. The same method for every builder, so
//     "wall − RUN" compares builders fairly; a process shorter than one
//     period can be missed, and an exit is seen up to one period late.
type sampler struct {
	roots func() []int
	exes  map[string]bool
	comms map[string]bool
	peak  int64
	// runs maps a RUN process (pid and start tick) to its lifetime, in
	// seconds since boot.
	runs map[[2]int64]*[2]float64
	quit chan struct{}
	done chan struct{}
}

const samplePeriod = 50 * time.Millisecond

// helperComms are runtime processes that are neither the builder's own
// code nor a RUN command.
var helperComms = []string{"exe", "runc", "newuidmap", "newgidmap", "conmon", "containerd-shim",
	"docker-init", "slirp4netns", "fuse-overlayfs", "catatonit", "docker-registry"}

func startSampler(roots func() []int, exes []string) *sampler {
	s := &sampler{roots: roots, exes: map[string]bool{}, comms: map[string]bool{},
		runs: map[[2]int64]*[2]float64{}, quit: make(chan struct{}), done: make(chan struct{})}
	for _, e := range exes {
		s.exes[e] = true
		// comm is the executable's name cut to 15 bytes.
		c := filepath.Base(e)
		if len(c) > 15 {
			c = c[:15]
		}
		s.comms[c] = true
	}
	go s.loop()
	return s
}

func (s *sampler) loop() {
	defer close(s.done)
	t := time.NewTicker(samplePeriod)
	defer t.Stop()
	for {
		s.sample()
		select {
		case <-s.quit:
			return
		case <-t.C:
		}
	}
}

func isHelper(comm string) bool {
	for _, h := range helperComms {
		if comm == h || strings.HasPrefix(comm, h) {
			return true
		}
	}
	return false
}

func (s *sampler) sample() {
	now := uptime()
	for _, pid := range treeOf(s.roots()) {
		comm := procComm(pid)
		// A builder re-executed in its own user and mount namespaces shows
		// "/" as its exe from here; its comm still names the binary.
		exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
		exe = strings.TrimSuffix(exe, " (deleted)")
		if s.exes[exe] || s.comms[comm] {
			if hwm := statusKiB(pid, "VmHWM:"); hwm > s.peak {
				s.peak = hwm
			}
			continue
		}
		if comm == "" || isHelper(comm) || now == 0 {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		k := [2]int64{int64(pid), st.start}
		if r, ok := s.runs[k]; ok {
			r[1] = now
		} else {
			s.runs[k] = &[2]float64{float64(st.start) / clockTick, now}
		}
	}
}

// stop ends the sampling and returns the builder's peak RSS (KiB) and the
// time RUN commands ran.
func (s *sampler) stop() (int64, time.Duration) {
	close(s.quit)
	<-s.done
	var iv [][2]float64
	for _, r := range s.runs {
		// The exit happened between the last sighting and the next tick.
		iv = append(iv, [2]float64{r[0], r[1] + samplePeriod.Seconds()/2})
	}
	sort.Slice(iv, func(i, j int) bool { return iv[i][0] < iv[j][0] })
	total, end := 0.0, -1.0
	for _, x := range iv {
		if x[0] > end {
			total += x[1] - x[0]
			end = x[1]
		} else if x[1] > end {
			total += x[1] - end
			end = x[1]
		}
	}
	return s.peak, time.Duration(total * float64(time.Second))
}

// uptime is the time since boot, the clock of /proc/PID/stat start times.
func uptime() float64 {
	b, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

func procComm(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

// treeOf returns roots and all their live descendants.
func treeOf(roots []int) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return roots
	}
	children := map[int][]int{}
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		children[st.ppid] = append(children[st.ppid], pid)
	}
	var out []int
	seen := map[int]bool{}
	queue := append([]int(nil), roots...)
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if seen[p] || p <= 0 {
			continue
		}
		seen[p] = true
		out = append(out, p)
		queue = append(queue, children[p]...)
	}
	return out
}

type procStat struct {
	ppid                         int
	utime, stime, cutime, cstime int64
	// start is the start time in clock ticks since boot.
	start int64
}

// readStat parses /proc/PID/stat (fields after the parenthesized comm).
func readStat(pid int) (procStat, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return procStat{}, err
	}
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return procStat{}, fmt.Errorf("bad stat")
	}
	f := strings.Fields(string(b[i+1:]))
	// f[0] is state (field 3); ppid is field 4, utime..cstime 14..17,
	// starttime 22.
	if len(f) < 20 {
		return procStat{}, fmt.Errorf("short stat")
	}
	n := func(k int) int64 { v, _ := strconv.ParseInt(f[k-3], 10, 64); return v }
	return procStat{ppid: int(n(4)), utime: n(14), stime: n(15), cutime: n(16), cstime: n(17), start: n(22)}, nil
}

// clockTick is USER_HZ, which is 100 on every Linux architecture Go runs on
// in practice.
const clockTick = 100

// treeCPU is the CPU time of a daemon's tree: the live processes' own time
// plus what their reaped children used.
func treeCPU(root int) (user, sys time.Duration) {
	for _, pid := range treeOf([]int{root}) {
		st, err := readStat(pid)
		if err != nil {
			continue
		}
		user += time.Duration(st.utime+st.cutime) * time.Second / clockTick
		sys += time.Duration(st.stime+st.cstime) * time.Second / clockTick
	}
	return user, sys
}

// resetPeakRSS clears VmHWM of every process in root's tree, so that a
// long-running daemon's peak can be read per build.
func resetPeakRSS(root int) {
	for _, pid := range treeOf([]int{root}) {
		_ = os.WriteFile(fmt.Sprintf("/proc/%d/clear_refs", pid), []byte("5"), 0)
	}
}

// statusKiB reads a "Key:  N kB" line of /proc/PID/status.
func statusKiB(pid int, key string) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, key) {
			fs := strings.Fields(line[len(key):])
			if len(fs) > 0 {
				v, _ := strconv.ParseInt(fs[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// stampWriter prefixes every line with the seconds since start, so that a
// builder's log tells when each step began.
type stampWriter struct {
	mu    sync.Mutex
	w     io.Writer
	start time.Time
	buf   []byte
}

func newStampWriter(w io.Writer) *stampWriter {
	return &stampWriter{w: w, start: time.Now()}
}

func (s *stampWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.buf = append(s.buf, p...)
	for {
		i := bytes.IndexByte(s.buf, '\n')
		if i < 0 {
			break
		}
		fmt.Fprintf(s.w, "%9.3f %s\n", time.Since(s.start).Seconds(), s.buf[:i])
		s.buf = s.buf[i+1:]
	}
	return len(p), nil
}

func (s *stampWriter) Flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.buf) > 0 {
		fmt.Fprintf(s.w, "%9.3f %s\n", time.Since(s.start).Seconds(), s.buf)
		s.buf = nil
	}
}
