package hostcmd

import (
	"bytes"
	"context"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestAppEnvFromEnviron(t *testing.T) {
	got := appEnvFromEnviron([]string{
		"PATH=/bin", "HOME=/app", "PORT=8080", "FLYNN_APP_ID=x", "BUILDPACK_URL=u", "SOURCE_VERSION=v",
		"DATABASE_URL=postgres://db", "EMPTY=", "WITH_EQ=a=b", "junk",
	})
	want := map[string]string{"DATABASE_URL": "postgres://db", "EMPTY": "", "WITH_EQ": "a=b"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestSlugbuilderSaveLastEnv: BUILD_CACHE_SAVE_LAST that is not a boolean
// is refused with one line naming it, before anything is built.
func TestSlugbuilderSaveLastEnv(t *testing.T) {
	var stderr bytes.Buffer
	env := Env{Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: &stderr, Getenv: func(k string) string {
		if k == "BUILD_CACHE_SAVE_LAST" {
			return "yes please"
		}
		return ""
	}}
	code := Run(context.Background(), []string{"slugbuilder", "--no-environ", "--build-dir", t.TempDir()}, env)
	if code == 0 || !strings.Contains(stderr.String(), `BUILD_CACHE_SAVE_LAST="yes please": want 1 or 0`) {
		t.Errorf("exit %d, stderr:\n%s", code, stderr.String())
	}
}
