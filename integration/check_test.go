package integration

import (
	"archive/tar"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"reflect"
	"regexp"
	"sort"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// keepContent is the largest file whose bytes the checker keeps (larger
// ones are compared by size and digest).
const keepContent = 1 << 20

// imageView is what the checker reads back from the registry.
type imageView struct {
	Ref    string
	Image  v1.Image
	Raw    map[string]json.RawMessage // the config file, as stored
	Config map[string]json.RawMessage // its "config" object
	Layers []v1.Layer
	Tree   map[string]*fsEntry // the flattened file system by absolute path
}

// fsEntry is one path of the flattened file system.
type fsEntry struct {
	Hdr     *tar.Header
	SHA256  string
	Content []byte // nil when larger than keepContent
}

func (e *fsEntry) typeName() string {
	switch e.Hdr.Typeflag {
	case tar.TypeReg, tar.TypeRegA:
		return "file"
	case tar.TypeDir:
		return "dir"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeLink:
		return "hardlink"
	case tar.TypeChar:
		return "char"
	case tar.TypeBlock:
		return "block"
	case tar.TypeFifo:
		return "fifo"
	}
	return fmt.Sprintf("type %q", e.Hdr.Typeflag)
}

// pullImage reads ref from the registry with go-containerregistry and
// flattens it with mutate.Extract (whiteouts and opaque directories
// applied by the library, not by code under test).
func pullImage(ref string) (*imageView, error) {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return nil, err
	}
	img, err := remote.Image(r)
	if err != nil {
		return nil, fmt.Errorf("pull %s: %w", ref, err)
	}
	v, err := viewImage(img)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ref, err)
	}
	v.Ref = ref
	return v, nil
}

// viewImage reads an image's config, layers and flattened tree.
func viewImage(img v1.Image) (*imageView, error) {
	v := &imageView{Image: img, Tree: map[string]*fsEntry{}}
	raw, err := img.RawConfigFile()
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(raw, &v.Raw); err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if c, ok := v.Raw["config"]; ok && string(c) != "null" {
		if err := json.Unmarshal(c, &v.Config); err != nil {
			return nil, fmt.Errorf("config.config: %w", err)
		}
	}
	if v.Layers, err = img.Layers(); err != nil {
		return nil, err
	}
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("flattening: %w", err)
		}
		e := &fsEntry{Hdr: hdr}
		if hdr.Typeflag == tar.TypeReg || hdr.Typeflag == tar.TypeRegA {
			sum := sha256.New()
			var w io.Writer = sum
			var buf []byte
			if hdr.Size <= keepContent {
				buf = make([]byte, 0, hdr.Size)
				w = io.MultiWriter(sum, (*byteSink)(&buf))
			}
			if _, err := io.Copy(w, tr); err != nil {
				return nil, fmt.Errorf("flattening %s: %w", hdr.Name, err)
			}
			e.SHA256 = hex.EncodeToString(sum.Sum(nil))
			e.Content = buf
		}
		v.Tree["/"+cleanName(hdr.Name)] = e
	}
	return v, nil
}

type byteSink []byte

func (b *byteSink) Write(p []byte) (int, error) { *b = append(*b, p...); return len(p), nil }

// resolve follows a hardlink entry to its target in the tree.
func (v *imageView) resolve(e *fsEntry) *fsEntry {
	for i := 0; i < 8 && e != nil && e.Hdr.Typeflag == tar.TypeLink; i++ {
		e = v.Tree["/"+cleanName(e.Hdr.Linkname)]
	}
	return e
}

// layerNames lists the entry names of layer i (negative from the end).
func (v *imageView) layerNames(i int) ([]string, error) {
	if i < 0 {
		i += len(v.Layers)
	}
	if i < 0 || i >= len(v.Layers) {
		return nil, fmt.Errorf("layer %d out of range (%d layers)", i, len(v.Layers))
	}
	rc, err := v.Layers[i].Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	return readTarNames(rc)
}

