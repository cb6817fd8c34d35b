// Package store keeps items in memory.
package store

import (
	"sort"
	"sync"
)

// Version names the store's format; the benchmark's one-file change
// extends it, so that the binary really changes.
var Version = "1"

// Item is one stored thing.
type Item struct {
	ID   string `json:"id"`
	Name string `json:"name"`
}

// Store is safe for concurrent use.
type Store struct {
	mu    sync.RWMutex
	items map[string]Item
}

// New returns an empty store.
func New() *Store { return &Store{items: map[string]Item{}} }

// Put adds or replaces an item.
func (s *Store) Put(it Item) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.items[it.ID] = it
}

// List returns the items by ID.
func (s *Store) List() []Item {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]Item, 0, len(s.items))
	for _, it := range s.items {
		out = append(out, it)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
