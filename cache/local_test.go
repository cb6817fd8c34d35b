package cache

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

func openLocal(t *testing.T) (*Local, string) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state", "cache")
	l, err := OpenLocal(dir)
	if err != nil {
		t.Fatalf("OpenLocal: %v", err)
	}
	return l, dir
}

func hash(c byte) v1.Hash {
	h := make([]byte, 64)
	for i := range h {
		h[i] = c
	}
	return v1.Hash{Algorithm: "sha256", Hex: string(h)}
}

func TestOpenLocal(t *testing.T) {
	_, dir := openLocal(t)
	fi, err := os.Stat(dir)
	if err != nil || !fi.IsDir() {
		t.Fatalf("cache directory not created: %v", err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Errorf("cache directory mode %o, want 700", fi.Mode().Perm())
	}
	// Reopening an existing directory is fine.
	if _, err := OpenLocal(dir); err != nil {
		t.Errorf("reopening: %v", err)
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenLocal(filepath.Join(file, "cache")); err == nil {
		t.Error("OpenLocal under a regular file succeeded")
	}
}

func TestLocalRoundTrip(t *testing.T) {
	l, dir := openLocal(t)
	k := NewKey("").Add("run", "make").Key()
	if _, ok := l.Get(k); ok {
		t.Fatal("hit in an empty cache")
	}
	e := &Entry{
		SnapshotID: "0123456789abcdef",
		DiffID:     hash('a'),
		Digest:     hash('b'),
		Size:       12345,
		MediaType:  types.OCILayerZStd,
	}
	if err := l.Put(k, e); err != nil {
		t.Fatalf("Put: %v", err)
	}
	got, ok := l.Get(k)
	if !ok {
		t.Fatal("miss after Put")
	}
	if !reflect.DeepEqual(got, e) {
		t.Errorf("Get = %+v, want %+v", got, e)
	}
	// Another key is still a miss.
	if _, ok := l.Get(NewKey("").Add("run", "make install").Key()); ok {
		t.Error("hit for a key never put")
	}
	// The same directory opened again (the next build) sees the entry.
	l2, err := OpenLocal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if got, ok := l2.Get(k); !ok || !reflect.DeepEqual(got, e) {
		t.Errorf("reopened cache: %+v, %v", got, ok)
	}
	// One file per key, no temporary files left.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(ents) != 1 || ents[0].Name() != string(k)+".json" {
		t.Errorf("cache directory holds %v, want just %s.json", ents, k)
	}
}

// TestLocalEmptyEntry: a step that changed nothing is cached too. (Its
// zero hashes used to be written as ":", which does not parse back, so
// such steps always missed.)
func TestLocalEmptyEntry(t *testing.T) {
	l, _ := openLocal(t)
	k := NewKey("").Add("env", "A=1").Key()
	e := &Entry{SnapshotID: "snap", Empty: true}
	if err := l.Put(k, e); err != nil {
		t.Fatal(err)
	}
	got, ok := l.Get(k)
	if !ok || !got.Empty || got.SnapshotID != "snap" || got.Size != 0 {
		t.Errorf("empty entry round trip: %+v, %v", got, ok)
	}
}

func TestLocalOverwrite(t *testing.T) {
	l, _ := openLocal(t)
	k := NewKey("").Key()
	if err := l.Put(k, &Entry{SnapshotID: "old", Digest: hash('1')}); err != nil {
		t.Fatal(err)
	}
	if err := l.Put(k, &Entry{SnapshotID: "new", Digest: hash('2')}); err != nil {
		t.Fatal(err)
	}
	if got, ok := l.Get(k); !ok || got.SnapshotID != "new" || got.Digest != hash('2') {
		t.Errorf("after overwrite: %+v, %v", got, ok)
	}
}

func TestLocalPutNil(t *testing.T) {
	l, dir := openLocal(t)
	if err := l.Put(NewKey("").Key(), nil); err == nil {
		t.Error("Put(nil) succeeded")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("Put(nil) left files: %v", ents)
	}
}

// TestLocalCorrupt: anything but a whole, valid entry is a miss, never an
// error or a half-filled entry.
func TestLocalCorrupt(t *testing.T) {
	l, dir := openLocal(t)
	cases := map[string]string{
		"empty file":     "",
		"truncated":      `{"snapshot":"abc","digest":"sha256:`,
		"not json":       "garbage\x00\x01",
		"no snapshot":    `{"diffID":"sha256:` + hash('a').Hex + `"}`,
		"empty snapshot": `{"snapshot":""}`,
		"bad digest":     `{"snapshot":"abc","digest":"sha256:zz"}`,
		"wrong type":     `{"snapshot":42}`,
		"json null":      `null`,
		"array":          `[{"snapshot":"abc"}]`,
	}
	i := 0
	for what, content := range cases {
		k := NewKey("").Add("case", fmt.Sprint(i)).Key()
		i++
		if err := os.WriteFile(filepath.Join(dir, string(k)+".json"), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		if e, ok := l.Get(k); ok {
			t.Errorf("%s: hit %+v, want a miss", what, e)
		}
	}
	// A directory in the place of an entry is a miss too.
	k := NewKey("").Add("case", "dir").Key()
	if err := os.Mkdir(filepath.Join(dir, string(k)+".json"), 0o700); err != nil {
		t.Fatal(err)
	}
	if _, ok := l.Get(k); ok {
		t.Error("directory entry: hit")
	}
	// And a corrupt entry is replaced by the next Put.
	k0 := NewKey("").Add("case", "0").Key()
	if err := l.Put(k0, &Entry{SnapshotID: "fixed"}); err != nil {
		t.Fatal(err)
	}
	if e, ok := l.Get(k0); !ok || e.SnapshotID != "fixed" {
		t.Errorf("after repairing: %+v, %v", e, ok)
	}
}

// TestLocalConcurrent: parallel stages put and get the same keys; readers
// see either nothing or a whole entry.
func TestLocalConcurrent(t *testing.T) {
	l, _ := openLocal(t)
	keys := []Key{NewKey("").Add("n", "1").Key(), NewKey("").Add("n", "2").Key()}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				k := keys[(w+i)%len(keys)]
				if err := l.Put(k, &Entry{SnapshotID: fmt.Sprintf("w%d-%d", w, i), Size: int64(i)}); err != nil {
					t.Errorf("Put: %v", err)
					return
				}
				if e, ok := l.Get(k); !ok || e.SnapshotID == "" {
					t.Errorf("Get after Put: %+v, %v", e, ok)
					return
				}
			}
		}()
	}
	wg.Wait()
}
