package testenv

import (
	"os"
	"path/filepath"
)

// LoadDirs loads every directory under dir with load, in name order (a
// case directory each, for the end-to-end cases and the benchmark cases).
func LoadDirs[T any](dir string, load func(dir string) (T, error)) ([]T, error) {
	ents, err := os.ReadDir(dir) // sorted by name
	if err != nil {
		return nil, err
	}
	var out []T
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		c, err := load(filepath.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out = append(out, c)
	}
	return out, nil
}
