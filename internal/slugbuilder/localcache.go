package slugbuilder

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/flynnrebuilt/flynn/internal/image"
)

// A build cache volume (Config.CacheVolume) is a directory kept across the
// builds of one app on one host, so a warm build need not download and
// unpack the cache blob. It holds:
//
//	cache/       CACHE_DIR, the cache unpacked
//	cache.blob   the cache blob cache/ was restored from or saved to
//	cache.json   the marker: that blob's sha256 (the blobstore's ETag),
//	             where its members lie and the fingerprints of cache/
//	             that match it
//
// A build trusts cache/ only when the marker names the blob the cache URL
// holds now (a HEAD's ETag): a build of the app on another host, or one
// that saved while this host's copy was not used, changes the blob and so
// makes this copy stale, and the build restores the blob as it would
// without a volume. The marker is removed before anything may change
// cache/ and written only after the new blob was stored, so a build killed
// at any moment leaves a volume the next build restores rather than
// trusts; but a build that saves last (Config.SaveCacheLast), once its
// buildpacks are done, marks cache/ unsaved (volumeMarker.Unsaved) before
// it stores it, so that the next build, which stops that save, goes on
// from cache/ and stores it itself. That marker alone is written without
// a sync, and is trusted in the boot that wrote it only.
const (
	volCache  = "cache"
	volBlob   = "cache.blob"
	volMarker = "cache.json"
)

// volumeMarker is the content of cache.json.
type volumeMarker struct {
	SHA256  string            `json:"sha256"`
	Members []markerMember    `json:"members"`
	Prints  map[string]string `json:"prints"`
	// Unsaved marks a cache/ that a build finished with but whose save
	// may not have ended (Config.SaveCacheLast: written before the save,
	// replaced after it): cache/ is then newer than the blob, and is
	// trusted while the blob it started from is still at the cache URL,
	// SHA256 with its Members and Prints, or none (NoBlob). A build that
	// trusts it saves every chunk that differs from that blob.
	Unsaved bool `json:"unsaved,omitempty"`
	NoBlob  bool `json:"no_blob,omitempty"`
	// Left is the fingerprints of cache/ as the unsaved build left it.
	Left map[string]string `json:"left,omitempty"`
	// Boot is the boot an Unsaved marker was written in (the kernel's
	// boot_id). Such a marker is written without waiting for cache/ to
	// reach the disk, so it is trusted in that boot only: after a power
	// loss cache/ may lack what it vouches for. Empty: written after a
	// sync, as every marker that is not Unsaved.
	Boot string `json:"boot,omitempty"`
}

type markerMember struct {
	Name  string `json:"name"`
	Start int64  `json:"start"`
	End   int64  `json:"end"`
	Zstd  bool   `json:"zstd"`
}

func toMarkerMembers(ms []cacheMember) []markerMember {
	out := make([]markerMember, 0, len(ms))
	for _, m := range ms {
		out = append(out, markerMember{Name: m.name, Start: m.start, End: m.end, Zstd: m.zstd})
	}
	return out
}

func fromMarkerMembers(ms []markerMember) []cacheMember {
	out := make([]cacheMember, 0, len(ms))
	for _, m := range ms {
		out = append(out, cacheMember{name: m.Name, start: m.Start, end: m.End, zstd: m.Zstd})
	}
	return out
}

func (b *build) volPath(name string) string { return filepath.Join(b.cfg.CacheVolume, name) }

// readMarker returns the volume's marker, or nil when there is none or it
// is not one this slugbuilder wrote.
func (b *build) readMarker() *volumeMarker {
	data, err := os.ReadFile(b.volPath(volMarker))
	if err != nil {
		return nil
	}
	var m volumeMarker
	if err := json.Unmarshal(data, &m); err != nil || m.Prints == nil {
		return nil
	}
	if m.NoBlob {
		if !m.Unsaved || m.SHA256 != "" || len(m.Members) > 0 {
			return nil
		}
	} else if validSHA(m.SHA256) != nil {
		return nil
	}
	if m.Boot != "" && (!m.Unsaved || m.Boot != bootID()) {
		return nil
	}
	return &m
}

// bootID is the kernel's ID of this boot, or "" when it cannot be read.
func bootID() string {
	data, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(data))
}

// markUnsaved writes an Unsaved marker for cache/ as the build left it
// (fingerprints left),
// when the cache it started from is known: the blob it restored or
// reused (kept in the volume), or no blob at all. Then a build that
// comes before this one's save ended reuses cache/ (see reuseVolume).
// Not writing it (an error is only logged) leaves the volume to be
// restored.
func (b *build) markUnsaved(left map[string]string) {
	st := b.cacheState
	m := &volumeMarker{Unsaved: true, Prints: map[string]string{}, Left: left}
	switch {
	case st.restored && st.local && st.sha256 != "":
		m.SHA256, m.Members, m.Prints = st.sha256, toMarkerMembers(st.members), st.prints
	case st.noBlob:
		m.NoBlob = true
	default:
		return
	}
	// Without a sync: after a cold Go build the volume holds 200 MB the
	// disk has yet to get, and syncing them held the build's result
	// back by 0.4 s (done after the result instead, it held the
	// release's etcd fsync back as long). The marker is trusted in this
	// boot only, in which cache/ reads as the build left it whatever
	// reached the disk.
	if m.Boot = bootID(); m.Boot == "" {
		err := b.writeMarker(m)
		if err != nil {
			b.log.Warn("mark the build cache volume unsaved", "err", err)
		}
		return
	}
	data, err := json.Marshal(m)
	if err == nil {
		tmp := b.volPath(volMarker + ".tmp")
		if err = os.WriteFile(tmp, data, 0o600); err == nil {
			err = os.Rename(tmp, b.volPath(volMarker))
		}
	}
	if err != nil {
		b.log.Warn("mark the build cache volume unsaved", "err", err)
	}
}

