package testslot

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The child modes run in a second process of this test binary, as another
// test binary would.
func TestMain(m *testing.M) {
	switch os.Getenv("FLT_TESTSLOT_CHILD") {
	case "report":
		s, err := take()
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println(s.N)
		os.Exit(0)
	case "leave":
		// Take a slot, make things in it and die without cleaning up.
		s, err := take()
		if err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		if os.Geteuid() == 0 {
			if out, err := exec.Command("ip", "link", "add", s.Prefix()+"stale", "type", "bridge").CombinedOutput(); err != nil {
				fmt.Println("error:", err, string(out))
				os.Exit(1)
			}
		}
		os.WriteFile(filepath.Join(s.Root, "left"), nil, 0o644)
		fmt.Println(s.N)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

func child(t *testing.T, mode string) int {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "FLT_TESTSLOT_CHILD="+mode)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child %s: %v\n%s", mode, err, out)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(out)))
	if err != nil {
		t.Fatalf("child %s printed %q", mode, out)
	}
	return n
}

func TestSlotsAreExclusive(t *testing.T) {
	mine := Get(t).N
	if other := child(t, "report"); other == mine {
		t.Fatalf("a second test binary got slot %d, which this one holds", mine)
	}
}

func TestStaleStateIsCleaned(t *testing.T) {
	Get(t)
	n := child(t, "leave") // dies holding nothing, leaving a link and a file
	letter := string(rune('a' + n))
	if again := child(t, "report"); again != n {
		t.Skipf("the slot went to another binary in between (%d, then %d)", n, again)
	}
	if _, err := os.Stat(filepath.Join(RootDir, letter, "left")); !os.IsNotExist(err) {
		t.Errorf("the dead holder's file is still there: %v", err)
	}
	if _, err := net.InterfaceByName("ft" + letter + "stale"); err == nil {
		exec.Command("ip", "link", "del", "ft"+letter+"stale").Run()
		t.Error("the dead holder's link is still there")
	}
}

func TestNamesPortsSubnets(t *testing.T) {
	s := Get(t)
	a, b := Name(t, "br"), Name(t, "br")
	if a == b || !strings.HasPrefix(a, s.Prefix()) || len(a) > 15 {
		t.Errorf("names %q, %q", a, b)
	}
	if x, y := Subnet(t), Subnet(t); x == y || !strings.HasPrefix(x, s.SubnetPrefix()) {
		t.Errorf("subnets %q, %q", x, y)
	}
	ports := Ports(t, 3)
	lo := PortBase + s.N*PortsPerSlot
	for i, p := range ports {
		if p < lo || p >= lo+PortsPerSlot || (i > 0 && p != ports[i-1]+1) {
			t.Errorf("ports %v are not consecutive in the slot's block from %d", ports, lo)
		}
	}
	if p := Port(t); p <= ports[2] {
		t.Errorf("port %d handed out again after %v", p, ports)
	}
	d := Dir(t)
	if !strings.HasPrefix(d, s.Root+"/") {
		t.Errorf("dir %s is not under the slot's root %s", d, s.Root)
	}
}
