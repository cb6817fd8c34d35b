package snapshot

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"go.podman.io/storage"
	"go.podman.io/storage/pkg/archive"
)

func BenchmarkTmpBreakdown(b *testing.B) {
	var env *benchEnv
	b.Run("x", func(b *testing.B) {
		if env == nil {
			env = newBenchEnv(b, "overlay", Compression{})
			env.putBase(b, 1000)
		}
		var d [10]time.Duration
		for i := 0; i < b.N; i++ {
			t := []time.Time{time.Now()}
			mark := func() { t = append(t, time.Now()) }
			l, err := env.st.store.CreateLayer("", env.base, nil, "", true, nil)
			if err != nil { b.Fatal(err) }
			mark()
			p, err := env.st.store.Mount(l.ID, "")
			if err != nil { b.Fatal(err) }
			mark()
			os.WriteFile(filepath.Join(p, "d0002/f000500"), []byte("x"), 0o644)
			env.st.store.Unmount(l.ID, true)
			mark()
			_, rel, _ := env.st.Mount(env.base)
			mark()
			rc, err := env.st.store.Diff(env.base, l.ID, &storage.DiffOptions{Compression: ptr(archive.Uncompressed)})
			if err != nil { b.Fatal(err) }
			w, _ := env.st.Blobs.NewLayerWriter(Compression{})
			mark()
			normalize(context.Background(), rc, w, func(string) (os.FileInfo, bool) { return nil, false }, nil)
			rc.Close()
			mark()
			lay, err := w.Commit()
			if err != nil { b.Fatal(err) }
			mark()
			rel()
			mark()
			_ = io.Discard
			for k := 1; k < len(t); k++ {
				d[k] += t[k].Sub(t[k-1])
			}
			b.StopTimer()
			lay.ID = l.ID
			env.drop(b, lay)
			b.StartTimer()
		}
		names := []string{"", "create", "mount", "write+unmount", "mountparent", "diff+newwriter", "normalize", "wcommit", "release"}
		for k := 1; k < len(names); k++ {
			b.ReportMetric(ms(d[k], b.N), fmt.Sprintf("ms/%s", names[k]))
		}
	})
	env.close(b)
}
