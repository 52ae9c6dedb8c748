package gitreceive

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/cgi"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// sourceRepo makes a bare repository src.git under a new directory from
// the env's work repo, with a branch "stable" one commit ahead of main,
// and returns the directory and the commits: main's tip, stable's tip.
func sourceRepo(t *testing.T, e *env) (root, mainRev, stableRev string) {
	t.Helper()
	gitIn(t, e.workRepo, "checkout", "-q", "-b", "stable")
	os.WriteFile(filepath.Join(e.workRepo, "STABLE"), []byte("yes\n"), 0o644)
	gitIn(t, e.workRepo, "add", ".")
	gitIn(t, e.workRepo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "stable")
	gitIn(t, e.workRepo, "checkout", "-q", "main")
	root = t.TempDir()
	gitIn(t, "", "clone", "-q", "--bare", e.workRepo, filepath.Join(root, "src.git"))
	mainRev = strings.TrimSpace(gitIn(t, e.workRepo, "rev-parse", "main"))
	stableRev = strings.TrimSpace(gitIn(t, e.workRepo, "rev-parse", "stable"))
	return root, mainRev, stableRev
}

// serveHTTP serves the repositories under root over git's smart HTTP.
func serveHTTP(t *testing.T, root string) string {
	t.Helper()
	gitBin, _ := exec.LookPath("git")
	hs := httptest.NewServer(&cgi.Handler{Path: gitBin, Args: []string{"http-backend"},
		Env: []string{"GIT_PROJECT_ROOT=" + root, "GIT_HTTP_EXPORT_ALL=1"}})
	t.Cleanup(hs.Close)
	return hs.URL
}

// serveSSH serves git-upload-pack of the repositories under root over SSH
// to the holder of key, and returns its address and host key.
func serveSSH(t *testing.T, root string, key ssh.PublicKey) (string, ssh.PublicKey) {
	t.Helper()
	_, hostPriv, _ := ed25519.GenerateKey(rand.Reader)
	hostKey, _ := ssh.NewSignerFromKey(hostPriv)
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if string(k.Marshal()) == string(key.Marshal()) {
			return nil, nil
		}
		return nil, errors.New("unknown key")
	}}
	cfg.AddHostKey(hostKey)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() { defer wg.Done(); serveSSHConn(c, cfg, root) }()
		}
	}()
	return ln.Addr().String(), hostKey.PublicKey()
}

func serveSSHConn(c net.Conn, cfg *ssh.ServerConfig, root string) {
	defer c.Close()
	_, chans, reqs, err := ssh.NewServerConn(c, cfg)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nc := range chans {
		ch, reqs, err := nc.Accept()
		if err != nil {
			return
		}
		var env []string
		for req := range reqs {
			switch req.Type {
			case "env":
				var kv struct{ K, V string }
				ssh.Unmarshal(req.Payload, &kv)
				env = append(env, kv.K+"="+kv.V)
				req.Reply(true, nil)
			case "exec":
				req.Reply(true, nil)
				n := binary.BigEndian.Uint32(req.Payload)
				prog, path, _ := strings.Cut(string(req.Payload[4:4+n]), " ")
				cmd := exec.Command(prog, filepath.Join(root, strings.Trim(path, "'")))
				cmd.Env = append(os.Environ(), env...)
				cmd.Stdin, cmd.Stdout, cmd.Stderr = ch, ch, ch.Stderr()
				status := uint32(0)
				if cmd.Run() != nil {
					status = 1
				}
				ch.SendRequest("exit-status", false, ssh.Marshal(struct{ S uint32 }{status}))
				ch.Close()
				return
			default:
				req.Reply(false, nil)
			}
		}
	}
}

// gitDeploy posts req to the env's gitreceive and returns the output and
// the final event.
func (e *env) gitDeploy(t *testing.T, app string, req *api.GitDeployRequest) (string, api.GitDeployEvent, error) {
	t.Helper()
	hc := &httpclient.Client{URL: e.httpURL, Key: "clusterkey"}
	hreq, err := hc.NewRequest(context.Background(), http.MethodPost, "/"+app+".git/deploy", req)
	if err != nil {
		t.Fatal(err)
	}
	res, err := hc.Send(hreq)
	if err != nil {
		return "", api.GitDeployEvent{}, err
	}
	defer res.Body.Close()
	var out strings.Builder
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		var ev api.GitDeployEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			t.Fatalf("bad event %q: %v", sc.Text(), err)
		}
		out.WriteString(ev.Output)
		if ev.Done {
			return out.String(), ev, nil
		}
	}
	t.Fatalf("no final event; output:\n%s", out.String())
	return "", api.GitDeployEvent{}, nil
}

