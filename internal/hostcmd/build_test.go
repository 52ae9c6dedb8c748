package hostcmd

import (
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