// historyEntry is one element of the config's history.
type historyEntry struct {
	CreatedBy  string `json:"created_by"`
	Comment    string `json:"comment"`
	EmptyLayer bool   `json:"empty_layer"`
}

func (v *imageView) history() ([]historyEntry, error) {
	var h []historyEntry
	if raw, ok := v.Raw["history"]; ok {
		if err := json.Unmarshal(raw, &h); err != nil {
			return nil, fmt.Errorf("history: %w", err)
		}
	}
	return h, nil
}

// checkImage compares an image with a case's expectations and returns
// every difference (nil when it matches). known holds base layer digests:
// the layers a build added must not hold mount stubs.
func checkImage(c *Case, v *imageView, known map[v1.Hash]bool) []string {
	var probs []string
	add := func(format string, a ...any) { probs = append(probs, fmt.Sprintf(format, a...)) }

	// The image must be well formed: digests, sizes and diff IDs agree.
	if err := validateImage(v.Image, v.Raw); err != nil {
		add("image does not validate: %v", err)
	}

	probs = append(probs, checkMediaTypes(v.Image)...)

	hist, err := v.history()
	if err != nil {
		add("%v", err)
	}
	nonEmpty := 0
	for _, e := range hist {
		if !e.EmptyLayer {
			nonEmpty++
		}
	}
	if len(hist) > 0 && nonEmpty != len(v.Layers) {
		add("history has %d entries with a layer, the image has %d layers", nonEmpty, len(v.Layers))
	}

	if c.Layers != nil && len(v.Layers) != *c.Layers {
		add("layers: got %d, want %d", len(v.Layers), *c.Layers)
	}
	if c.Architecture != "" {
		if got := rawString(v.Raw["architecture"]); got != c.Architecture {
			add("architecture: got %q, want %q", got, c.Architecture)
		}
	}
	if c.OS != "" {
		if got := rawString(v.Raw["os"]); got != c.OS {
			add("os: got %q, want %q", got, c.OS)
		}
	}
	if c.Author != nil {
		if got := rawString(v.Raw["author"]); got != *c.Author {
			add("author: got %q, want %q", got, *c.Author)
		}
	}
	for _, k := range sortedKeys(c.Config) {
		want, err := decodeLoose(c.Config[k])
		if err != nil {
			add("config.%s: bad expectation: %v", k, err)
			continue
		}
		got, err := decodeLoose(v.Config[k])
		if err != nil {
			add("config.%s: %v", k, err)
			continue
		}
		if !reflect.DeepEqual(got, want) {
			add("config.%s: got %s, want %s", k, compactJSON(v.Config[k]), compactJSON(c.Config[k]))
		}
	}
	probs = append(probs, checkHistory(c.History, hist)...)

	for _, p := range sortedKeys(c.Files) {
		probs = append(probs, checkFile(v, p, c.Files[p])...)
	}
	for _, p := range c.Absent {
		if e, ok := v.Tree[p]; ok {
			add("%s: want absent, found a %s", p, e.typeName())
		}
	}

	for i, le := range c.LayerFiles {
		names, err := v.layerNames(le.Layer)
		if err != nil {
			add("layer_files[%d]: %v", i, err)
			continue
		}
		probs = append(probs, checkLayerNames(le, names)...)
	}
	probs = append(probs, checkNoMountStubs(v, known)...)
	return probs
}