// TestGitDeploy deploys from repositories served over HTTP and SSH: the
// receiver sees a push of the fetched commit to main with its output
// streamed, and the app's repository then has main at that commit. Bad
// requests get one-line errors.
func TestGitDeploy(t *testing.T) {
	e := setup(t)
	root, mainRev, stableRev := sourceRepo(t, e)
	httpURL := serveHTTP(t, root) + "/src.git"
	deployPub, deployKey := writeKey(t, t.TempDir(), "deploy")
	sshAddr, hostKey := serveSSH(t, root, deployPub)
	keyPEM, _ := os.ReadFile(deployKey)
	_, port, _ := net.SplitHostPort(sshAddr)
	knownHosts := "[127.0.0.1]:" + port + " " + string(ssh.MarshalAuthorizedKey(hostKey))
	_, otherHost := writeKey(t, t.TempDir(), "other")
	otherPEM, _ := os.ReadFile(otherHost)
	otherSigner, _ := ssh.ParsePrivateKey(otherPEM)
	wrongKnownHosts := "[127.0.0.1]:" + port + " " + string(ssh.MarshalAuthorizedKey(otherSigner.PublicKey()))

	ok := []struct {
		name string
		req  api.GitDeployRequest
		rev  string
	}{
		{"http HEAD", api.GitDeployRequest{URL: httpURL}, mainRev},
		{"http branch", api.GitDeployRequest{URL: httpURL, Branch: "stable"}, stableRev},
		{"http rev on a branch", api.GitDeployRequest{URL: httpURL, Rev: mainRev[:10]}, mainRev},
		{"ssh", api.GitDeployRequest{URL: "ssh://git@" + sshAddr + "/src.git", Branch: "stable", SSHKey: string(keyPEM), KnownHosts: knownHosts}, stableRev},
	}
	for _, tt := range ok {
		t.Run(tt.name, func(t *testing.T) {
			out, ev, err := e.gitDeploy(t, "app", &tt.req)
			if err != nil || ev.Error != "" {
				t.Fatalf("deploy: %v %q\n%s", err, ev.Error, out)
			}
			if ev.Rev != tt.rev {
				t.Errorf("deployed %s, want %s", ev.Rev, tt.rev)
			}
			for _, want := range []string{"-----> Fetching ", "-----> Building app at " + tt.rev[:7], "-----> Done"} {
				if !strings.Contains(out, want) {
					t.Errorf("output lacks %q:\n%s", want, out)
				}
			}
			e.recv.mu.Lock()
			p := e.recv.pushes[len(e.recv.pushes)-1]
			e.recv.mu.Unlock()
			if p.Ref != "refs/heads/main" || p.NewRev != tt.rev {
				t.Errorf("push = %s %s, want refs/heads/main %s", p.Ref, p.NewRev, tt.rev)
			}
			if got := strings.TrimSpace(gitIn(t, "", "--git-dir", p.RepoDir, "rev-parse", "main")); got != tt.rev {
				t.Errorf("the app's main is %s, want %s", got, tt.rev)
			}
			if refs := gitIn(t, "", "--git-dir", p.RepoDir, "for-each-ref", taffyRefs); refs != "" {
				t.Errorf("fetched refs left behind:\n%s", refs)
			}
		})
	}

	// A failed build leaves main where it was.
	e.recv.fail = "build failed: no buildpack"
	_, ev, err := e.gitDeploy(t, "app", &api.GitDeployRequest{URL: httpURL})
	if err != nil || ev.Error != "build failed: no buildpack" {
		t.Errorf("failing build: %v %+v", err, ev)
	}
	e.recv.fail = ""

	bad := []struct {
		name string
		req  api.GitDeployRequest
		want string
	}{
		{"unreachable", api.GitDeployRequest{URL: "http://127.0.0.1:1/src.git"}, "fetch http://127.0.0.1:1/src.git: unable to access"},
		{"no such repo", api.GitDeployRequest{URL: serveHTTP(t, root) + "/nope.git"}, "not found"},
		{"no such branch", api.GitDeployRequest{URL: httpURL, Branch: "nope"}, "couldn't find remote ref"},
		{"rev not on the branch", api.GitDeployRequest{URL: httpURL, Branch: "main", Rev: stableRev}, "is not in"},
		{"ssh without the key", api.GitDeployRequest{URL: "ssh://git@" + sshAddr + "/src.git"}, "unable to authenticate"},
		{"ssh unreachable", api.GitDeployRequest{URL: "git@127.0.0.1:src.git", SSHKey: string(keyPEM)}, "127.0.0.1:22: dial tcp"},
		{"ssh wrong host key", api.GitDeployRequest{URL: "ssh://git@" + sshAddr + "/src.git", SSHKey: string(keyPEM), KnownHosts: wrongKnownHosts}, "host key not in the known hosts"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			out, ev, err := e.gitDeploy(t, "app", &tt.req)
			if err != nil || !strings.Contains(ev.Error, tt.want) || strings.Contains(ev.Error, "\n") {
				t.Errorf("error = %v %q, want one line containing %q\n%s", err, ev.Error, tt.want, out)
			}
		})
	}

	refused := []struct {
		name string
		app  string
		req  api.GitDeployRequest
		want error
	}{
		{"file URL", "app", api.GitDeployRequest{URL: "file://" + root + "/src.git"}, api.ErrValidation},
		{"local path", "app", api.GitDeployRequest{URL: root + "/src.git"}, api.ErrValidation},
		{"option", "app", api.GitDeployRequest{URL: "--upload-pack=touch /tmp/x"}, api.ErrValidation},
		{"ext transport", "app", api.GitDeployRequest{URL: "ext::sh -c touch% /tmp/x"}, api.ErrValidation},
		{"bad branch", "app", api.GitDeployRequest{URL: httpURL, Branch: "-x"}, api.ErrValidation},
		{"bad rev", "app", api.GitDeployRequest{URL: httpURL, Rev: "HEAD~1"}, api.ErrValidation},
		{"key with an https URL", "app", api.GitDeployRequest{URL: httpURL, SSHKey: "k"}, api.ErrValidation},
		{"missing app", "missing", api.GitDeployRequest{URL: httpURL}, api.ErrNotFound},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) {
			if _, _, err := e.gitDeploy(t, tt.app, &tt.req); !errors.Is(err, tt.want) {
				t.Errorf("err = %v, want %v", err, tt.want)
			}
		})
	}
}
