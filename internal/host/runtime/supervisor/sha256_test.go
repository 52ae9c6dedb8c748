package supervisor

import (
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

func TestSum256(t *testing.T) {
	for n := 0; n < 300; n++ {
		b := []byte(strings.Repeat("flynn/", n)[:n])
		if got, want := sum256(b), sha256.Sum256(b); got != want {
			t.Fatalf("sum256 of %d bytes: %x, want %x", n, got, want)
		}
	}
}

func TestAddr(t *testing.T) {
	dir := "/var/lib/flynn/containers/jobs/web-1"
	sum := sha256.Sum256([]byte(dir))
	want := "@flynn-supervisor-" + hex.EncodeToString(sum[:16])
	if got := Addr(dir); got != want {
		t.Errorf("Addr(%q) = %q, want %q", dir, got, want)
	}
}
