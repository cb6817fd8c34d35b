// Package cache computes the cache key of every build step before it runs
// and stores what a step produced under that key, so a later build with the
// same inputs reuses the layer instead of running the step.
//
// A key is a chain: each step's key hashes its parent's key with the step's
// own inputs (the instruction after expansion, the environment and build
// args it can see, the content digest of what it copies). Nothing that is
// only known after running a step goes into a key.
package cache

import (
	"crypto/sha256"
	"encoding/hex"
	"sort"
	"strconv"
	"strings"
)

// Key is a step's cache key: hex sha256.
type Key string

// Builder accumulates a step's inputs into a key. Fields are written with
// their names and lengths so that no two different input sets can produce
// the same byte stream.
type Builder struct {
	parts []string
}

// NewKey starts the key of a step whose parent has key parent ("" for the
// first step of a chain).
func NewKey(parent Key) *Builder {
	b := &Builder{}
	return b.Add("parent", string(parent))
}

// Add records one named input.
func (b *Builder) Add(name, value string) *Builder {
	b.parts = append(b.parts, name, value)
	return b
}

// AddList records an ordered list of values.
func (b *Builder) AddList(name string, values []string) *Builder {
	b.Add(name+"#", strconv.Itoa(len(values)))
	for _, v := range values {
		b.Add(name, v)
	}
	return b
}

// AddSet records an unordered set of values (sorted first).
func (b *Builder) AddSet(name string, values []string) *Builder {
	s := append([]string(nil), values...)
	sort.Strings(s)
	return b.AddList(name, s)
}

// Key returns the key of the inputs added so far.
func (b *Builder) Key() Key {
	h := sha256.New()
	for _, p := range b.parts {
		h.Write([]byte(strconv.Itoa(len(p))))
		h.Write([]byte{':'})
		h.Write([]byte(p))
	}
	return Key(hex.EncodeToString(h.Sum(nil)))
}

// String is the canonical text of the inputs, for debugging cache misses.
func (b *Builder) String() string {
	var sb strings.Builder
	for i := 0; i+1 < len(b.parts); i += 2 {
		sb.WriteString(b.parts[i])
		sb.WriteString("=")
		sb.WriteString(b.parts[i+1])
		sb.WriteString("\n")
	}
	return sb.String()
}
