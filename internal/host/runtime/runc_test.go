package runtime

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/host/network"
	"github.com/flynnrebuilt/flynn/internal/host/runtime/supervisor"
	"github.com/flynnrebuilt/flynn/internal/image"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

func TestMain(m *testing.M) {
	if len(os.Args) == 3 && os.Args[1] == "supervise" {
		if err := supervisor.Run(os.Args[2]); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	if len(os.Args) == 4 && os.Args[1] == "dial-supervisor" {
		dialSupervisor(os.Args[2], os.Args[3])
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// dialSupervisor is a client of a supervisor socket, run by the tests as
// another user: it asks for the job's logs and prints what it got, until
// the output holds marker, the supervisor closes the connection or 30
// seconds pass.
func dialSupervisor(addr, marker string) {
	c, err := net.Dial("unix", addr)
	if err != nil {
		fmt.Printf("dial: %v\n", err)
		return
	}
	defer c.Close()
	if _, err := io.WriteString(c, `{"logs":true}`+"\n"); err != nil {
		fmt.Printf("write: %v\n", err)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	var got []byte
	buf := make([]byte, 4096)
	for !bytes.Contains(got, []byte(marker)) {
		n, err := c.Read(buf)
		got = append(got, buf[:n]...)
		if err != nil {
			fmt.Printf("read %d bytes (%q), then: %v\n", len(got), got, err)
			return
		}
	}
	fmt.Printf("read %d bytes (%q)\n", len(got), got)
}

// newTestRunc returns a runc runtime on its own bridge and a busybox layer.
func newTestRunc(t *testing.T) (*Runc, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	if _, err := exec.LookPath("runc"); err != nil {
		t.Skip("needs runc")
	}
	dir := t.TempDir()
	store, err := image.NewStore(filepath.Join(dir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if err := image.WriteBusyboxLayer(&buf, image.DefaultBusybox); err != nil {
		t.Fatal(err)
	}
	layerFile := filepath.Join(dir, "busybox.tar.gz")
	os.WriteFile(layerFile, buf.Bytes(), 0o644)
	_, layer, err := store.ImportFile(context.Background(), layerFile, "")
	if err != nil {
		t.Fatal(err)
	}
	bridge := testslot.Name(t, "rt")
	ports := testslot.Ports(t, 10)
	netm, err := network.New(network.Config{
		Bridge: bridge, Subnet: testslot.Subnet(t), StateDir: filepath.Join(dir, "net"),
		PortMin: ports[0], PortMax: ports[len(ports)-1],
	})
	if err != nil {
		t.Fatal(err)
	}
	cg := testslot.Name(t, "rtcg")
	r, err := NewRunc(Config{StateDir: filepath.Join(dir, "state"), SupervisorCmd: []string{os.Args[0], "supervise"}, CgroupParent: cg, Network: netm})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		exec.Command("ip", "link", "del", bridge).Run()
		network.RemoveFirewall(bridge)
		removeCgroup("/" + cg)
	})
	return r, layer
}

func readLog(t *testing.T, r Runtime, id string) []api.HostLogLine {
	t.Helper()
	rc, err := r.Log(context.Background(), id, false)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	b, _ := io.ReadAll(rc)
	var out []api.HostLogLine
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		var ll api.HostLogLine
		if err := json.Unmarshal([]byte(l), &ll); err != nil {
			t.Fatalf("log line %q: %v", l, err)
		}
		out = append(out, ll)
	}
	return out
}

func TestRuncJob(t *testing.T) {
	r, layer := newTestRunc(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec := &Spec{ID: "fltrt-1", Layers: []string{layer}, Args: []string{"sh", "-c", "echo out; echo err >&2; id -u; exit 3"}, UID: NobodyID, GID: NobodyID}
	st, err := r.Start(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killAndRemove(r, spec.ID) })
	if st.PID == 0 || st.IP == "" {
		t.Fatalf("started %+v", st)
	}
	exit, err := r.Wait(ctx, spec.ID)
	if err != nil {
		t.Fatal(err)
	}
	if diff := fmtDiff(&api.HostJobExit{ExitStatus: 3}, exit); diff != "" {
		t.Fatal(diff)
	}
	var got []string
	for _, l := range readLog(t, r, spec.ID) {
		got = append(got, l.Stream+":"+l.Msg)
	}
	// The platform's lines come first and last: the exit line follows
	// the last output. stdout and stderr are separate pipes: only the
	// order within one stream is defined.
	if len(got) > 2 {
		sort.Strings(got[1 : len(got)-1])
	}
	want := []string{"init:Starting process with command `sh -c 'echo out; echo err >&2; id -u; exit 3'`", "stderr:err", "stdout:65534", "stdout:out", "init:Process exited with status 3"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("log %v, want %v", got, want)
	}
	// The directories that get one directory per job are marked for
	// ext4 to spread those over its block groups (MarkTopDir).
	if isExt4(t, r.cfg.StateDir) {
		for _, d := range []string{"jobs", "runc"} {
			if set, _ := topDirFlag(t, filepath.Join(r.cfg.StateDir, d)); !set {
				t.Errorf("%s: not marked as a top directory", d)
			}
		}
	}
	if err := r.Remove(ctx, spec.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(r.dir(spec.ID)); !os.IsNotExist(err) {
		t.Fatalf("job dir left: %v", err)
	}
}

func fmtDiff(want, got any) string {
	w, _ := json.Marshal(want)
	g, _ := json.Marshal(got)
	if string(w) != string(g) {
		return fmt.Sprintf("got %s, want %s", g, w)
	}
	return ""
}

// killAndRemove is a test clean-up that ends and removes a job whatever
// state it is in.
func killAndRemove(r *Runc, id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r.Signal(ctx, id, 9)
	r.Wait(ctx, id)
	r.Remove(ctx, id)
}

// TestSupervisorServesRootOnly: a process of another user on the host
// (as a build job or any host network job is) that connects to a job's
// supervisor socket is disconnected before it gets anything; root, the
// host agent, gets the job's output.
func TestSupervisorServesRootOnly(t *testing.T) {
	r, layer := newTestRunc(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	spec := &Spec{ID: "fltrt-peer", Layers: []string{layer}, Args: []string{"sh", "-c", "echo job-secret; sleep 1000"}, UID: NobodyID, GID: NobodyID}
	if _, err := r.Start(ctx, spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { killAndRemove(r, spec.ID) })
	// The job's output is in its log before anyone dials.
	for i := 0; len(readLog(t, r, spec.ID)) == 0; i++ {
		if i > 300 {
			t.Fatal("the job wrote nothing to its log in 30s")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// The test binary, where user nobody can run it.
	bin := filepath.Join(testslot.Dir(t), "client")
	self, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	addr := supervisor.Addr(r.dir(spec.ID))
	dial := func(uid uint32) string {
		cmd := exec.Command(bin, "dial-supervisor", addr, "job-secret")
		if uid != 0 {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("client as uid %d: %v\n%s", uid, err, out)
		}
		return string(out)
	}
	for _, uid := range []uint32{NobodyID, 1000} {
		if out := dial(uid); strings.Contains(out, "job-secret") || !strings.Contains(out, "read 0 bytes") {
			t.Errorf("a client as uid %d got: %s\nwant the connection closed with nothing read", uid, out)
		}
	}
	if out := dial(0); !strings.Contains(out, "job-secret") {
		t.Errorf("a client as root got: %s\nwant the job's output", out)
	}
	sup, _ := os.ReadFile(filepath.Join(r.dir(spec.ID), supervisor.FileSupLog))
	if !strings.Contains(string(sup), "refused a connection from uid 65534") {
		t.Errorf("the supervisor's log does not record the refusal:\n%s", sup)
	}
}
