package cache

import (
	"regexp"
	"slices"
	"testing"
)

var hexKey = regexp.MustCompile(`^[0-9a-f]{64}$`)

// TestKeyStable pins the encoding: a key is sha256 over "len:bytes" of
// every name and value in turn. Changing it silently invalidates every
// cache in the field, so it must be a deliberate change of this test.
func TestKeyStable(t *testing.T) {
	// printf '6:parent0:' | sha256sum
	if got := NewKey("").Key(); got != "6ae3a9ea7f858394d1c8778f93d700f513066741b6b5be53ee6c0f8375ddd69b" {
		t.Errorf("NewKey(\"\") = %s", got)
	}
	// printf '6:parent1:p3:run7:echo hi' | sha256sum
	if got := NewKey("p").Add("run", "echo hi").Key(); got != "3c56cb79b04aae4f8d8730bcbf6bce2d99d93217f8454f78d1523999debec37b" {
		t.Errorf("NewKey(p).Add(run, echo hi) = %s", got)
	}
}

func TestKeyDeterministic(t *testing.T) {
	build := func() Key {
		return NewKey("parentkey").
			Add("instruction", "RUN make").
			AddList("args", []string{"b", "a"}).
			AddSet("env", []string{"Z=1", "A=2"}).
			Key()
	}
	k1, k2 := build(), build()
	if k1 != k2 {
		t.Fatalf("same inputs, different keys: %s %s", k1, k2)
	}
	if !hexKey.MatchString(string(k1)) {
		t.Errorf("key %q is not hex sha256", k1)
	}
	b := NewKey("x").Add("a", "b")
	if b.Key() != b.Key() {
		t.Error("Key() is not idempotent")
	}
}

// TestKeySensitivity: changing any input changes the key.
func TestKeySensitivity(t *testing.T) {
	base := func() *Builder {
		return NewKey("parent").Add("cmd", "RUN x").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "b"})
	}
	baseKey := base().Key()
	variants := map[string]Key{
		"parent":             NewKey("other").Add("cmd", "RUN x").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "b"}).Key(),
		"no parent":          NewKey("").Add("cmd", "RUN x").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "b"}).Key(),
		"field name":         NewKey("parent").Add("cmd2", "RUN x").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "b"}).Key(),
		"field value":        NewKey("parent").Add("cmd", "RUN y").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "b"}).Key(),
		"empty value":        NewKey("parent").Add("cmd", "").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "b"}).Key(),
		"list name":          NewKey("parent").Add("cmd", "RUN x").AddList("lst", []string{"1", "2"}).AddSet("set", []string{"a", "b"}).Key(),
		"list value":         NewKey("parent").Add("cmd", "RUN x").AddList("list", []string{"1", "3"}).AddSet("set", []string{"a", "b"}).Key(),
		"list longer":        NewKey("parent").Add("cmd", "RUN x").AddList("list", []string{"1", "2", ""}).AddSet("set", []string{"a", "b"}).Key(),
		"list shorter":       NewKey("parent").Add("cmd", "RUN x").AddList("list", []string{"1"}).AddSet("set", []string{"a", "b"}).Key(),
		"set name":           NewKey("parent").Add("cmd", "RUN x").AddList("list", []string{"1", "2"}).AddSet("sett", []string{"a", "b"}).Key(),
		"set value":          NewKey("parent").Add("cmd", "RUN x").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "c"}).Key(),
		"set member added":   NewKey("parent").Add("cmd", "RUN x").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "b", "c"}).Key(),
		"extra field":        base().Add("platform", "linux/amd64").Key(),
		"fields reordered":   NewKey("parent").AddList("list", []string{"1", "2"}).Add("cmd", "RUN x").AddSet("set", []string{"a", "b"}).Key(),
		"list order":         NewKey("parent").Add("cmd", "RUN x").AddList("list", []string{"2", "1"}).AddSet("set", []string{"a", "b"}).Key(),
		"value whitespace":   NewKey("parent").Add("cmd", "RUN x ").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "b"}).Key(),
		"value case":         NewKey("parent").Add("cmd", "run x").AddList("list", []string{"1", "2"}).AddSet("set", []string{"a", "b"}).Key(),
		"list element split": NewKey("parent").Add("cmd", "RUN x").AddList("list", []string{"12"}).AddSet("set", []string{"a", "b"}).Key(),
	}
	seen := map[Key]string{baseKey: "base"}
	for what, k := range variants {
		if k == baseKey {
			t.Errorf("changing the %s does not change the key", what)
		}
		if other, ok := seen[k]; ok {
			t.Errorf("%s and %s give the same key", what, other)
		}
		seen[k] = what
	}
}

