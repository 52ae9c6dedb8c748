package supervisor

import (
	"bytes"
	"encoding/json"
	"math/rand"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// randomString mixes bytes that need escaping, multi-byte runes, U+2028
// and invalid UTF-8.
func randomString(r *rand.Rand) string {
	pieces := []string{"a", "Z", " ", "\"", "\\", "/", "<", ">", "&", "\n", "\r", "\t", "\b", "\f", "\x00", "\x1f", "\x7f",
		"é", "日本", "\u2028", "\u2029", "😀", "\xff", "\xc3", "\xed\xa0\x80", "\ufffd"}
	var b []byte
	for n := r.Intn(20); n > 0; n-- {
		b = append(b, pieces[r.Intn(len(pieces))]...)
	}
	return string(b)
}

func TestAppendString(t *testing.T) {
	var all []string
	for c := 0; c < 256; c++ {
		all = append(all, string([]byte{byte(c)}), string(rune(c)))
	}
	r := rand.New(rand.NewSource(1))
	for i := 0; i < 5000; i++ {
		all = append(all, randomString(r))
	}
	for _, s := range all {
		want, _ := json.Marshal(s)
		if got := appendString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
}

func TestWritesAsAPI(t *testing.T) {
	for _, e := range []api.HostJobExit{{}, {ExitStatus: 137, OOM: true}, {ExitStatus: -1, Error: "runc run: exit status 1: <no such file>"}} {
		want, _ := json.Marshal(e)
		if got := (&jobExit{ExitStatus: e.ExitStatus, OOM: e.OOM, Error: e.Error}).json(); !bytes.Equal(got, want) {
			t.Errorf("exit %+v: %s, want %s", e, got, want)
		}
	}
	for _, r := range []Ready{{}, {PID: 42, RuncNanos: 12345678}, {Error: "bind: address already in use"}} {
		want, _ := json.Marshal(r)
		if got := r.json(); !bytes.Equal(got, want) {
			t.Errorf("ready %+v: %s, want %s", r, got, want)
		}
	}
	for _, l := range []api.HostLogLine{
		{Time: time.Now().UTC(), Stream: "stdout", Msg: "hello"},
		{Time: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC), Stream: "stderr", Msg: "\x1b[31mred\x1b[0m \xff"},
		{Time: time.Date(2026, 12, 31, 23, 59, 59, 120000000, time.UTC), Stream: "stdout"},
	} {
		want, _ := json.Marshal(l)
		var o object
		o.time("t", l.Time)
		o.str("s", l.Stream)
		o.str("m", l.Msg)
		if got := o.done(); !bytes.Equal(got, want) {
			t.Errorf("log line: %s, want %s", got, want)
		}
	}
}

func TestParseAsJSON(t *testing.T) {
	cfg := Config{ID: "web-1", Runc: "/usr/bin/runc", RuncRoot: "/var/lib/flynn/runc", TTY: true, Stdin: true, CgroupsPath: "/flynn/web-1", DisableLog: true, Command: "sh -c 'echo \"hi\"'"}
	for _, c := range []Config{cfg, {ID: "x"}} {
		b, _ := json.MarshalIndent(c, "", "  ") // as the runtime writes it
		if got, err := parseConfig(b); err != nil || got != c {
			t.Errorf("parseConfig(%s) = %+v, %v", b, got, err)
		}
	}
	for _, r := range []Request{{}, {Wait: true}, {Stdin: true, Logs: true, Height: 24, Width: 65535}} {
		b, _ := json.Marshal(r)
		if got, err := parseRequest(b); err != nil || got != r {
			t.Errorf("parseRequest(%s) = %+v, %v", b, got, err)
		}
	}
	for _, b := range []string{`{"height":65536}`, `{"height":-1}`, `{"height":1.5}`, `{"wait":"yes"}`, `{"wait":1}`} {
		var r Request
		if json.Unmarshal([]byte(b), &r) == nil {
			t.Fatalf("json.Unmarshal took %s", b)
		}
		if _, err := parseRequest([]byte(b)); err == nil {
			t.Errorf("parseRequest took %s", b)
		}
	}

	// Strings, and objects as runc logs them.
	r := rand.New(rand.NewSource(2))
	docs := []string{
		`{"level":"error","msg":"container_linux.go:380: starting container process caused: exec: \"nope\": executable file not found in $PATH","time":"2026-01-02T03:04:05Z"}`,
		`{"m":"\ud83d\ude00 \u00e9 \ud83d \ude00x \ud800\ud800 \/ \u0041"}`,
		` { "m" : "a" , "x" : [ 1 , { "y" : null } , -2.5e3, 0, -0.0, 1E+2, 3e-2 ] , "z" : {}, "t": true, "f": false } `,
		`{"m":"` + "\xff\xc3(" + `"}`,
		`{"m":"a","m":"b"}`,
	}
	for i := 0; i < 2000; i++ {
		b, _ := json.Marshal(map[string]string{"m": randomString(r), "s": randomString(r)})
		docs = append(docs, string(b))
	}
	for _, d := range docs {
		var want map[string]any
		if err := json.Unmarshal([]byte(d), &want); err != nil {
			t.Fatalf("json.Unmarshal(%s): %v", d, err)
		}
		f, err := parseObject([]byte(d))
		if err != nil {
			t.Fatalf("parseObject(%s): %v", d, err)
		}
		if got := plain(f); !reflect.DeepEqual(got, want) {
			t.Fatalf("parseObject(%s) = %#v, want %#v", d, got, want)
		}
	}

	for _, d := range []string{``, `{`, `}`, `[]`, `"a"`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{,}`, `{"a":1}x`, `{"a":1}{}`,
		`{"a":"b`, "{\"a\":\"\x01\"}", `{"a":"\x"}`, `{"a":"\u12"}`, `{"a":tru}`, `{"a":01}`, `{"a":1.}`, `{"a":-}`, `{"a":- 1}`, `{"a":1 .5}`, `{"a":1e 5}`, `{"a":1e}`, `{"a":.5}`, `{"a":+1}`, `{a:1}`, `{"a":[1,]}`} {
		var v map[string]any
		if json.Unmarshal([]byte(d), &v) == nil {
			t.Fatalf("json.Unmarshal took %s", d)
		}
		if _, err := parseObject([]byte(d)); err == nil {
			t.Errorf("parseObject took %s", d)
		}
	}
}

// plain is v as json.Unmarshal gives it in an any.
func plain(v any) any {
	switch x := v.(type) {
	case fields:
		m := map[string]any{}
		for k, e := range x {
			m[k] = plain(e)
		}
		return m
	case []any:
		a := []any{}
		for _, e := range x {
			a = append(a, plain(e))
		}
		return a
	case number:
		var f float64
		json.Unmarshal([]byte(x), &f)
		return f
	}
	return v
}

// TestNotesAsAPI: readers find the platform's lines about a job by the
// prefixes the api package names.
func TestNotesAsAPI(t *testing.T) {
	for _, c := range []struct{ note, prefix string }{
		{noteStart, api.LogInitStart}, {noteExit, api.LogInitExit}, {noteFailed, api.LogInitFailed},
	} {
		if !strings.HasPrefix(c.note, c.prefix) {
			t.Errorf("note %q does not begin with %q", c.note, c.prefix)
		}
	}
	if StreamInit != api.LogInit {
		t.Errorf("StreamInit %q, api.LogInit %q", StreamInit, api.LogInit)
	}
}
