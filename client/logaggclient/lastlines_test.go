package logaggclient

import (
	"encoding/json"
	"io"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/flynnrebuilt/flynn/api"
)

func TestLastLines(t *testing.T) {
	log := func(lines ...[2]string) *Reader {
		var b strings.Builder
		for _, l := range lines {
			j, _ := json.Marshal(api.LogMessage{Stream: l[0], Msg: l[1]})
			b.Write(append(j, '\n'))
		}
		return NewPlainReader(io.NopCloser(strings.NewReader(b.String())))
	}
	out, errs, init := api.LogStdout, api.LogStderr, api.LogInit
	for _, tt := range []struct {
		name string
		r    *Reader
		want []string
	}{
		{"the last n output lines, then how it ended", log(
			[2]string{init, "Starting process with command `web`"},
			[2]string{out, "one"}, [2]string{errs, "two"}, [2]string{out, "three"},
			[2]string{init, "Stopping process with SIGTERM"},
			[2]string{init, "Process exited with status 143"},
			[2]string{out, "after the exit: not read"},
		), []string{"two", "three", "Stopping process with SIGTERM", "Process exited with status 143"}},
		{"an OOM kill", log(
			[2]string{out, "allocating"},
			[2]string{init, "FATAL: a container process was killed due to lack of available memory"},
			[2]string{init, "Process exited with status 137"},
		), []string{"allocating", "FATAL: a container process was killed due to lack of available memory", "Process exited with status 137"}},
		{"a failed start", log(
			[2]string{init, "Starting process with command `nope`"},
			[2]string{init, "Failed to start the process: runc run: exit status 1"},
		), []string{"Failed to start the process: runc run: exit status 1"}},
		{"no exit line: up to the end", log(
			[2]string{out, "a"}, [2]string{out, "b"}, [2]string{out, "c"},
		), []string{"b", "c"}},
	} {
		if d := cmp.Diff(tt.want, LastLines(tt.r, 2)); d != "" {
			t.Errorf("%s (-want +got):\n%s", tt.name, d)
		}
	}
}
