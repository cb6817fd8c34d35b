package snapshot

// Benchmarks of issue 4 (snapshots that cost what changed). They need root,
// like the store tests. Results and the commands that produced them are in
// docs/benchmarks.md:
//
//	go test -run '^$' -bench . -timeout 40m ./snapshot            # BENCH_FULL=1 make bench-go, ~7 min
//	RBUILD_BENCH_QUICK=1 go test -run '^$' -bench . ./snapshot    # make bench-go, ~2 min
//
// RBUILD_BENCH_QUICK=1 leaves out the 100k-file bases and sets the sizes
// below to 64 MiB and 10000 files unless they are given:
// RBUILD_BENCH_LAYER_MB (BenchmarkLayerExport, default 1024) and
// RBUILD_BENCH_RUN_FILES (BenchmarkRunWrites100kFiles, default 100000).
//
// Every benchmark logs the load average before and after: other jobs
// share this machine's CPUs.

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// benchEnv is a store under its own temporary root, shared by all the
// runs of one sub-benchmark (Go calls a benchmark function several times
// with growing b.N; the setup is done on the first call only).
type benchEnv struct {
	st   *Store
	root string
	base string // the base layer's id, "" for scratch
	snap *Snapshot
}

func newBenchEnv(b *testing.B, driver string, comp Compression) *benchEnv {
	b.Helper()
	requireRoot(b)
	if driver == "overlay" {
		if ok, why := overlayUsable(b); !ok {
			b.Skip(why)
		}
	}
	root, err := os.MkdirTemp("", "rbuild-bench-")
	if err != nil {
		b.Fatal(err)
	}
	st, err := Open(Options{Root: root, Driver: driver, Compression: comp})
	if err != nil {
		os.RemoveAll(root)
		b.Fatalf("Open(driver %q): %v", driver, err)
	}
	return &benchEnv{st: st, root: root}
}

// close is called by the parent benchmark once all runs are done.
func (e *benchEnv) close(b *testing.B) {
	if e == nil {
		return
	}
	if err := e.st.Close(); err != nil {
		b.Errorf("closing the store: %v", err)
	}
	unmountUnder(b, e.root)
	removeRunRoot(b, e.st)
	if err := os.RemoveAll(e.root); err != nil {
		b.Errorf("removing %s: %v", e.root, err)
	}
}

// drop deletes a committed layer and its blob: each iteration leaves the
// store as it found it, so the store's metadata does not grow with b.N.
func (e *benchEnv) drop(b *testing.B, l *Layer) {
	if err := e.st.Delete(l.ID); err != nil {
		b.Fatalf("deleting layer: %v", err)
	}
	if !l.Empty {
		if err := os.Remove(e.st.Blobs.Path(l.Digest)); err != nil {
			b.Fatal(err)
		}
	}
}

// baseTar streams a layer of n small files, 100 to a directory
// (d0000/f000000 ...), each 512 bytes, the shape of a distribution's
// root file system.
func baseTar(n int) io.ReadCloser {
	pr, pw := io.Pipe()
	go func() {
		tw := tar.NewWriter(pw)
		data := make([]byte, 512)
		rng := rand.New(rand.NewPCG(1, 2))
		err := func() error {
			for i := 0; i < n; i++ {
				if i%100 == 0 {
					if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: fmt.Sprintf("d%04d/", i/100), Mode: 0o755, ModTime: fixed}); err != nil {
						return err
					}
				}
				for j := range data {
					data[j] = 'a' + byte(rng.IntN(26))
				}
				if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: fmt.Sprintf("d%04d/f%06d", i/100, i), Mode: 0o644, Size: int64(len(data)), ModTime: fixed}); err != nil {
					return err
				}
				if _, err := tw.Write(data); err != nil {
					return err
				}
			}
			return tw.Close()
		}()
		pw.CloseWithError(err)
	}()
	return pr
}

// putBase stores the n-file base layer.
func (e *benchEnv) putBase(b *testing.B, n int) {
	b.Helper()
	start := time.Now()
	r := baseTar(n)
	defer r.Close()
	id := layerID(fmt.Sprintf("base-%d", n))
	if _, err := e.st.PutLayer(id, "", r); err != nil {
		b.Fatalf("storing the %d-file base layer: %v", n, err)
	}
	e.base = id
	b.Logf("%s: base layer of %d files stored in %v", e.st.Driver(), n, time.Since(start).Round(time.Millisecond))
	e.sync(b)
}

