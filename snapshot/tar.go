package snapshot

import (
	"archive/tar"
	"context"
	"fmt"
	"io"
	"time"
)

// normalize copies a layer tar from the store's differ to w, rewriting each
// header the way rbuild's layers are written: no access or change times,
// PAX records only where the values need them (the differ already skips
// sockets, which an image cannot carry). It returns the number of entries written.
func normalize(ctx context.Context, r io.Reader, w io.Writer) (int, error) {
	tr := tar.NewReader(r)
	tw := tar.NewWriter(w)
	n := 0
	for {
		if err := ctx.Err(); err != nil {
			return n, err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return n, fmt.Errorf("reading diff: %w", err)
		}
		out := &tar.Header{
			Typeflag: hdr.Typeflag,
			Name:     hdr.Name,
			Linkname: hdr.Linkname,
			Size:     hdr.Size,
			Mode:     hdr.Mode,
			Uid:      hdr.Uid,
			Gid:      hdr.Gid,
			ModTime:  hdr.ModTime.Truncate(time.Second),
			Devmajor: hdr.Devmajor,
			Devminor: hdr.Devminor,
			Format:   tar.FormatUnknown,
		}
		if len(hdr.PAXRecords) > 0 {
			// Keep xattrs (security.capability among them); drop the
			// time records the differ may add.
			for k, v := range hdr.PAXRecords {
				if len(k) > 13 && k[:13] == "SCHILY.xattr." {
					if out.PAXRecords == nil {
						out.PAXRecords = map[string]string{}
					}
					out.PAXRecords[k] = v
				}
			}
		}
		if err := tw.WriteHeader(out); err != nil {
			return n, err
		}
		if hdr.Typeflag == tar.TypeReg {
			if _, err := io.Copy(tw, tr); err != nil {
				return n, err
			}
		}
		n++
	}
	if err := tw.Close(); err != nil {
		return n, err
	}
	return n, nil
}
