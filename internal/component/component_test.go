package component

import (
	"context"
	"io"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func TestMulti(t *testing.T) {
	var ran string
	cmd := func(name string, code int) func(Env) *cobra.Command {
		return func(Env) *cobra.Command {
			return &cobra.Command{Use: name, RunE: func(cmd *cobra.Command, args []string) error {
				ran = name + " " + strings.Join(args, " ")
				if code != 0 {
					return ExitError{Code: code}
				}
				return nil
			}}
		}
	}
	cmds := map[string]func(Env) *cobra.Command{"router": cmd("router", 0), "gitreceive": cmd("gitreceive", 3)}
	tests := []struct {
		argv0    string
		args     []string
		wantRan  string
		wantCode int
	}{
		{"/bin/flynn-router", []string{"a", "b"}, "router a b", 0},
		{"/bin/flynn-control", []string{"router", "a"}, "router a", 0},
		{"flynn-gitreceive", nil, "gitreceive ", 3},
		{"/bin/flynn-control", []string{"nosuch"}, "", 1},
		{"/bin/flynn-scheduler", []string{"router"}, "router ", 0}, // not one of cmds: args name it
	}
	for _, tt := range tests {
		ran = ""
		var stderr strings.Builder
		code := Multi(context.Background(), "flynn-control", "Run a component", cmds, tt.argv0, tt.args, Env{Stdout: io.Discard, Stderr: &stderr})
		if code != tt.wantCode || ran != tt.wantRan {
			t.Errorf("%s %q: ran %q, exit %d (stderr %q); want %q, exit %d", tt.argv0, tt.args, ran, code, stderr.String(), tt.wantRan, tt.wantCode)
		}
	}
}