// sync writes the setup's files out before the timed part: a build's base
// layer was stored long before its steps run, and its write-back is not a
// step's cost.
func (e *benchEnv) sync(b *testing.B) {
	b.Helper()
	start := time.Now()
	f, err := os.Open(e.root)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if err := unix.Syncfs(int(f.Fd())); err != nil {
		b.Fatal(err)
	}
	b.Logf("setup synced to disk in %v", time.Since(start).Round(time.Millisecond))
}

// logLoad prints the load average to the benchmark output (a parent
// benchmark's b.Log is not shown).
func logLoad(b *testing.B, when string) {
	data, err := os.ReadFile("/proc/loadavg")
	if err == nil {
		fmt.Printf("# %s: load average %s %s\n", b.Name(), when, strings.Join(strings.Fields(string(data))[:3], " "))
	}
}

func ms(d time.Duration, n int) float64 { return d.Seconds() * 1000 / float64(n) }

// cpuTime is the CPU time (user + system, all threads) this process has
// used: unlike wall time, it hardly moves when other jobs share the CPUs.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func quick() bool { return os.Getenv("RBUILD_BENCH_QUICK") != "" }

// envInt reads a size from the environment: def by default, quickDef
// with RBUILD_BENCH_QUICK.
func envInt(b *testing.B, name string, def, quickDef int) int {
	v := os.Getenv(name)
	if v == "" {
		if quick() {
			return quickDef
		}
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q: want a positive integer", name, v)
	}
	return n
}

// BenchmarkCommitOneFileChanged is a RUN that changes one file on a root
// file system of 1k, 10k and 100k files: Prepare on the base, rewrite one
// file, Commit. ns/op is the whole snapshot cost of the step (target:
// flat across sizes, under 20 ms at 100k files with overlay); ms/prepare
// and ms/commit split it. vfs is there for contrast: it copies the parent
// on Prepare and compares whole trees on Commit.
func BenchmarkCommitOneFileChanged(b *testing.B) {
	logLoad(b, "before")
	defer logLoad(b, "after")
	for _, driver := range []string{"overlay", "vfs"} {
		for _, size := range []struct {
			name string
			n    int
		}{{"1k", 1000}, {"10k", 10000}, {"100k", 100000}} {
			var env *benchEnv
			b.Run(driver+"/files="+size.name, func(b *testing.B) {
				if quick() && size.n > 10000 {
					b.Skip("RBUILD_BENCH_QUICK")
				}
				if env == nil {
					env = newBenchEnv(b, driver, Compression{})
					env.putBase(b, size.n)
				}
				ctx := context.Background()
				target := fmt.Sprintf("d%04d/f%06d", size.n/200, size.n/2)
				var prepare, commit, cpu time.Duration
				var each []time.Duration
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					c0 := cpuTime()
					t0 := time.Now()
					snap, err := env.st.Prepare(env.base)
					if err != nil {
						b.Fatal(err)
					}
					t1 := time.Now()
					if err := os.WriteFile(filepath.Join(snap.Path, target), []byte(fmt.Sprintf("changed %d\n", i)), 0o644); err != nil {
						b.Fatal(err)
					}
					t2 := time.Now()
					l, err := env.st.Commit(ctx, snap)
					if err != nil {
						b.Fatal(err)
					}
					t3 := time.Now()
					cpu += cpuTime() - c0
					prepare += t1.Sub(t0)
					commit += t3.Sub(t2)
					each = append(each, t3.Sub(t0))
					b.StopTimer()
					if i == 0 {
						checkOneFileLayer(b, env.st, l, target)
					}
					env.drop(b, l)
					b.StartTimer()
				}
				b.ReportMetric(ms(prepare, b.N), "ms/prepare")
				b.ReportMetric(ms(commit, b.N), "ms/commit")
				b.ReportMetric(ms(cpu, b.N), "cpu-ms/op")
				// The mean (ns/op) follows the other jobs' spikes; the
				// median and the 90th percentile show how often.
				slices.Sort(each)
				b.ReportMetric(ms(each[len(each)/2], 1), "p50-ms")
				b.ReportMetric(ms(each[len(each)*9/10], 1), "p90-ms")
			})
			env.close(b)
		}
	}
}

// checkOneFileLayer makes sure the benchmark measures the right thing: the
// layer holds the changed file and its directory, nothing else.
func checkOneFileLayer(b *testing.B, st *Store, l *Layer, target string) {
	b.Helper()
	if l.Empty {
		b.Fatal("the commit of a changed file is empty")
	}
	rc, err := st.Blobs.V1(*l).Uncompressed()
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var got []string
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		got = append(got, strings.TrimPrefix(hdr.Name, "./"))
	}
	want := []string{filepath.Dir(target) + "/", target}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		b.Fatalf("layer entries %v, want %v", got, want)
	}
}

