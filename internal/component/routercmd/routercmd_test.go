package routercmd

import (
	"strings"
	"testing"
)

func TestDecodeCookieKey(t *testing.T) {
	hexKey := strings.Repeat("ab", 32)
	for _, s := range []string{hexKey, "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=", "q6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s"} {
		b, err := decodeKey(s)
		if err != nil || len(b) != 32 || b[0] != 0xab {
			t.Errorf("decodeKey(%q) = %x, %v", s, b, err)
		}
	}
}