// validateImage checks what go-containerregistry's validate package would
// (that package needs go-cmp, which this module does not carry): the
// config digest, every layer's digest and size, and diff IDs.
func validateImage(img v1.Image, raw map[string]json.RawMessage) error {
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	cfg, err := img.RawConfigFile()
	if err != nil {
		return err
	}
	if d := sha256.Sum256(cfg); "sha256:"+hex.EncodeToString(d[:]) != m.Config.Digest.String() {
		return fmt.Errorf("config digest %s does not match its bytes", m.Config.Digest)
	}
	if int64(len(cfg)) != m.Config.Size {
		return fmt.Errorf("config size %d, manifest says %d", len(cfg), m.Config.Size)
	}
	var rootfs struct {
		Type    string   `json:"type"`
		DiffIDs []string `json:"diff_ids"`
	}
	if err := json.Unmarshal(raw["rootfs"], &rootfs); err != nil {
		return fmt.Errorf("rootfs: %w", err)
	}
	if rootfs.Type != "layers" {
		return fmt.Errorf("rootfs.type is %q, want \"layers\"", rootfs.Type)
	}
	if len(rootfs.DiffIDs) != len(m.Layers) {
		return fmt.Errorf("%d diff_ids for %d layers", len(rootfs.DiffIDs), len(m.Layers))
	}
	layers, err := img.Layers()
	if err != nil {
		return err
	}
	for i, l := range layers {
		desc := m.Layers[i]
		rc, err := l.Compressed()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		h := sha256.New()
		n, err := io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != desc.Digest.String() {
			return fmt.Errorf("layer %d: digest %s, manifest says %s", i, got, desc.Digest)
		}
		if n != desc.Size {
			return fmt.Errorf("layer %d: %d bytes, manifest says %d", i, n, desc.Size)
		}
		rc, err = l.Uncompressed()
		if err != nil {
			return fmt.Errorf("layer %d: %w", i, err)
		}
		h = sha256.New()
		_, err = io.Copy(h, rc)
		rc.Close()
		if err != nil {
			return fmt.Errorf("layer %d: decompressing: %w", i, err)
		}
		if got := "sha256:" + hex.EncodeToString(h.Sum(nil)); got != rootfs.DiffIDs[i] {
			return fmt.Errorf("layer %d: diff ID %s, config says %s", i, got, rootfs.DiffIDs[i])
		}
	}
	return nil
}

// checkMediaTypes requires one family of media types in a manifest: an
// OCI manifest with OCI config and layers, or a Docker schema 2 manifest
// with Docker ones. BuildKit converts layers to the manifest's family
// (compression.ConvertAllLayerMediaTypes); umoci rejects a mix.
func checkMediaTypes(img v1.Image) []string {
	m, err := img.Manifest()
	if err != nil {
		return []string{err.Error()}
	}
	mt, err := img.MediaType()
	if err != nil {
		return []string{err.Error()}
	}
	var probs []string
	oci := mt == types.OCIManifestSchema1
	if !oci && mt != types.DockerManifestSchema2 {
		return []string{fmt.Sprintf("manifest media type %q", mt)}
	}
	family := func(t types.MediaType) string {
		if strings.HasPrefix(string(t), "application/vnd.oci.") {
			return "OCI"
		}
		if strings.HasPrefix(string(t), "application/vnd.docker.") {
			return "Docker"
		}
		return "unknown"
	}
	want := family(mt)
	if got := family(m.Config.MediaType); got != want {
		probs = append(probs, fmt.Sprintf("%s manifest with a %s config media type %s", want, got, m.Config.MediaType))
	}
	for i, l := range m.Layers {
		if got := family(l.MediaType); got != want {
			probs = append(probs, fmt.Sprintf("%s manifest with layer %d of %s media type %s", want, i, got, l.MediaType))
		}
	}
	return probs
}

