package test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/hostclient"
	"github.com/flynnrebuilt/flynn/internal/bootstrap"
	"github.com/flynnrebuilt/flynn/internal/daemon"
	"github.com/flynnrebuilt/flynn/internal/testslot"
)

// hostAddr adds a link with an address of a test subnet for the cluster
// to listen on, as a host's cluster address (loopback, where the other
// e2e clusters listen, is out of a container's reach whatever the
// firewall does). It is removed at the end.
func hostAddr(t *testing.T) string {
	t.Helper()
	link := testslot.Name(t, "isoa")
	ip := strings.TrimSuffix(testslot.Subnet(t), "0/24") + "1"
	t.Cleanup(func() { exec.Command("ip", "link", "del", link).Run() })
	for _, args := range [][]string{
		{"link", "add", link, "type", "veth", "peer", "name", link + "p"},
		{"addr", "add", ip + "/32", "dev", link},
		{"link", "set", link, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return ip
}

// upArg is the value of flag in the cluster's `flynn-host up` command.
func (c *e2eCluster) upArg(flag string) string {
	i := slices.Index(c.upArgs, flag)
	if i < 0 || i+1 >= len(c.upArgs) {
		c.t.Fatalf("up has no %s", flag)
	}
	return c.upArgs[i+1]
}

// attackScript runs in an app's container: it connects to each HOST:PORT
// and prints how it ended, as bash sees it.
const attackScript = `#!/bin/bash
for target in "$@"; do
  out=$(timeout 20 bash -c "exec 3<>/dev/tcp/${target%:*}/${target##*:}" 2>&1) && { echo "$target connected"; continue; }
  case "$out" in
    *"No route to host"*) echo "$target blocked" ;;
    *"refused"*) echo "$target refused" ;;
    "") echo "$target timeout" ;;
    *) echo "$target other: $out" ;;
  esac
done
`

// hostileCompile is the bin/compile of a buildpack in a tenant's repo: the
// tenant's code, running in the build job. It prints its environment and
// tries the platform with what it finds: etcd, the host agent, the
// blobstore (by key, by its own signed URLs bent to other paths), the log
// aggregator and the job supervisors' sockets. IP, ETCD, HOSTPORT, BLOB,
// LOGAGG and VICTIM (another app's id) are filled in by the test.
const hostileCompile = `#!/bin/bash
echo "-----> Hostile buildpack"
env | sort | sed 's/^/attack-env: /'
code() { curl -s -o /dev/null -m 10 -w '%{http_code}' "$@"; }
echo "attack: etcd-tls $(code -k https://IP:ETCD/version)"
echo "attack: etcd-plain $(code http://IP:ETCD/version)"
echo "attack: host-agent $(code http://IP:HOSTPORT/host/jobs)"
echo "attack: host-agent-run $(code -X PUT -d '{"id":"x","config":{"args":["id"],"uid":0}}' http://IP:HOSTPORT/host/jobs/x)"
echo "attack: blob-list $(code http://IP:BLOB/slugs/)"
echo "attack: blob-other-slugs $(code http://IP:BLOB/slugs/VICTIM/)"
echo "attack: blob-unsigned-source $(code "${SOURCE_URL%%\?*}")"
echo "attack: blob-other-cache $(code "$(echo "$BUILD_CACHE_URL" | sed 's#/caches/[^?]*#/caches/VICTIM.tgz#')")"
echo "attack: blob-write-source $(code -X PUT --data-binary forged "$SOURCE_URL")"
echo "attack: blob-own-source $(code "$SOURCE_URL")"
echo "attack: log-read $(code http://IP:LOGAGG/log/VICTIM)"
echo "attack: log-write $(code -X POST -H 'Content-Type: application/json' -d '[]' http://IP:LOGAGG/log)"
python3 - <<'PY'
import socket
found, opened = set(), 0
for line in open('/proc/net/unix').read().splitlines()[1:]:
    f = line.split()
    if len(f) < 8 or not f[-1].startswith('@flynn-supervisor-') or f[-1] in found:
        continue
    found.add(f[-1])
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect('\0' + f[-1][1:])
        s.sendall(b'{"logs":true}\n')
        if s.recv(4096):
            opened += 1
    except socket.timeout:
        opened += 1
    except OSError:
        pass
    finally:
        s.close()
print("attack: supervisors found=%d answered=%d" % (len(found), opened))
PY
`

// TestTenantIsolation runs a hostile tenant's attacks from real app
// containers on a cluster brought up as make up does, listening on a
// host address containers can route to, and checks each is refused while
// the legitimate paths (git push, routing, logs, scale, run) work: a
// container reaches the router but not etcd, discoverd, the host agent,
// the platform's components, another app's container (directly or by its
// published port) or the cloud metadata address; a job writing past its
// temp_disk gets ENOSPC; slow clients are cut off by the router and an
// API server; a client over its connection cap is refused; flynn-host
// down takes the firewall away.
func TestTenantIsolation(t *testing.T) {
	ip := hostAddr(t)
	m := bootstrap.DefaultManifest()
	r := m.Apps["router"].Processes["app"]
	r.Args = append(r.Args, "--read-header-timeout", "2s", "--body-timeout", "2s", "--max-conns-per-client", "40")
	c := startE2ECluster(t, m, "--listen-ip", ip)
	hostPort := c.upArg("--host-port")
	c.hosts[0].ip, c.hosts[0].hostURL = ip, "http://"+net.JoinHostPort(ip, hostPort)
	agent := c.hostClient(c.hosts[0])

	// An API server (the host agent) cuts off a client that never ends
	// its headers; started now, checked at the end.
	loris, err := net.Dial("tcp", net.JoinHostPort(ip, hostPort))
	if err != nil {
		t.Fatal(err)
	}
	defer loris.Close()
	io.WriteString(loris, "GET /host/status HTTP/1.1\r\nHost: x\r\nX-Slow: ")

	// The tenant's app: a web process, a process that fills its disk,
	// and the attack script; another app to attack.
	a := newPushApp(t, c, nil, "procfile", "isoapp", false)
	os.WriteFile(filepath.Join(a.dir, "attack.sh"), []byte(attackScript), 0o755)
	procfile, _ := os.ReadFile(filepath.Join(a.dir, "Procfile"))
	procfile = append(procfile, "filler: dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; echo filler-exit=$?; exec sleep 100000\n"...)
	os.WriteFile(filepath.Join(a.dir, "Procfile"), procfile, 0o644)
	a.git("add", ".")
	a.git("commit", "-qm", "attacks")
	a.pushAndServe("hello from the procfile app")
	other := newPushApp(t, c, nil, "procfile", "isoother", false)
	other.pushAndServe("hello from the procfile app")

	ctx := context.Background()
	jobs, err := agent.ListJobs(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var victim *api.ActiveJob
	for _, j := range jobs {
		if j.Job.Metadata[api.JobMetaAppName] == "isoother" && j.Status == api.HostJobRunning {
			victim = j
		}
	}
	if victim == nil || victim.InternalIP == "" || len(victim.HostPorts) == 0 {
		t.Fatalf("no running job of isoother with an address and a published port:\n%s", c.jobTable(c.hosts[0]))
	}

	// A real build of a tenant's code: a buildpack in the app's repo
	// reads the build's environment and tries the platform with it.
	// Builds run on the host's network, so it reaches the ports: each
	// must refuse it for want of a credential.
	hostile := newPushApp(t, c, nil, "procfile", "isobuild", false)
	compile := strings.NewReplacer("IP", ip, "ETCD", c.upArg("--etcd-client-port"), "HOSTPORT", hostPort,
		"BLOB", c.upArg("--blobstore-port"), "LOGAGG", c.upArg("--logaggregator-port"),
		"VICTIM", victim.Job.Metadata[api.JobMetaApp]).Replace(hostileCompile)
	bp := filepath.Join(hostile.dir, "hostile-buildpack", "bin")
	os.MkdirAll(bp, 0o755)
	os.WriteFile(filepath.Join(bp, "detect"), []byte("#!/bin/sh\necho Hostile\n"), 0o755)
	os.WriteFile(filepath.Join(bp, "compile"), []byte(compile), 0o755)
	os.WriteFile(filepath.Join(bp, "release"), []byte("#!/bin/sh\necho ---\necho 'default_process_types: {}'\n"), 0o755)
	os.WriteFile(filepath.Join(hostile.dir, ".buildpacks"), []byte("/app/hostile-buildpack\n"), 0o644)
	hostile.git("add", ".")
	hostile.git("commit", "-qm", "hostile buildpack")
	_, out := hostile.pushServe("hello from the procfile app")
	t.Logf("the hostile build:\n%s", out)
	for _, w := range []string{
		"attack: etcd-tls 000", "attack: etcd-plain 000",
		"attack: host-agent 401", "attack: host-agent-run 401",
		"attack: blob-list 401", "attack: blob-other-slugs 401", "attack: blob-unsigned-source 401",
		"attack: blob-other-cache 401", "attack: blob-write-source 401",
		"attack: blob-own-source 200",
		"attack: log-read 401", "attack: log-write 401",
		"attack: supervisors found=", " answered=0",
	} {
		if !strings.Contains(out, w) {
			t.Errorf("the hostile build's output lacks %q", w)
		}
	}
	if strings.Contains(out, "attack: supervisors found=0 ") {
		t.Errorf("the hostile build found no supervisor sockets to try")
	}
	// Its environment holds no platform secret: not the cluster key
	// (which also writes the blobstore; the build output would show it
	// as ***), not the cluster token.
	clusterKey, _ := clusterKey(t, c)
	hcfg, err := daemon.LoadHostConfig(c.hosts[0].stateDir)
	if err != nil {
		t.Fatal(err)
	}
	for name, secret := range map[string]string{"the cluster key": clusterKey, "the cluster token": hcfg.Token, "a redacted key": "***"} {
		if secret != "" && strings.Contains(out, secret) {
			t.Errorf("the build's environment holds %s", name)
		}
	}

	// The router, blobstore and log aggregator hold the service token,
	// not the host-admin cluster token; it does not open a host agent.
	svcApps := map[string]bool{}
	for _, j := range jobs {
		app := j.Job.Metadata[api.JobMetaAppName]
		if app != "router" && app != "blobstore" && app != "logaggregator" {
			continue
		}
		svcApps[app] = true
		for k, v := range j.Job.Config.Env {
			if strings.Contains(v, hcfg.Token) {
				t.Errorf("%s's env %s holds the cluster token", app, k)
			}
		}
		tok := j.Job.Config.Env["FLYNN_CLUSTER_TOKEN"]
		if tok == "" {
			t.Errorf("%s has no FLYNN_CLUSTER_TOKEN (its discoverd token)", app)
		}
		if _, err := hostclient.New(c.hosts[0].hostURL, tok).ListJobs(ctx); !errors.Is(err, api.ErrUnauthorized) {
			t.Errorf("the host agent with %s's token: %v, want unauthorized", app, err)
		}
	}
	if len(svcApps) != 3 {
		t.Errorf("found the jobs of %v, want router, blobstore and logaggregator", svcApps)
	}

	// System apps: not deleted, not pushed to; a tenant app is not made
	// one. One-line CLI errors that say why.
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"-a", "controller", "delete", "--yes"}, "controller is a system app (it runs part of the platform): it cannot be deleted"},
		{[]string{"-a", "router", "delete", "--yes"}, "router is a system app"},
		{[]string{"meta", "set", "flynn-system-app=true"}, "flynn-system-* meta marks the platform's own apps"},
	} {
		cmd := hostile.cmd(filepath.Join(binDir, "flynn"), tt.args...)
		b, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(b), tt.want) || strings.Count(strings.TrimSpace(string(b)), "\n") > 0 {
			t.Errorf("flynn %s: %v\n%s\nwant one line saying %q", strings.Join(tt.args, " "), err, b, tt.want)
		}
	}
	gitURL := strings.TrimSpace(hostile.git("remote", "get-url", "flynn"))
	ctlURL := strings.TrimSuffix(gitURL, "isobuild.git") + "controller.git"
	if b, err := hostile.cmd("git", "push", ctlURL, "main").CombinedOutput(); err == nil || !strings.Contains(string(b), "controller is a system app") {
		t.Errorf("git push to the controller: %v\n%s\nwant it refused", err, b)
	}
	if ps := hostile.flynn("-a", "controller", "ps"); !strings.Contains(ps, " up ") {
		t.Errorf("the controller after the attempts:\n%s", ps)
	}

	// From the tenant's container: what it reaches and what it does not.
	at := func(port string) string { return net.JoinHostPort(ip, port) }
	want := map[string]string{
		at(c.upArg("--http-port")):                  "connected",
		at(hostPort):                                "blocked",
		at(c.upArg("--etcd-client-port")):           "blocked",
		at(c.upArg("--etcd-peer-port")):             "blocked",
		at(c.upArg("--discoverd-port")):             "blocked",
		at(c.upArg("--blobstore-port")):             "blocked",
		at(c.upArg("--logaggregator-port")):         "blocked",
		at(c.upArg("--router-api-port")):            "blocked",
		net.JoinHostPort(victim.InternalIP, "8080"): "blocked",
		at(fmt.Sprint(victim.HostPorts[0])):         "blocked",
		"169.254.169.254:80":                        "blocked",
	}
	var targets []string
	for k := range want {
		targets = append(targets, k)
	}
	out = a.flynn(append([]string{"run", "bash", "/app/attack.sh"}, targets...)...)
	t.Logf("the attack script in the app's container:\n%s", out)
	for target, w := range want {
		if !strings.Contains(out, target+" "+w+"\n") {
			t.Errorf("from the app's container, %s: want %s; the attack script printed:\n%s", target, w, out)
		}
	}
	// App to app goes through the router.
	out = a.flynn("run", "curl", "-sS", "-m", "20", "-H", "Host: isoother."+c.domain, "http://"+at(c.upArg("--http-port"))+"/")
	if !strings.Contains(out, "hello from the procfile app") {
		t.Errorf("from the app's container, the other app through the router:\n%s", out)
	}
	// The platform's own components reach what they need: they run on
	// the host's network (the router was reached above, the victim's
	// page is served through it).
	if status, body := other.get(); status != 200 {
		t.Errorf("the other app through the router from outside: %d %s", status, body)
	}

	// temp_disk: a process writing past it gets ENOSPC; the same write
	// in a one-off job without one succeeds.
	a.flynn("limit", "set", "filler", "temp_disk=16MiB")
	a.flynn("scale", "filler=1", "web=2")
	waitFor(t, within(t, 2*time.Minute), "the filler's output in flynn log", c.watch(), func() (bool, error) {
		cmd := a.cmd(filepath.Join(binDir, "flynn"), "log", "-n", "1000")
		b, err := cmd.CombinedOutput()
		return strings.Contains(string(b), "filler-exit="), fmt.Errorf("%v: %s", err, tail(string(b), 10))
	})
	if log := a.flynn("log", "-n", "1000"); !strings.Contains(log, "No space left on device") || strings.Contains(log, "filler-exit=0") {
		t.Errorf("a process writing 64 MiB with a 16 MiB temp_disk, its log:\n%s\nwant ENOSPC", log)
	}
	if out := a.flynn("run", "sh", "-c", "dd if=/dev/zero of=/tmp/fill bs=1M count=64 2>&1; echo exit=$?"); !strings.Contains(out, "exit=0") {
		t.Errorf("a one-off job writing 64 MiB without a temp_disk:\n%s", out)
	}
	if ps := a.flynn("ps"); strings.Count(ps, " up ") < 3 {
		t.Errorf("after scale filler=1 web=2:\n%s", ps)
	}

	// Slow clients of the router: headers that never end, a body that
	// stalls.
	router := "127.0.0.1:" + c.upArg("--http-port")
	for _, tt := range []struct{ name, req, want string }{
		{"partial headers", "GET / HTTP/1.1\r\nHost: isoapp." + c.domain + "\r\nX-Slow: ", ""},
		{"stalled body", "POST / HTTP/1.1\r\nHost: isoapp." + c.domain + "\r\nContent-Length: 100\r\n\r\nhalf", "HTTP/1.1 408 "},
	} {
		conn, err := net.Dial("tcp", router)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(conn, tt.req)
		conn.SetReadDeadline(time.Now().Add(time.Minute))
		got, err := io.ReadAll(conn)
		conn.Close()
		if err != nil || !strings.HasPrefix(string(got), tt.want) {
			t.Errorf("router, %s: read %q, %v; want the connection closed after %q", tt.name, got, err, tt.want)
		}
	}
	// A client over its connection cap (40) is refused: connections that
	// are served one after the other, kept open, until one is not.
	var held []net.Conn
	for len(held) <= 40 {
		conn, err := net.Dial("tcp", router)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(time.Minute))
		io.WriteString(conn, "GET / HTTP/1.1\r\nHost: isoapp."+c.domain+"\r\n\r\n")
		line, err := bufio.NewReader(conn).ReadString('\n')
		if err != nil {
			conn.Close()
			break
		}
		if !strings.Contains(line, "200") {
			t.Fatalf("connection %d: %q", len(held)+1, line)
		}
		held = append(held, conn)
	}
	for _, conn := range held {
		conn.Close()
	}
	if len(held) != 40 {
		t.Errorf("one client got %d connections served at once, want the cap, 40", len(held))
	}

	loris.SetReadDeadline(time.Now().Add(time.Minute))
	if got, err := io.ReadAll(loris); err != nil || len(got) != 0 {
		t.Errorf("the host agent, partial headers: read %q, %v; want the connection closed", got, err)
	}

	// down takes the firewall away.
	c.down()
	rules, _ := exec.Command("iptables-save").Output()
	if strings.Contains(string(rules), "FLYNN-IN-"+c.bridge) || strings.Contains(string(rules), "FLYNN-FWD-"+c.bridge) {
		t.Errorf("flynn-host down left the jobs' firewall:\n%s", rules)
	}
}
