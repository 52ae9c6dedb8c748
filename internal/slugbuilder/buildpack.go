package slugbuilder

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// buildpack is a buildpack ready to run: a directory with bin/.
type buildpack struct {
	dir  string
	name string // display name from bin/detect
}

// selectBuildpacks picks the buildpacks that build the app: BUILDPACK_URL,
// else the app's .buildpacks file (each runs in turn), else the first
// shipped buildpack whose bin/detect accepts the app.
func (b *build) selectBuildpacks(ctx context.Context) ([]buildpack, error) {
	if u := b.cfg.BuildpackURL; u != "" {
		b.step("Fetching buildpack %s", u)
		p, err := b.fetchBuildpack(ctx, u, 0)
		if err != nil {
			return nil, err
		}
		if p.name, err = b.detect(ctx, p.dir); err != nil {
			return nil, fmt.Errorf("buildpack %s does not accept this app (bin/detect: %w)", u, err)
		}
		return []buildpack{p}, nil
	}
	if data, err := os.ReadFile(filepath.Join(b.cfg.BuildDir, ".buildpacks")); err == nil {
		var packs []buildpack
		for line := range strings.Lines(string(data)) {
			u := strings.TrimSpace(line)
			if u == "" || strings.HasPrefix(u, "#") {
				continue
			}
			b.step("Fetching buildpack %s (from .buildpacks)", u)
			p, err := b.fetchBuildpack(ctx, u, len(packs))
			if err != nil {
				return nil, err
			}
			if p.name, err = b.detect(ctx, p.dir); err != nil {
				p.name = path.Base(strings.TrimSuffix(u, ".git"))
			}
			packs = append(packs, p)
		}
		if len(packs) > 0 {
			return packs, nil
		}
	}
	if err := b.extractShipped(); err != nil {
		return nil, err
	}
	for _, name := range b.cfg.Order {
		dir := filepath.Join(b.packs, name)
		if display, err := b.detect(ctx, dir); err == nil {
			return []buildpack{{dir: dir, name: display}}, nil
		}
	}
	return nil, errors.New("no buildpack accepts this app: add a Procfile, go.mod, package.json, requirements.txt, Gemfile or index.html, or set BUILDPACK_URL")
}

// detect runs bin/detect and returns the display name it prints.
func (b *build) detect(ctx context.Context, dir string) (string, error) {
	cmd := exec.CommandContext(ctx, filepath.Join(dir, "bin", "detect"), b.cfg.BuildDir)
	cmd.Dir = b.cfg.BuildDir
	cmd.Env = b.scriptEnv()
	out, err := cmd.Output()
	if err != nil {
		return "", err
	}
	name := strings.TrimSpace(string(out))
	if name == "" {
		name = filepath.Base(dir)
	}
	if i := strings.IndexByte(name, '\n'); i >= 0 {
		name = name[:i]
	}
	return name, nil
}

// extractShipped writes the shipped buildpacks into the work directory;
// files under bin/ are made executable (embedded files carry no modes).
func (b *build) extractShipped() error {
	return fs.WalkDir(b.cfg.Buildpacks, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		target := filepath.Join(b.packs, filepath.FromSlash(p))
		if d.IsDir() {
			return os.MkdirAll(target, 0o755)
		}
		data, err := fs.ReadFile(b.cfg.Buildpacks, p)
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if path.Base(path.Dir(p)) == "bin" {
			mode = 0o755
		}
		return os.WriteFile(target, data, mode)
	})
}

// fetchBuildpack makes a buildpack given by URL available: a directory is
// used in place, a tar(.gz) path or URL is unpacked, anything else is
// cloned with git (URL#ref picks a branch or tag).
func (b *build) fetchBuildpack(ctx context.Context, u string, n int) (buildpack, error) {
	dst := filepath.Join(b.packs, fmt.Sprintf("custom-%d", n))
	loc, ref, _ := strings.Cut(u, "#")
	if fi, err := os.Stat(loc); err == nil && fi.IsDir() && !isGitDir(loc) {
		return buildpack{dir: loc}, nil
	}
	if isTarball(loc) {
		rc, err := open(ctx, loc)
		if err != nil {
			return buildpack{}, fmt.Errorf("fetch buildpack %s: %w", u, err)
		}
		defer rc.Close()
		if err := os.MkdirAll(dst, 0o755); err != nil {
			return buildpack{}, err
		}
		if err := untar(rc, dst); err != nil {
			return buildpack{}, fmt.Errorf("fetch buildpack %s: %w", u, err)
		}
		return buildpack{dir: packRoot(dst)}, nil
	}
	args := []string{"clone", "--quiet", "--depth", "1"}
	if ref != "" {
		args = append(args, "--branch", ref)
	}
	args = append(args, loc, dst)
	cmd := exec.CommandContext(ctx, "git", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return buildpack{}, fmt.Errorf("fetch buildpack %s: git clone: %w: %s", u, err, strings.TrimSpace(stderr.String()))
	}
	return buildpack{dir: dst}, nil
}

func isTarball(loc string) bool {
	for _, ext := range []string{".tgz", ".tar.gz", ".tar"} {
		if strings.HasSuffix(loc, ext) {
			return true
		}
	}
	return false
}

func isGitDir(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, "HEAD"))
	_, err2 := os.Stat(filepath.Join(dir, "bin"))
	return err == nil && err2 != nil
}

// packRoot returns dir, or its only subdirectory when the tarball wrapped
// the buildpack in one (as GitHub archives do).
func packRoot(dir string) string {
	if _, err := os.Stat(filepath.Join(dir, "bin")); err == nil {
		return dir
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) == 1 && entries[0].IsDir() {
		return filepath.Join(dir, entries[0].Name())
	}
	return dir
}
