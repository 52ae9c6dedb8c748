package backup

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
)

type memSource struct {
	st    *State
	blobs map[string]string
}

func (m memSource) State(context.Context) (*State, error) { return m.st, nil }
func (m memSource) Blobs(context.Context) ([]Blob, error) {
	var out []Blob
	for _, p := range []string{"/slugs/a/1.tgz", "/repos/a.tar", "/gone"} {
		out = append(out, Blob{Path: p, Size: int64(len(m.blobs[p]))})
	}
	return out, nil
}
func (m memSource) OpenBlob(_ context.Context, p string) (io.ReadCloser, int64, error) {
	b, ok := m.blobs[p]
	if !ok {
		return nil, 0, api.ErrNotFound // deleted after the listing
	}
	return io.NopCloser(strings.NewReader(b)), int64(len(b)), nil
}

func sampleState() *State {
	return &State{
		Apps: []*AppState{{
			App:        &api.App{ID: "app1", Name: "a", ReleaseID: "rel1"},
			Artifacts:  []*api.Artifact{{ID: "art1", Type: api.ArtifactTypeFlynn, URI: "http://10.0.0.1:5380/slugs/a/1.tgz"}},
			Releases:   []*api.Release{{ID: "rel1", AppID: "app1", ArtifactIDs: []string{"art1"}, Env: map[string]string{"K": "v"}}},
			Formations: []*api.Formation{{AppID: "app1", ReleaseID: "rel1", Processes: map[string]int{"web": 2}}},
			Routes:     []*api.Route{{Type: "http", Domain: "a.example.com", Service: "a-web"}},
		}},
		Keys: []*api.Key{{ID: "k", Key: "ssh-ed25519 AAAA"}},
	}
}

func write(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	src := memSource{st: sampleState(), blobs: map[string]string{"/slugs/a/1.tgz": "slug bytes", "/repos/a.tar": "repo"}}
	if err := Write(context.Background(), &buf, src, Meta{Domain: "example.com", BlobURL: "http://10.0.0.1:5380"}); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestWriteRead(t *testing.T) {
	b := write(t)
	got := map[string]string{}
	c, err := Read(bytes.NewReader(b), func(bl Blob, r io.Reader) error {
		data, err := io.ReadAll(r)
		got[bl.Path] = string(data)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"/slugs/a/1.tgz": "slug bytes", "/repos/a.tar": "repo"}, got); diff != "" {
		t.Errorf("blobs (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(sampleState(), &c.State); diff != "" {
		t.Errorf("state (-want +got):\n%s", diff)
	}
	if c.Meta.Format != Format || c.Meta.Domain != "example.com" || c.Meta.CreatedAt.IsZero() {
		t.Errorf("meta %+v", c.Meta)
	}
}

// TestReadRefuses: every way a file can be other than a whole backup is an
// ErrBadBackup with a reason, whatever the cut.
func TestReadRefuses(t *testing.T) {
	b := write(t)
	// Every cut before end.json's contents are whole (the tar's padding
	// and end marker after them do not matter).
	endAt := bytes.Index(b, []byte(endFile+"\x00")) + 512 + len(`{"blobs":2,`)
	for cut := 0; cut < endAt; cut += 37 {
		if _, err := Read(bytes.NewReader(b[:cut]), nil); !errors.Is(err, ErrBadBackup) {
			t.Fatalf("cut at %d of %d: err = %v, want a bad backup", cut, len(b), err)
		}
	}
	// Cut exactly at an entry boundary (a tar reader sees a clean end):
	// still refused, end.json is missing.
	var entries bytes.Buffer
	tw := tar.NewWriter(&entries)
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		h, err := tr.Next()
		if err != nil || h.Name == endFile {
			break
		}
		tw.WriteHeader(h)
		io.Copy(tw, tr)
	}
	tw.Close()
	if _, err := Read(bytes.NewReader(entries.Bytes()), nil); !errors.Is(err, ErrBadBackup) || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("without end.json: %v", err)
	}
	bad := func(name string, st *State) {
		t.Helper()
		var buf bytes.Buffer
		if err := Write(context.Background(), &buf, memSource{st: st, blobs: map[string]string{}}, Meta{}); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(&buf, nil); !errors.Is(err, ErrBadBackup) {
			t.Errorf("%s: err = %v, want a bad backup", name, err)
		}
	}
	st := sampleState()
	st.Apps[0].Releases[0].ArtifactIDs = []string{"missing"}
	bad("a release naming a missing artifact", st)
	st = sampleState()
	st.Apps[0].App.ReleaseID = "other"
	bad("a current release not in the backup", st)
	st = sampleState()
	st.Apps = append(st.Apps, sampleState().Apps[0])
	bad("an app twice", st)
	if _, err := Read(strings.NewReader("hello"), nil); !errors.Is(err, ErrBadBackup) {
		t.Errorf("text: %v", err)
	}
}

func TestRewriteArtifact(t *testing.T) {
	art := &api.Artifact{URI: "http://10.0.0.1:5380/slugs/x.tgz", Manifest: &api.ImageManifest{Rootfs: []*api.ImageRootfs{{Layers: []*api.ImageLayer{
		{URL: "http://10.0.0.1:5380/layers/1.tar"}, {URL: "https://registry.example.com/l"},
	}}}}}
	got := rewriteArtifact(art, "http://10.0.0.1:5380", "http://10.9.9.9:6000/")
	if got.URI != "http://10.9.9.9:6000/slugs/x.tgz" || got.Manifest.Rootfs[0].Layers[0].URL != "http://10.9.9.9:6000/layers/1.tar" ||
		got.Manifest.Rootfs[0].Layers[1].URL != "https://registry.example.com/l" {
		t.Errorf("rewritten: %s %s %s", got.URI, got.Manifest.Rootfs[0].Layers[0].URL, got.Manifest.Rootfs[0].Layers[1].URL)
	}
	if art.URI != "http://10.0.0.1:5380/slugs/x.tgz" || art.Manifest.Rootfs[0].Layers[0].URL != "http://10.0.0.1:5380/layers/1.tar" {
		t.Error("the original artifact changed")
	}
}
