package hostcmd

import (
	"bytes"
	"context"
	"strings"
	"testing"
)

func TestRouterFlags(t *testing.T) {
	tests := []struct {
		args    []string
		wantErr string
	}{
		{[]string{"component", "router", "--tcp-range", "3500-3000"}, "--tcp-range"},
		{[]string{"component", "router", "--tcp-range", "x"}, "--tcp-range"},
		{[]string{"component", "router", "--cookie-key", "short"}, "--cookie-key"},
		{[]string{"component", "router", "--tls-cert", "/nonexistent"}, "--tls-key"},
		{[]string{"component", "router", "--discoverd", ""}, "--discoverd"},
		{[]string{"component", "router", "--etcd", ""}, "--etcd"},
		{[]string{"component", "router", "--tls-cert", "/nonexistent", "--tls-key", "/nonexistent"}, "cluster certificate"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args[2:], " "), func(t *testing.T) {
			var out, errb bytes.Buffer
			code := Run(context.Background(), tt.args, Env{Stdout: &out, Stderr: &errb, Getenv: func(string) string { return "" }})
			if code == 0 || !strings.Contains(errb.String(), tt.wantErr) {
				t.Fatalf("exit %d, stderr %q; want an error mentioning %q", code, errb.String(), tt.wantErr)
			}
		})
	}
}
