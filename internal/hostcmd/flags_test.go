package hostcmd

import (
	"context"
	"strings"
	"testing"

	"github.com/flynnrebuilt/flynn/internal/host"
)

func TestValidateAgentFlags(t *testing.T) {
	good := host.Config{Bridge: "flynnbr0", Subnet: "100.64.0.0/16", Runc: "sh"}
	if err := validateAgentFlags(good); err != nil {
		t.Fatalf("good flags: %v", err)
	}
	for _, tt := range []struct {
		mod  func(*host.Config)
		want string
	}{
		{func(c *host.Config) { c.Bridge = "averyveryverylongbridgename" }, "--bridge"},
		{func(c *host.Config) { c.Bridge = "br 0" }, "--bridge"},
		{func(c *host.Config) { c.Subnet = "garbage" }, "--subnet"},
		{func(c *host.Config) { c.Subnet = "fd00::/64" }, "--subnet"},
		{func(c *host.Config) { c.Subnet = "100.64.0.0/30" }, "too small"},
		{func(c *host.Config) { c.StopGrace = -1 }, "--stop-grace"},
		{func(c *host.Config) { c.Runc = "/no/such/runc" }, "--runc"},
	} {
		c := good
		tt.mod(&c)
		if err := validateAgentFlags(c); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err = %v, want one naming %s", c, err, tt.want)
		}
	}
}

func TestControllerAdvertiseFlag(t *testing.T) {
	var stderr strings.Builder
	code := Run(context.Background(), []string{"component", "controller", "--listen", "127.0.0.1:0", "--auth-key", "k", "--advertise", "notahostport"},
		Env{Stdout: &strings.Builder{}, Stderr: &stderr, Getenv: func(string) string { return "" }})
	if code == 0 || !strings.Contains(stderr.String(), "--advertise") {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}
