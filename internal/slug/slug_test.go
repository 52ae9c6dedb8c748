package slug

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestParseProcfile(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]string
		wantErr string
	}{
		{"basic", "web: ./server\nworker: bin/work --fast\n", map[string]string{"web": "./server", "worker": "bin/work --fast"}, ""},
		{"comments and blanks", "# hi\n\nweb:   node server.js  \n", map[string]string{"web": "node server.js"}, ""},
		{"colon in command", "web: env A=b:c ./x", map[string]string{"web": "env A=b:c ./x"}, ""},
		{"empty", "", map[string]string{}, ""},
		{"no colon", "web ./server", nil, "line 1"},
		{"bad type", "we b: x", nil, "process type"},
		{"no command", "web:", nil, "no command"},
		{"duplicate", "web: a\nweb: b", nil, "twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseProcfile(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestCommand(t *testing.T) {
	dir := t.TempDir()
	if _, err := Command(dir, "web"); err == nil || !strings.Contains(err.Error(), "no Procfile") {
		t.Errorf("no Procfile: err = %v", err)
	}
	os.WriteFile(filepath.Join(dir, "Procfile"), []byte(FormatProcfile(map[string]string{"worker": "./w", "web": "./server -p $PORT"})), 0o644)
	if cmd, err := Command(dir, "web"); err != nil || cmd != "./server -p $PORT" {
		t.Errorf("web = %q, %v", cmd, err)
	}
	if _, err := Command(dir, "clock"); err == nil || !strings.Contains(err.Error(), "it has: web, worker") {
		t.Errorf("unknown type: err = %v", err)
	}
	os.WriteFile(filepath.Join(dir, "Procfile"), []byte("web ./server\n"), 0o644)
	if _, err := Command(dir, "web"); err == nil || !strings.Contains(err.Error(), "line 1") {
		t.Errorf("bad Procfile: err = %v", err)
	}
}

func tgz(hdrs ...*tar.Header) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	tw := tar.NewWriter(zw)
	for _, h := range hdrs {
		h.Size = 0
		if h.Typeflag == tar.TypeReg {
			h.Size = 2
		}
		tw.WriteHeader(h)
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte("hi"))
		}
	}
	tw.Close()
	zw.Close()
	return buf.Bytes()
}

// layerEntry is what a test checks of a layer's entry.
type layerEntry struct {
	Name, Link string
	Uid        int
	Mode       int64
}

func layerEntries(t *testing.T, data []byte) []layerEntry {
	t.Helper()
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	var got []layerEntry
	for tr := tar.NewReader(zr); ; {
		h, err := tr.Next()
		if err == io.EOF {
			return got
		}
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, layerEntry{h.Name, h.Linkname, h.Uid, h.Mode})
	}
}