// mixedContent writes size bytes alternating, in 64 KiB runs,
// incompressible random bytes and compressible text (words drawn from a
// small vocabulary, roughly what source and config files compress like).
func mixedContent(w io.Writer, size int64, rng *rand.Rand) error {
	words := strings.Fields("the of and to in is for on that with as by it this from be are at or an " +
		"func return error string int if else var const package import type struct nil true false " +
		"usr lib bin share include local etc var opt config data cache log tmp")
	buf := make([]byte, 64<<10)
	for off, run := int64(0), 0; off < size; run++ {
		n := int64(len(buf))
		if size-off < n {
			n = size - off
		}
		chunk := buf[:n]
		if run%2 == 0 {
			for i := 0; i+8 <= len(chunk); i += 8 {
				v := rng.Uint64()
				for k := 0; k < 8; k++ {
					chunk[i+k] = byte(v >> (8 * k))
				}
			}
		} else {
			i := 0
			for i < len(chunk) {
				wd := words[rng.IntN(len(words))]
				i += copy(chunk[i:], wd)
				if i < len(chunk) {
					if rng.IntN(12) == 0 {
						chunk[i] = '\n'
					} else {
						chunk[i] = ' '
					}
					i++
				}
			}
		}
		if _, err := w.Write(chunk); err != nil {
			return err
		}
		off += n
	}
	return nil
}

// BenchmarkLayerExport exports one large layer (RBUILD_BENCH_LAYER_MB,
// default 1024, in 8 MiB files of mixed compressible and incompressible
// content, written once into a snapshot on scratch) and reports MB/s of
// uncompressed layer:
//
//   - pgzip: Store.Commit with the default compression (parallel gzip),
//   - gzip-1thread: the same tar stream (the same diff and normalization,
//     both digests) through the standard library's single-threaded
//     compress/gzip at its default level, the baseline,
//   - zstd: Store.Commit with --compression=zstd,
//   - tar: the same stream and digest with no compression, the ceiling set
//     by reading the diff.
func BenchmarkLayerExport(b *testing.B) {
	logLoad(b, "before")
	defer logLoad(b, "after")
	sizeMB := envInt(b, "RBUILD_BENCH_LAYER_MB", 1024, 64)
	var env *benchEnv
	defer func() { env.close(b) }()
	setup := func(b *testing.B) {
		if env != nil {
			return
		}
		env = newBenchEnv(b, "", Compression{})
		snap, err := env.st.Prepare("")
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		rng := rand.New(rand.NewPCG(3, 4))
		const fileMB = 8
		for i, left := 0, int64(sizeMB)<<20; left > 0; i++ {
			n := min(left, int64(fileMB)<<20)
			f, err := os.Create(filepath.Join(snap.Path, fmt.Sprintf("data%04d.bin", i)))
			if err != nil {
				b.Fatal(err)
			}
			if err := mixedContent(f, n, rng); err != nil {
				b.Fatal(err)
			}
			if err := f.Close(); err != nil {
				b.Fatal(err)
			}
			left -= n
		}
		env.snap = snap
		b.Logf("%s: %d MiB layer written in %v", env.st.Driver(), sizeMB, time.Since(start).Round(time.Millisecond))
		env.sync(b)
	}
	// remount puts the snapshot back as Commit found it (mounted).
	remount := func(b *testing.B) {
		if _, err := env.st.store.Mount(env.snap.ID, ""); err != nil {
			b.Fatal(err)
		}
	}
	commit := func(comp Compression) func(b *testing.B) {
		return func(b *testing.B) {
			setup(b)
			env.st.compression = comp
			defer func() { env.st.compression = Compression{} }()
			b.SetBytes(int64(sizeMB) << 20)
			var compressed int64
			var cpu time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				remount(b)
				b.StartTimer()
				c0 := cpuTime()
				l, err := env.st.Commit(context.Background(), env.snap)
				if err != nil {
					b.Fatal(err)
				}
				cpu += cpuTime() - c0
				b.StopTimer()
				compressed = l.Size
				if err := os.Remove(env.st.Blobs.Path(l.Digest)); err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
			}
			b.ReportMetric(float64(compressed)/float64(int64(sizeMB)<<20), "ratio")
			b.ReportMetric(ms(cpu, b.N), "cpu-ms/op")
		}
	}
	// stream exports through the same diff and normalization as Commit,
	// into a caller's writer, with the diffID and (when compressed) the
	// blob digest computed as LayerWriter does.
	stream := func(compress func(io.Writer) io.WriteCloser) func(b *testing.B) {
		return func(b *testing.B) {
			setup(b)
			b.SetBytes(int64(sizeMB) << 20)
			var compressed int64
			var cpu time.Duration
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				b.StopTimer()
				remount(b)
				f, err := os.CreateTemp(env.root, "baseline-")
				if err != nil {
					b.Fatal(err)
				}
				b.StartTimer()
				c0 := cpuTime()
				if _, err := env.st.store.Unmount(env.snap.ID, true); err != nil {
					b.Fatal(err)
				}
				blob := &countingWriter{w: io.MultiWriter(f, sha256.New())}
				diffHash := sha256.New()
				var in io.Writer = diffHash
				var cw io.WriteCloser
				if compress != nil {
					cw = compress(blob)
					in = io.MultiWriter(cw, diffHash)
				} else {
					in = io.MultiWriter(blob, diffHash)
				}
				if _, err := env.st.export(context.Background(), env.snap, in); err != nil {
					b.Fatal(err)
				}
				if cw != nil {
					if err := cw.Close(); err != nil {
						b.Fatal(err)
					}
				}
				if err := f.Close(); err != nil {
					b.Fatal(err)
				}
				_ = diffHash.Sum(nil)
				cpu += cpuTime() - c0
				b.StopTimer()
				compressed = blob.n
				os.Remove(f.Name())
				b.StartTimer()
			}
			b.ReportMetric(float64(compressed)/float64(int64(sizeMB)<<20), "ratio")
			b.ReportMetric(ms(cpu, b.N), "cpu-ms/op")
		}
	}
	b.Run("pgzip", commit(Compression{}))
	b.Run("gzip-1thread", stream(func(w io.Writer) io.WriteCloser { return gzip.NewWriter(w) }))
	b.Run("zstd", commit(Compression{Algorithm: "zstd"}))
	b.Run("tar", stream(nil))
}