// TestKeyOrdering: a list keeps its order, a set does not, and AddSet
// leaves the caller's slice alone.
func TestKeyOrdering(t *testing.T) {
	l1 := NewKey("").AddList("args", []string{"a", "b", "c"}).Key()
	l2 := NewKey("").AddList("args", []string{"c", "b", "a"}).Key()
	if l1 == l2 {
		t.Error("AddList ignores order")
	}
	in := []string{"PATH=/bin", "HOME=/root", "A=1"}
	s1 := NewKey("").AddSet("env", in).Key()
	s2 := NewKey("").AddSet("env", []string{"A=1", "PATH=/bin", "HOME=/root"}).Key()
	if s1 != s2 {
		t.Error("AddSet depends on order")
	}
	if !slices.Equal(in, []string{"PATH=/bin", "HOME=/root", "A=1"}) {
		t.Errorf("AddSet reordered the caller's slice: %v", in)
	}
	// A set is the sorted list.
	if NewKey("").AddSet("env", in).Key() != NewKey("").AddList("env", []string{"A=1", "HOME=/root", "PATH=/bin"}).Key() {
		t.Error("AddSet is not AddList of the sorted values")
	}
	// Order of Add calls matters.
	if NewKey("").Add("a", "1").Add("b", "2").Key() == NewKey("").Add("b", "2").Add("a", "1").Key() {
		t.Error("Add order ignored")
	}
}

// TestKeyNoAmbiguity: different splits of the same bytes never collide.
func TestKeyNoAmbiguity(t *testing.T) {
	pairs := []struct {
		name string
		a, b *Builder
	}{
		{"value boundary", NewKey("").Add("x", "ab").Add("y", "c"), NewKey("").Add("x", "a").Add("y", "bc")},
		{"name/value boundary", NewKey("").Add("ab", "c"), NewKey("").Add("a", "bc")},
		{"parent/first field", NewKey("ab").Add("c", ""), NewKey("a").Add("bc", "")},
		{"separator in value", NewKey("").Add("a", "b=c"), NewKey("").Add("a=b", "c")},
		{"length-like prefix", NewKey("").Add("1:a", ""), NewKey("").Add("1", ":a")},
		{"digits", NewKey("").Add("1", "23"), NewKey("").Add("12", "3")},
		{"newline", NewKey("").Add("a", "b\nc=d"), NewKey("").Add("a", "b").Add("c", "d")},
		{"list elements", NewKey("").AddList("l", []string{"a", "b"}), NewKey("").AddList("l", []string{"ab"})},
		{"list empty element", NewKey("").AddList("l", nil), NewKey("").AddList("l", []string{""})},
		{"list then field", NewKey("").AddList("l", []string{"a"}).Add("m", "b"), NewKey("").AddList("l", []string{"a", "m"})},
		{"set elements", NewKey("").AddSet("s", []string{"a", "b"}), NewKey("").AddSet("s", []string{"a,b"})},
		{"empty vs missing", NewKey("").Add("a", ""), NewKey("")},
	}
	for _, p := range pairs {
		if p.a.Key() == p.b.Key() {
			t.Errorf("%s: %q and %q give the same key", p.name, p.a.String(), p.b.String())
		}
	}
}

func TestKeyChain(t *testing.T) {
	first := NewKey("").Add("from", "sha256:abc").Key()
	second := NewKey(first).Add("run", "make").Key()
	otherBase := NewKey(NewKey("").Add("from", "sha256:def").Key()).Add("run", "make").Key()
	if second == otherBase {
		t.Error("a step's key does not depend on its parent's inputs")
	}
	if second == first {
		t.Error("a step has its parent's key")
	}
}

func TestKeyString(t *testing.T) {
	got := NewKey("p").Add("run", "echo hi").AddList("args", []string{"A=1"}).String()
	want := "parent=p\nrun=echo hi\nargs#=1\nargs=A=1\n"
	if got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}
}