// TestSlugLayer checks which slugs serve as the app's layer as they are
// (the slugbuilder's: everything under app/, owned by the app user) and
// what Rewrite makes of the others: a slug with names relative to the
// app directory (older slugbuilders) and slugs a build tampered with.
func TestSlugLayer(t *testing.T) {
	app := UID
	hdr := func(typ byte, name string, mode int64) *tar.Header {
		return &tar.Header{Typeflag: typ, Name: name, Mode: mode, Uid: app, Gid: GID}
	}
	link := func(typ byte, name, target string) *tar.Header {
		h := hdr(typ, name, 0o777)
		h.Linkname = target
		return h
	}
	root := func(h *tar.Header) *tar.Header { h.Uid, h.Gid = 0, 0; return h }
	tests := []struct {
		name   string
		slug   []*tar.Header
		asIs   bool
		rooted []layerEntry // Rewrite's output
	}{
		{
			name: "slugbuilder's",
			slug: []*tar.Header{hdr(tar.TypeDir, "./app/", 0o755), hdr(tar.TypeDir, "./app/bin/", 0o755), hdr(tar.TypeReg, "./app/bin/server", 0o755),
				link(tar.TypeLink, "./app/bin/server2", "./app/bin/server"), link(tar.TypeSymlink, "./app/cur", "/etc")},
			asIs: true,
			rooted: []layerEntry{{"app/", "", app, 0o755}, {"app/bin/", "", app, 0o755}, {"app/bin/server", "", app, 0o755},
				{"app/bin/server2", "app/bin/server", app, 0o777}, {"app/cur", "/etc", app, 0o777}},
		},
		{
			name: "relative to the app dir",
			slug: []*tar.Header{root(hdr(tar.TypeDir, "./", 0o755)), root(hdr(tar.TypeDir, "./bin/", 0o755)), root(hdr(tar.TypeReg, "./bin/server", 0o755)),
				link(tar.TypeLink, "./bin/server2", "./bin/server"), link(tar.TypeSymlink, "./cur", "bin")},
			rooted: []layerEntry{{"app/", "", app, 0o755}, {"app/bin/", "", app, 0o755}, {"app/bin/server", "", app, 0o755},
				{"app/bin/server2", "app/bin/server", app, 0o777}, {"app/cur", "bin", app, 0o777}},
		},
		{
			name:   "relative, no root entry",
			slug:   []*tar.Header{hdr(tar.TypeReg, "Procfile", 0o644)},
			rooted: []layerEntry{{"app/", "", app, 0o755}, {"app/Procfile", "", app, 0o644}},
		},
		{
			name:   "root-owned file",
			slug:   []*tar.Header{hdr(tar.TypeDir, "./app/", 0o755), root(hdr(tar.TypeReg, "./app/f", 0o644))},
			rooted: []layerEntry{{"app/", "", app, 0o755}, {"app/f", "", app, 0o644}},
		},
		{
			name:   "setuid file",
			slug:   []*tar.Header{hdr(tar.TypeDir, "./app/", 0o755), hdr(tar.TypeReg, "./app/su", 0o2755)},
			rooted: []layerEntry{{"app/", "", app, 0o755}, {"app/su", "", app, 0o755}},
		},
		{
			name:   "root-owned setuid file",
			slug:   []*tar.Header{hdr(tar.TypeDir, "./app/", 0o755), root(hdr(tar.TypeReg, "./app/su", 0o4755))},
			rooted: []layerEntry{{"app/", "", app, 0o755}, {"app/su", "", app, 0o755}},
		},
		{
			name: "entries outside app/",
			slug: []*tar.Header{hdr(tar.TypeDir, "./app/", 0o755), hdr(tar.TypeReg, "./etc/passwd", 0o644),
				link(tar.TypeLink, "./app/shadow", "etc/shadow"), hdr(tar.TypeReg, "./app/ok", 0o600)},
			rooted: []layerEntry{{"app/", "", app, 0o755}, {"app/ok", "", app, 0o600}},
		},
		{
			name:   "device",
			slug:   []*tar.Header{hdr(tar.TypeDir, "./app/", 0o755), hdr(tar.TypeChar, "./app/mem", 0o666)},
			rooted: []layerEntry{{"app/", "", app, 0o755}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			slug := tgz(tt.slug...)
			asIs, err := Check(bytes.NewReader(slug))
			if err != nil || asIs != tt.asIs {
				t.Errorf("Check = %v, %v; want %v", asIs, err, tt.asIs)
			}
			var out bytes.Buffer
			if err := Rewrite(&out, bytes.NewReader(slug)); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tt.rooted, layerEntries(t, out.Bytes())); diff != "" {
				t.Errorf("Rewrite (-want +got):\n%s", diff)
			}
			if ok, err := Check(bytes.NewReader(out.Bytes())); !ok || err != nil {
				t.Errorf("Rewrite's layer is not a safe app layer (%v)", err)
			}
		})
	}

	if err := Rewrite(io.Discard, bytes.NewReader(tgz(hdr(tar.TypeReg, "../escape", 0o644)))); err == nil {
		t.Error("a slug entry outside the app dir was accepted")
	}
	if _, err := Check(bytes.NewReader([]byte("not gzip"))); err == nil {
		t.Error("Check accepted a damaged slug")
	}
}
