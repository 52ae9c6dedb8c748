package slug

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"path"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
)

// Check reads a slug (a gzipped tar) to its end and says whether it is a
// safe app layer as it is: every entry is app/ or under it, owned by
// UID:GID, a file, directory or link without setuid or setgid bits, and
// hard links point under app/. A build runs the app's code and can write
// anything as its slug, so a slug is checked before it becomes a layer;
// one that is not safe is made safe with Rewrite. The error is for a
// stream that is not a gzipped tar at all.
func Check(r io.Reader) (bool, error) {
	zr, err := gzip.NewReader(r)
	if err != nil {
		return false, err
	}
	tr := tar.NewReader(zr)
	ok := true
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return false, err
		}
		if ok && !safeEntry(hdr) {
			ok = false
		}
	}
	// Read to the end so the gzip checksum is verified.
	if _, err := io.Copy(io.Discard, zr); err != nil {
		return false, err
	}
	return ok, nil
}

func safeEntry(hdr *tar.Header) bool {
	if !underApp(hdr.Name) || hdr.Uid != UID || hdr.Gid != GID || hdr.Mode&0o6000 != 0 {
		return false
	}
	switch hdr.Typeflag {
	case tar.TypeReg, tar.TypeDir, tar.TypeSymlink:
		return true
	case tar.TypeLink:
		return underApp(hdr.Linkname)
	}
	return false
}

// underApp says whether a layer entry name is app/ or under it.
func underApp(name string) bool {
	n := path.Clean(strings.TrimPrefix(name, "./"))
	return n == "app" || strings.HasPrefix(n, "app/")
}

// Rewrite writes a slug (a gzipped tar) as a safe app layer: a gzipped
// tar whose names are under app/, owned by UID:GID, without setuid or
// setgid bits, devices or other special files. A slug whose first entry
// is app/ (or under it) has its names under app/ already and keeps them,
// and entries outside app/ are dropped; otherwise names are relative to
// the app directory (older slugbuilders wrote them so) and get app/ put
// in front. An entry that leaves the slug (.., absolute) is an error.
func Rewrite(w io.Writer, slug io.Reader) error {
	zr, err := gzip.NewReader(slug)
	if err != nil {
		return err
	}
	tr := tar.NewReader(zr)
	zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	sawRoot, first, rooted := false, true, false
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		name := path.Clean(strings.TrimPrefix(hdr.Name, "./"))
		if path.IsAbs(name) || name == ".." || strings.HasPrefix(name, "../") {
			return fmt.Errorf("slug entry %q leaves the app directory", hdr.Name)
		}
		if first {
			rooted, first = underApp(name), false
		}
		switch {
		case rooted && !underApp(name):
			continue
		case rooted:
		case name == ".":
			name = "app"
		default:
			name = "app/" + name
		}
		switch hdr.Typeflag {
		case tar.TypeReg, tar.TypeDir, tar.TypeSymlink:
		case tar.TypeLink:
			link := path.Clean(strings.TrimPrefix(hdr.Linkname, "./"))
			if path.IsAbs(link) || link == ".." || strings.HasPrefix(link, "../") {
				return fmt.Errorf("slug hard link %q leaves the app directory", hdr.Name)
			}
			if !rooted {
				link = "app/" + link
			}
			if !underApp(link) {
				continue
			}
			hdr.Linkname = link
		default:
			continue
		}
		if name == "app" {
			sawRoot = true
		} else if !sawRoot {
			if err := tw.WriteHeader(appDirHeader()); err != nil {
				return err
			}
			sawRoot = true
		}
		hdr.Name = name
		if hdr.Typeflag == tar.TypeDir {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = UID, GID, "", ""
		hdr.Mode &^= 0o6000
		hdr.PAXRecords, hdr.Format = nil, tar.FormatUnknown
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if _, err := io.Copy(tw, tr); err != nil {
			return err
		}
	}
	if !sawRoot {
		if err := tw.WriteHeader(appDirHeader()); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return err
	}
	return zw.Close()
}

func appDirHeader() *tar.Header {
	return &tar.Header{Typeflag: tar.TypeDir, Name: "app/", Mode: 0o755, Uid: UID, Gid: GID, ModTime: time.Unix(0, 0)}
}