// checkHistory aligns want with the end of got.
func checkHistory(want []HistoryExpect, got []historyEntry) []string {
	if len(want) == 0 {
		return nil
	}
	var probs []string
	if len(got) < len(want) {
		return []string{fmt.Sprintf("history: %d entries, want at least %d:\n%s", len(got), len(want), formatHistory(got))}
	}
	off := len(got) - len(want)
	for i, w := range want {
		g := got[off+i]
		bad := false
		if w.CreatedBy != "" && g.CreatedBy != w.CreatedBy {
			bad = true
		}
		if w.CreatedByContains != "" && !strings.Contains(g.CreatedBy, w.CreatedByContains) {
			bad = true
		}
		if w.EmptyLayer != nil && g.EmptyLayer != *w.EmptyLayer {
			bad = true
		}
		if bad {
			probs = append(probs, fmt.Sprintf("history[%d] (of the last %d): got {created_by: %q, empty_layer: %v}, want %s",
				i, len(want), g.CreatedBy, g.EmptyLayer, compactJSONValue(w)))
		}
	}
	if len(probs) > 0 {
		probs = append(probs, "history is:\n"+formatHistory(got))
	}
	return probs
}

func formatHistory(h []historyEntry) string {
	var b strings.Builder
	for i, e := range h {
		fmt.Fprintf(&b, "  %2d empty_layer=%-5v %s\n", i, e.EmptyLayer, e.CreatedBy)
	}
	return b.String()
}

func checkFile(v *imageView, p string, want FileExpect) []string {
	var probs []string
	add := func(format string, a ...any) { probs = append(probs, p+": "+fmt.Sprintf(format, a...)) }
	e, ok := v.Tree[p]
	if !ok {
		return []string{p + ": missing" + nearby(v, p)}
	}
	hdr := e.Hdr
	if want.Type != "" && e.typeName() != want.Type {
		add("type: got %s, want %s", e.typeName(), want.Type)
	}
	if want.Link != "" {
		got := hdr.Linkname
		if hdr.Typeflag == tar.TypeLink {
			got = "/" + cleanName(got)
		}
		if got != want.Link {
			add("link: got %q, want %q", got, want.Link)
		}
	}
	// Ownership and mode of a hardlink are its target's.
	target := v.resolve(e)
	if target == nil {
		add("hardlink to %q whose target is missing", hdr.Linkname)
		return probs
	}
	th := target.Hdr
	if want.Mode != "" {
		m, _ := parseMode(want.Mode)
		if got := th.Mode & 0o7777; got != m {
			add("mode: got %04o, want %04o", got, m)
		}
	}
	if want.UID != nil && th.Uid != *want.UID {
		add("uid: got %d, want %d", th.Uid, *want.UID)
	}
	if want.GID != nil && th.Gid != *want.GID {
		add("gid: got %d, want %d", th.Gid, *want.GID)
	}
	if want.Size != nil && th.Size != *want.Size {
		add("size: got %d, want %d", th.Size, *want.Size)
	}
	if want.SHA256 != "" && target.SHA256 != want.SHA256 {
		add("sha256: got %s, want %s", target.SHA256, want.SHA256)
	}
	if want.Content != nil {
		if target.Content == nil && th.Size > keepContent {
			add("content: file is %d bytes, compare large files by sha256", th.Size)
		} else if string(target.Content) != *want.Content {
			add("content: got %q, want %q", clip(string(target.Content)), clip(*want.Content))
		}
	}
	if want.ContentContains != "" && !strings.Contains(string(target.Content), want.ContentContains) {
		add("content: got %q, want it to contain %q", clip(string(target.Content)), want.ContentContains)
	}
	return probs
}

// nearby lists what the parent directory holds, to make a "missing"
// message actionable.
func nearby(v *imageView, p string) string {
	dir := path.Dir(p)
	var sib []string
	for k := range v.Tree {
		if path.Dir(k) == dir && k != "/" {
			sib = append(sib, path.Base(k))
		}
	}
	sort.Strings(sib)
	if len(sib) > 20 {
		sib = append(sib[:20], "...")
	}
	if _, ok := v.Tree[dir]; !ok && dir != "/" {
		return fmt.Sprintf(" (and so is %s)", dir)
	}
	return fmt.Sprintf(" (%s holds: %s)", dir, strings.Join(sib, " "))
}

