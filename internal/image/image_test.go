package image

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"
)

type entry struct {
	name, link, body string
	typ              byte
	mode             int64
}

func mkTar(t *testing.T, ents ...entry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Linkname: e.link, Typeflag: e.typ, Mode: e.mode, Size: int64(len(e.body))}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if e.typ != tar.TypeReg {
			h.Size = 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if e.typ == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	tw.Close()
	return buf.Bytes()
}

func digestOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

func TestUntarRefusesEscapes(t *testing.T) {
	tests := []struct {
		name string
		ents []entry
	}{
		{"dotdot", []entry{{name: "../evil", typ: tar.TypeReg, body: "x"}}},
		{"nested dotdot", []entry{{name: "a/../../evil", typ: tar.TypeReg, body: "x"}}},
		{"absolute", []entry{{name: "/etc/evil", typ: tar.TypeReg, body: "x"}}},
		{"through symlink", []entry{{name: "l", typ: tar.TypeSymlink, link: "/tmp"}, {name: "l/evil", typ: tar.TypeReg, body: "x"}}},
		{"through relative symlink", []entry{{name: "l", typ: tar.TypeSymlink, link: "../.."}, {name: "l/evil", typ: tar.TypeReg, body: "x"}}},
		{"hardlink out", []entry{{name: "h", typ: tar.TypeLink, link: "../../etc/passwd"}}},
		{"hardlink absolute", []entry{{name: "h", typ: tar.TypeLink, link: "/etc/passwd"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			parent := t.TempDir()
			s, err := NewStore(filepath.Join(parent, "store"))
			if err != nil {
				t.Fatal(err)
			}
			b := mkTar(t, tt.ents...)
			_, err = s.Import(context.Background(), digestOf(b), bytes.NewReader(b))
			if !errors.Is(err, ErrUnsafeLayer) {
				t.Fatalf("err = %v, want ErrUnsafeLayer", err)
			}
			if _, err := os.Lstat(filepath.Join(parent, "evil")); err == nil {
				t.Fatal("file written outside the layer")
			}
			if s.Has(digestOf(b)) {
				t.Fatal("refused layer is in the store")
			}
			left, _ := os.ReadDir(filepath.Join(parent, "store", "tmp"))
			if len(left) != 0 {
				t.Fatalf("temp dirs left: %v", left)
			}
		})
	}
}

func TestUntarLayer(t *testing.T) {
	b := mkTar(t,
		entry{name: "d/", typ: tar.TypeDir, mode: 0o750},
		entry{name: "d/f", typ: tar.TypeReg, body: "hello", mode: 0o4755},
		entry{name: "d/h", typ: tar.TypeLink, link: "d/f"},
		entry{name: "d/s", typ: tar.TypeSymlink, link: "/etc/passwd"},
		entry{name: "d/.wh.gone", typ: tar.TypeReg},
		entry{name: "o/.wh..wh..opq", typ: tar.TypeReg},
	)
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir, err := s.Import(context.Background(), digestOf(b), bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(dir, "d/h"))
	if string(got) != "hello" {
		t.Errorf("hard link content %q", got)
	}
	var a, c unix.Stat_t
	unix.Stat(filepath.Join(dir, "d/f"), &a)
	unix.Stat(filepath.Join(dir, "d/h"), &c)
	if a.Ino != c.Ino {
		t.Error("hard link is not the same inode")
	}
	if a.Mode&0o7777 != 0o4755 {
		t.Errorf("mode %o, want 4755", a.Mode&0o7777)
	}
	if l, _ := os.Readlink(filepath.Join(dir, "d/s")); l != "/etc/passwd" {
		t.Errorf("symlink -> %q", l)
	}
	var w unix.Stat_t
	if err := unix.Lstat(filepath.Join(dir, "d/gone"), &w); err != nil || w.Mode&unix.S_IFMT != unix.S_IFCHR || w.Rdev != 0 {
		t.Errorf("whiteout not a 0/0 char device: %v %o", err, w.Mode)
	}
	buf := make([]byte, 4)
	n, err := unix.Getxattr(filepath.Join(dir, "o"), "trusted.overlay.opaque", buf)
	if err != nil || string(buf[:n]) != "y" {
		t.Errorf("opaque xattr: %v %q", err, buf[:n])
	}
}

func TestImportDigestMismatch(t *testing.T) {
	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	b := mkTar(t, entry{name: "f", typ: tar.TypeReg, body: "x"})
	wrong := strings.Repeat("0", 64)
	if _, err := s.Import(context.Background(), wrong, bytes.NewReader(b)); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("err = %v, want digest mismatch", err)
	}
	if s.Has(wrong) {
		t.Fatal("mismatched layer stored")
	}
}

func TestBusyboxLayerAndPull(t *testing.T) {
	if _, err := os.Stat(DefaultBusybox); err != nil {
		t.Skip("no busybox-static")
	}
	var buf bytes.Buffer
	if err := WriteBusyboxLayer(&buf, DefaultBusybox); err != nil {
		t.Fatal(err)
	}
	layerFile := filepath.Join(t.TempDir(), "busybox.tar.gz")
	os.WriteFile(layerFile, buf.Bytes(), 0o644)

	s, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	digest, dir, err := s.ImportFile(context.Background(), layerFile, "")
	if err != nil {
		t.Fatal(err)
	}
	if digest != digestOf(buf.Bytes()) {
		t.Fatalf("digest %s", digest)
	}
	if l, err := os.Readlink(filepath.Join(dir, "bin/sh")); err != nil || l != "busybox" {
		t.Fatalf("bin/sh -> %q %v", l, err)
	}

	// Push the same layer as an OCI image to an in-process registry and
	// pull it through the store.
	srv := httptest.NewServer(registry.New())
	defer srv.Close()
	layer, err := tarball.LayerFromFile(layerFile)
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := img.ConfigFile()
	cf.Config.Cmd = []string{"/bin/sh"}
	cf.Config.Env = []string{"A=b"}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		t.Fatal(err)
	}
	ref := strings.TrimPrefix(srv.URL, "http://") + "/test/busybox:latest"
	r, _ := name.ParseReference(ref)
	if err := remote.Write(r, img); err != nil {
		t.Fatal(err)
	}
	s2, err := NewStore(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	pulled, err := s2.Pull(context.Background(), ref)
	if err != nil {
		t.Fatal(err)
	}
	want := &Image{Ref: ref, Layers: []string{digest}, Cmd: []string{"/bin/sh"}, Env: []string{"A=b"}}
	if diff := cmp.Diff(want, pulled); diff != "" {
		t.Fatalf("pulled (-want +got):\n%s", diff)
	}
	if !s2.Has(digest) {
		t.Fatal("pulled layer not in the store")
	}
}
