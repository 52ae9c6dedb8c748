package hostcmd

import "testing"

func TestJobDNS(t *testing.T) {
	if got := jobDNS(53, "10.1.2.3"); got != "10.1.2.3" {
		t.Errorf("discoverd DNS on :53 at a routable address: got %q", got)
	}
	// On loopback or another port, jobs in their own namespace cannot use
	// it: they get a host resolver that is not on loopback, or nothing.
	for _, c := range []struct {
		port int
		ip   string
	}{{53, "127.0.0.1"}, {5353, "10.1.2.3"}, {-1, "10.1.2.3"}} {
		got := jobDNS(c.port, c.ip)
		if got == c.ip || got == "127.0.0.1" {
			t.Errorf("jobDNS(%d, %s) = %q, want a non-loopback host resolver or empty", c.port, c.ip, got)
		}
	}
}
