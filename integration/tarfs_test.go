package integration

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"fmt"
	"io"
	"sort"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/rbuild/rbuild/internal/testenv"
)

// epoch is the modification time of every entry the harness writes, so
// base images are the same bytes on every run and machine.
var epoch = testenv.Epoch

// tentry is one entry of a tar the harness makes (base image layers,
// archives for ADD, layers for the checker's own tests).
type tentry struct {
	Path    string // relative, no leading slash; a trailing slash is not needed for dirs
	Type    byte   // tar.TypeReg (default), TypeDir, TypeSymlink, TypeLink
	Mode    int64
	UID     int
	GID     int
	Content []byte
	Link    string
}

func dirEntry(p string, mode int64, uid, gid int) tentry {
	return tentry{Path: p, Type: tar.TypeDir, Mode: mode, UID: uid, GID: gid}
}

func fileEntry(p string, mode int64, content string) tentry {
	return tentry{Path: p, Type: tar.TypeReg, Mode: mode, Content: []byte(content)}
}

func symlinkEntry(p, target string) tentry {
	return tentry{Path: p, Type: tar.TypeSymlink, Mode: 0o777, Link: target}
}

// writeTar writes entries in the given order with fixed times.
func writeTar(w io.Writer, entries []tentry) error {
	tw := tar.NewWriter(w)
	for _, e := range entries {
		typ := e.Type
		if typ == 0 {
			typ = tar.TypeReg
		}
		name := strings.TrimPrefix(e.Path, "/")
		if typ == tar.TypeDir && !strings.HasSuffix(name, "/") {
			name += "/"
		}
		mode := e.Mode
		if mode == 0 {
			switch typ {
			case tar.TypeDir:
				mode = 0o755
			case tar.TypeSymlink:
				mode = 0o777
			default:
				mode = 0o644
			}
		}
		hdr := &tar.Header{
			Name:     name,
			Typeflag: typ,
			Mode:     mode,
			Uid:      e.UID,
			Gid:      e.GID,
			ModTime:  epoch,
			Linkname: e.Link,
			Format:   tar.FormatPAX,
		}
		if typ == tar.TypeReg {
			hdr.Size = int64(len(e.Content))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("tar %s: %w", name, err)
		}
		if typ == tar.TypeReg {
			if _, err := tw.Write(e.Content); err != nil {
				return err
			}
		}
	}
	return tw.Close()
}

// tarBytes returns the tar of entries, gzip-compressed when gz is set.
func tarBytes(entries []tentry, gz bool) ([]byte, error) {
	var buf bytes.Buffer
	if !gz {
		err := writeTar(&buf, entries)
		return buf.Bytes(), err
	}
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	if err := writeTar(zw, entries); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// sortEntries orders entries by path so that parents come first.
func sortEntries(entries []tentry) {
	sort.SliceStable(entries, func(i, j int) bool { return entries[i].Path < entries[j].Path })
}

// layerOf makes an image layer of entries with the given media type
// (types.DockerLayer or types.OCILayer).
func layerOf(entries []tentry, mt types.MediaType) (v1.Layer, error) {
	b, err := tarBytes(entries, false)
	if err != nil {
		return nil, err
	}
	return tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(mt))
}
