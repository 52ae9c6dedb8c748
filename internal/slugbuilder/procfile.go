package slugbuilder

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"

	"github.com/flynnrebuilt/flynn/internal/slug"
)

// parseRelease reads the default_process_types of bin/release's YAML
// output. It understands the subset buildpacks write: a top-level
// "default_process_types:" key holding "{}" or a block of indented
// "<type>: <command>" lines; other keys (addons, config_vars) are ignored.
func parseRelease(out string) (map[string]string, error) {
	types := map[string]string{}
	in := false
	for line := range strings.Lines(out) {
		line = strings.TrimRight(line, "\r\n")
		trimmed := strings.TrimSpace(line)
		if trimmed == "" || strings.HasPrefix(trimmed, "#") || trimmed == "---" {
			continue
		}
		indented := line[0] == ' ' || line[0] == '\t'
		if !indented {
			key, rest, _ := strings.Cut(trimmed, ":")
			in = key == "default_process_types"
			if in {
				if rest = strings.TrimSpace(rest); rest != "" && rest != "{}" && rest != "~" && rest != "null" {
					return nil, fmt.Errorf("bin/release: default_process_types: want a block of \"type: command\" lines, got %q", rest)
				}
			}
			continue
		}
		if !in {
			continue
		}
		typ, cmd, ok := strings.Cut(trimmed, ":")
		if !ok {
			return nil, fmt.Errorf("bin/release: bad line %q", trimmed)
		}
		typ, cmd = strings.TrimSpace(typ), unquote(strings.TrimSpace(cmd))
		if !slug.ValidProcessType(typ) || cmd == "" {
			return nil, fmt.Errorf("bin/release: bad process type line %q", trimmed)
		}
		types[typ] = cmd
	}
	return types, nil
}

func unquote(s string) string {
	if len(s) >= 2 && (s[0] == '"' && s[len(s)-1] == '"' || s[0] == '\'' && s[len(s)-1] == '\'') {
		return s[1 : len(s)-1]
	}
	return s
}

// applySlugignore removes from dir what the patterns in dir/.slugignore
// match, and returns the removed paths (relative, sorted). A pattern with
// a slash matches the path from the app root (a leading slash is
// optional); one without matches a name at any depth; a trailing slash
// matches only directories. Patterns use path.Match syntax.
func applySlugignore(dir string) ([]string, error) {
	data, err := os.ReadFile(filepath.Join(dir, ".slugignore"))
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	type pattern struct {
		glob            string
		anchored, onDir bool
	}
	var pats []pattern
	sc := bufio.NewScanner(strings.NewReader(string(data)))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		p := pattern{}
		if strings.HasSuffix(l, "/") {
			p.onDir = true
			l = strings.TrimRight(l, "/")
		}
		if strings.Contains(l, "/") {
			p.anchored = true
			l = strings.TrimLeft(l, "/")
		}
		if _, err := path.Match(l, ""); err != nil {
			return nil, fmt.Errorf(".slugignore: bad pattern %q", sc.Text())
		}
		p.glob = l
		pats = append(pats, p)
	}
	var removed []string
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		if rel == "." {
			return nil
		}
		rel = filepath.ToSlash(rel)
		for _, pat := range pats {
			if pat.onDir && !d.IsDir() {
				continue
			}
			subject := path.Base(rel)
			if pat.anchored {
				subject = rel
			}
			if ok, _ := path.Match(pat.glob, subject); ok {
				if err := os.RemoveAll(p); err != nil {
					return err
				}
				removed = append(removed, rel)
				if d.IsDir() {
					return fs.SkipDir
				}
				return nil
			}
		}
		return nil
	})
	return removed, err
}