func checkLayerNames(le LayerExpect, names []string) []string {
	var probs []string
	set := map[string]bool{}
	for _, n := range names {
		set[n] = true
	}
	show := func() string {
		if len(names) > 40 {
			return strings.Join(names[:40], " ") + " ..."
		}
		return strings.Join(names, " ")
	}
	for _, n := range le.Has {
		if !set[n] {
			probs = append(probs, fmt.Sprintf("layer %d: lacks entry %q; it has: %s", le.Layer, n, show()))
		}
	}
	for _, group := range le.HasAny {
		found := false
		for _, n := range group {
			found = found || set[n]
		}
		if !found {
			probs = append(probs, fmt.Sprintf("layer %d: has none of %q; it has: %s", le.Layer, group, show()))
		}
	}
	for _, n := range le.Lacks {
		for _, got := range names {
			if got == n || strings.HasPrefix(got, n+"/") {
				probs = append(probs, fmt.Sprintf("layer %d: has %q, want nothing at %s", le.Layer, got, n))
				break
			}
		}
	}
	return probs
}

// mountStubs are what a RUN sandbox mounts over; they must never reach a
// layer (BuildKit removes the stubs it had to create).
var mountStubs = []string{"proc", "sys", "dev", "etc/hosts", "etc/resolv.conf", "etc/hostname"}

// checkNoMountStubs looks at every layer that is not a base image layer.
func checkNoMountStubs(v *imageView, known map[v1.Hash]bool) []string {
	var probs []string
	for i, l := range v.Layers {
		d, err := l.Digest()
		if err != nil {
			return []string{err.Error()}
		}
		if known[d] {
			continue
		}
		names, err := v.layerNames(i)
		if err != nil {
			return []string{err.Error()}
		}
		p := checkLayerNames(LayerExpect{Layer: i, Lacks: mountStubs}, names)
		for _, s := range p {
			probs = append(probs, "mount stub in a built layer: "+s)
		}
	}
	return probs
}

// checkAbsentFromRegistry confirms that a failed build pushed nothing.
func checkAbsentFromRegistry(ref string) error {
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		return err
	}
	_, err = remote.Head(r)
	if err == nil {
		return fmt.Errorf("%s exists in the registry after a failed build", ref)
	}
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return nil
	}
	return fmt.Errorf("HEAD %s: %w", ref, err)
}

// checkError compares a failed build with the case's error expectation.
func checkError(e *ErrorExpect, stderr string) []string {
	var probs []string
	for _, s := range e.Contains {
		if !strings.Contains(stderr, s) {
			probs = append(probs, fmt.Sprintf("stderr lacks %q", s))
		}
	}
	for _, m := range e.Matches {
		if !regexp.MustCompile(m).MatchString(stderr) {
			probs = append(probs, fmt.Sprintf("stderr does not match /%s/", m))
		}
	}
	return probs
}

// decodeLoose decodes JSON and maps null, [] and {} to nil, so that an
// absent field and an empty one compare equal (Docker writes either).
func decodeLoose(raw json.RawMessage) (any, error) {
	if len(raw) == 0 {
		return nil, nil
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return nil, err
	}
	return emptyToNil(v), nil
}

func emptyToNil(v any) any {
	switch x := v.(type) {
	case []any:
		if len(x) == 0 {
			return nil
		}
		for i := range x {
			x[i] = emptyToNil(x[i])
		}
	case map[string]any:
		if len(x) == 0 {
			return nil
		}
		for k := range x {
			x[k] = emptyToNil(x[k])
		}
	}
	return v
}

func rawString(raw json.RawMessage) string {
	var s string
	_ = json.Unmarshal(raw, &s)
	return s
}

func compactJSON(raw json.RawMessage) string {
	if len(raw) == 0 {
		return "(absent)"
	}
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return string(raw)
	}
	return compactJSONValue(v)
}

func compactJSONValue(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Sprint(v)
	}
	return string(b)
}

func clip(s string) string {
	if len(s) > 300 {
		return s[:300] + "..."
	}
	return s
}
