package blobstore

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzValidName: every accepted path maps to a file inside the root.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"/", "/a", "/a/b/", "/a/../b", "/../x", "/a//b", "/a\x00", "/./a", "/.well-known/x", "/..a/b..", "/a/.."} {
		f.Add(s)
	}
	const root = "/srv/blobs"
	f.Fuzz(func(t *testing.T, p string) {
		name, _, err := ValidName(p)
		if err != nil {
			return
		}
		full := filepath.Join(root, filepath.FromSlash(name))
		if full != root && !strings.HasPrefix(full, root+"/") {
			t.Fatalf("%q escapes the root: %q", p, full)
		}
		if strings.ContainsRune(name, 0) {
			t.Fatalf("%q accepted with a NUL", p)
		}
		if filepath.Join(root, tmpDirName) == full || strings.HasPrefix(full, filepath.Join(root, tmpDirName)+"/") {
			t.Fatalf("%q reaches the temp dir", p)
		}
		for _, el := range strings.Split(name, "/") {
			if el == ".." || el == "." || (el == "" && name != "") {
				t.Fatalf("%q accepted with element %q", p, el)
			}
		}
	})
}
