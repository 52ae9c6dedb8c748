package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestNew(t *testing.T) {
	tests := []struct {
		name    string
		cfg     Config
		wantErr bool
	}{
		{"default", Config{}, false},
		{"debug", Config{Level: "DEBUG"}, false},
		{"json", Config{Level: "warn", JSON: true}, false},
		{"bad", Config{Level: "loud"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := New(&buf, tt.cfg)
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			log.Error("boom", "k", "v")
			if !strings.Contains(buf.String(), "boom") {
				t.Fatalf("output %q lacks the message", buf.String())
			}
			if tt.cfg.JSON {
				var m map[string]any
				if err := json.Unmarshal(buf.Bytes(), &m); err != nil || m["k"] != "v" {
					t.Fatalf("not JSON with k=v: %q (%v)", buf.String(), err)
				}
			}
		})
	}
}

func TestLevelFilters(t *testing.T) {
	var buf bytes.Buffer
	log, _ := New(&buf, Config{Level: "error"})
	log.Info("quiet")
	if buf.Len() != 0 {
		t.Fatalf("info logged at level error: %q", buf.String())
	}
}

func TestPrefixWriter(t *testing.T) {
	var out bytes.Buffer
	p := &PrefixWriter{W: &out, Prefix: "  > "}
	for _, s := range []string{"one\ntw", "o\n", "", "\nthree"} {
		if n, err := p.Write([]byte(s)); n != len(s) || err != nil {
			t.Fatalf("Write(%q) = %d, %v", s, n, err)
		}
	}
	p.EndLine()
	p.EndLine()
	if want := "  > one\n  > two\n  > \n  > three\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}