// writeMarker records that cache/ and cache.blob are the blob m names.
// What they hold reaches the disk first (syncfs), and the marker after
// it: after a power loss the marker never vouches for files whose data
// was still in the page cache.
func (b *build) writeMarker(m *volumeMarker) error {
	data, err := json.Marshal(m)
	if err != nil {
		return err
	}
	if err := syncFS(b.cfg.CacheVolume); err != nil {
		return fmt.Errorf("write the build cache marker: %w", err)
	}
	tmp := b.volPath(volMarker + ".tmp")
	if err := writeFileSync(tmp, data, 0o600); err != nil {
		return fmt.Errorf("write the build cache marker: %w", err)
	}
	if err := os.Rename(tmp, b.volPath(volMarker)); err != nil {
		return fmt.Errorf("write the build cache marker: %w", err)
	}
	if err := syncDir(b.cfg.CacheVolume); err != nil {
		return fmt.Errorf("write the build cache marker: %w", err)
	}
	return nil
}

// syncFS writes the dirty data of the filesystem holding dir to disk.
func syncFS(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return unix.Syncfs(int(f.Fd()))
}

// syncDir makes the entries of dir durable (a rename into it).
func syncDir(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}

// writeFileSync is os.WriteFile with the data on disk before it returns.
func writeFileSync(name string, data []byte, perm os.FileMode) error {
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, perm)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if serr := f.Sync(); err == nil {
		err = serr
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// dropMarker removes the marker: from now on cache/ may change.
func (b *build) dropMarker() error {
	if err := os.Remove(b.volPath(volMarker)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove the build cache marker: %w", err)
	}
	return nil
}

// emptyVolume removes the marker, the kept blob and everything in cache/.
func (b *build) emptyVolume() error {
	if err := b.dropMarker(); err != nil {
		return err
	}
	for _, name := range []string{volBlob, volBlob + ".tmp"} {
		if err := os.Remove(b.volPath(name)); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("empty the build cache volume: %w", err)
		}
	}
	entries, err := os.ReadDir(b.cache)
	if err != nil {
		return fmt.Errorf("empty the build cache volume: %w", err)
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(b.cache, e.Name())); err != nil {
			return fmt.Errorf("empty the build cache volume: %w", err)
		}
	}
	return nil
}

// reuseVolume decides whether the volume's copy of the cache is the blob
// at CacheIn. If so it takes the cache state from the marker and returns
// true; otherwise it empties the volume for a restore. Either way the
// marker is gone when it returns.
func (b *build) reuseVolume(ctx context.Context) (bool, error) {
	m := b.readMarker()
	if err := b.dropMarker(); err != nil {
		return false, err
	}
	if m != nil {
		ver, err := blobVersion(ctx, b.cfg.CacheIn)
		_, berr := os.Stat(b.volPath(volBlob))
		if m.NoBlob && errors.Is(err, os.ErrNotExist) {
			// The last build's save did not end, and no build saved
			// since: cache/ is all there is, none of it stored.
			b.step("Build cache: reused the local copy")
			b.cacheState = cacheState{noBlob: true, left: m.Left}
			return true, nil
		}
		if err == nil && ver == m.SHA256 && berr == nil {
			b.step("Build cache: reused the local copy")
			b.cacheState = cacheState{restored: true, members: fromMarkerMembers(m.Members), prints: m.Prints, local: true, sha256: m.SHA256}
			if m.Unsaved {
				b.cacheState.left = m.Left
			}
			return true, nil
		}
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			b.log.Warn("build cache version", "err", err)
		}
	}
	return false, b.emptyVolume()
}

// blobVersion returns the sha256 of the blob at loc: a URL's ETag (""
// when the server gives none, or a weak one), a file's hash.
func blobVersion(ctx context.Context, loc string) (string, error) {
	if !isURL(loc) {
		return image.FileDigest(loc)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, loc, nil)
	if err != nil {
		return "", err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	res.Body.Close()
	switch {
	case res.StatusCode == http.StatusNotFound:
		return "", fmt.Errorf("HEAD %s: %w", redactURL(loc), os.ErrNotExist)
	case res.StatusCode != http.StatusOK:
		return "", fmt.Errorf("HEAD %s: %s", redactURL(loc), res.Status)
	}
	return etagSHA(res.Header.Get("ETag")), nil
}

// etagSHA returns the sha256 a strong ETag names, or "".
func etagSHA(etag string) string {
	s, ok := strings.CutPrefix(etag, `"`)
	if !ok {
		return ""
	}
	s, ok = strings.CutSuffix(s, `"`)
	if !ok || validSHA(s) != nil {
		return ""
	}
	return s
}

func validSHA(s string) error {
	if len(s) != 64 {
		return errors.New("not a sha256")
	}
	if _, err := hex.DecodeString(s); err != nil || strings.ToLower(s) != s {
		return errors.New("not a sha256")
	}
	return nil
}

// redactURL drops the query (a signature) from a URL for messages.
func redactURL(loc string) string {
	s, _, _ := strings.Cut(loc, "?")
	return s
}
