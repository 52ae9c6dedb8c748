// Package slug owns the slug format: what slugbuilder writes, what
// gitreceive checks (and rewrites) before the slug becomes an image
// layer, and what slugrunner runs.
//
// A slug is a gzipped tar of the built app directory as Heroku's slug
// format has it: every entry is under ./app/ (Prefix), owned by the stack's
// unprivileged app user (UID, GID), with no setuid or setgid bits and no
// special files. Laid over the stack it puts the app at /app (AppDir), so
// the slug is an image layer as it is. The app's process types are the
// lines of its Procfile (ParseProcfile), which slugrunner reads to start
// one (Command).
package slug

import (
	"errors"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/flynnrebuilt/flynn/internal/stack"
)

// Prefix is the directory a slug's entries are in.
const Prefix = "./app/"

// AppDir is where app jobs find the slug: the app directory.
const AppDir = "/app"

// UID and GID own every entry of a slug: the stack's app user.
const (
	UID = stack.AppUID
	GID = stack.AppGID
)

var processTypeRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,63}$`)

// ValidProcessType says whether t may name a process type: 1-63 letters,
// digits, _ or -.
func ValidProcessType(t string) bool { return processTypeRE.MatchString(t) }

// ParseProcfile parses a Procfile: lines "<type>: <command>", blank lines
// and # comments ignored. Types are ValidProcessType and appear once.
func ParseProcfile(data string) (map[string]string, error) {
	types := map[string]string{}
	n := 0
	for line := range strings.Lines(data) {
		n++
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		typ, cmd, ok := strings.Cut(line, ":")
		typ, cmd = strings.TrimSpace(typ), strings.TrimSpace(cmd)
		switch {
		case !ok:
			return nil, fmt.Errorf("Procfile line %d: want \"<type>: <command>\"", n)
		case !ValidProcessType(typ):
			return nil, fmt.Errorf("Procfile line %d: process type %q must be 1-63 letters, digits, _ or -", n, typ)
		case cmd == "":
			return nil, fmt.Errorf("Procfile line %d: process type %q has no command", n, typ)
		}
		if _, dup := types[typ]; dup {
			return nil, fmt.Errorf("Procfile line %d: process type %q appears twice", n, typ)
		}
		types[typ] = cmd
	}
	return types, nil
}

// FormatProcfile writes process types as a Procfile, sorted by type.
func FormatProcfile(types map[string]string) string {
	var b strings.Builder
	for _, t := range slices.Sorted(maps.Keys(types)) {
		fmt.Fprintf(&b, "%s: %s\n", t, types[t])
	}
	return b.String()
}

// Command returns the command line of process type typ in the Procfile of
// the app directory appDir.
func Command(appDir, typ string) (string, error) {
	data, err := os.ReadFile(filepath.Join(appDir, "Procfile"))
	if errors.Is(err, os.ErrNotExist) {
		return "", fmt.Errorf("no Procfile in %s: the slug declares no process types", appDir)
	}
	if err != nil {
		return "", err
	}
	types, err := ParseProcfile(string(data))
	if err != nil {
		return "", err
	}
	cmd, ok := types[typ]
	if !ok {
		return "", fmt.Errorf("process type %q is not in the Procfile (it has: %s)", typ, strings.Join(slices.Sorted(maps.Keys(types)), ", "))
	}
	return cmd, nil
}