// BenchmarkRunWrites100kFiles is a RUN step that writes many small files
// (RBUILD_BENCH_RUN_FILES, default 100000, 100 to a directory, 1 KiB of
// text each) on a 10k-file base: Prepare, the writes (the "command"),
// Commit. It reports the command's time (ms/write) against the snapshot's
// (ms/prepare, ms/commit) and their ratio.
func BenchmarkRunWrites100kFiles(b *testing.B) {
	logLoad(b, "before")
	defer logLoad(b, "after")
	files := envInt(b, "RBUILD_BENCH_RUN_FILES", 100000, 10000)
	for _, driver := range []string{"overlay", "vfs"} {
		var env *benchEnv
		b.Run(driver, func(b *testing.B) {
			if env == nil {
				env = newBenchEnv(b, driver, Compression{})
				env.putBase(b, 10000)
			}
			ctx := context.Background()
			// Each file a different 1 KiB of text from a 1 MiB pool, so
			// that the layer compresses as text does, no better.
			pool := make([]byte, 1<<20)
			rng := rand.New(rand.NewPCG(5, 6))
			for j := range pool {
				pool[j] = 'a' + byte(rng.IntN(26))
			}
			var prepare, write, commit time.Duration
			var size int64
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				t0 := time.Now()
				snap, err := env.st.Prepare(env.base)
				if err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				for j := 0; j < files; j++ {
					dir := filepath.Join(snap.Path, "gen", fmt.Sprintf("d%04d", j/100))
					if j%100 == 0 {
						if err := os.MkdirAll(dir, 0o755); err != nil {
							b.Fatal(err)
						}
					}
					off := j * 4099 % (len(pool) - 1024)
					if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("f%06d", j)), pool[off:off+1024], 0o644); err != nil {
						b.Fatal(err)
					}
				}
				t2 := time.Now()
				l, err := env.st.Commit(ctx, snap)
				if err != nil {
					b.Fatal(err)
				}
				t3 := time.Now()
				prepare += t1.Sub(t0)
				write += t2.Sub(t1)
				commit += t3.Sub(t2)
				size = l.Size
				b.StopTimer()
				env.drop(b, l)
				b.StartTimer()
			}
			b.ReportMetric(ms(prepare, b.N), "ms/prepare")
			b.ReportMetric(ms(write, b.N), "ms/write")
			b.ReportMetric(ms(commit, b.N), "ms/commit")
			b.ReportMetric(commit.Seconds()/write.Seconds(), "commit/write")
			b.ReportMetric(float64(size)/(1<<20), "blob-MiB")
		})
		env.close(b)
	}
}
