package gitreceive

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// The pre-receive hook is a separate process (git runs it); it reports the
// pushed refs to the server over a unix socket and relays the build output
// it streams back. The final status travels in an HTTP trailer.

const statusTrailer = "Flynn-Hook-Status"

type hookRequest struct {
	App    string `json:"app"`
	Ref    string `json:"ref"`
	OldRev string `json:"old_rev"`
	NewRev string `json:"new_rev"`
	Repo   string `json:"repo"`
	// Env is git's quarantine environment of the hook: the pushed objects
	// are only visible with it until the hook accepts the push.
	Env []string `json:"env"`
}

type hookServer struct {
	path string
	ln   net.Listener
	recv Receiver
	log  *slog.Logger
}

func newHookServer(path string, recv Receiver, log *slog.Logger) (*hookServer, error) {
	ln, err := listenUnix(path)
	if err != nil {
		return nil, err
	}
	return &hookServer{path: path, ln: ln, recv: recv, log: log}, nil
}

func (h *hookServer) run(ctx context.Context) error {
	srv := httpapi.NewServer(http.HandlerFunc(h.serve), h.log, httpapi.Limits{})
	srv.BaseContext = func(net.Listener) context.Context { return ctx }
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(httpapi.LimitWrites(h.ln, httpapi.DefaultWriteIdleTimeout)) }()
	select {
	case <-ctx.Done():
		srv.Close()
		<-errc
		os.Remove(h.path)
		return nil
	case err := <-errc:
		return err
	}
}

func (h *hookServer) serve(w http.ResponseWriter, r *http.Request) {
	var req hookRequest
	if err := json.NewDecoder(r.Body).Decode(&req); err != nil {
		http.Error(w, "bad hook request", http.StatusBadRequest)
		return
	}
	w.Header().Set("Trailer", statusTrailer)
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(http.StatusOK)
	out := flushingResponse{w}
	err := h.recv.Receive(r.Context(), Push{App: req.App, Ref: req.Ref, OldRev: req.OldRev, NewRev: req.NewRev, RepoDir: req.Repo, GitEnv: req.Env}, out)
	status := "ok"
	if err != nil {
		h.log.Info("push rejected", "app", req.App, "rev", req.NewRev, "err", err)
		status = "error: " + strings.ReplaceAll(err.Error(), "\n", " ")
	}
	w.Header().Set(statusTrailer, status)
}

const zeroRev = "0000000000000000000000000000000000000000"

// HookMain is the pre-receive hook. git gives it "old new ref" lines on
// stdin; it refuses anything but an update of main or master, asks the
// server to build, relays the output and exits non-zero to reject the push.
func HookMain(stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	sock, app := getenv("FLYNN_HOOK_SOCKET"), getenv("FLYNN_HOOK_APP")
	if sock == "" || app == "" {
		fmt.Fprintln(stderr, "gitreceive hook: not run by gitreceive (FLYNN_HOOK_SOCKET unset)")
		return 1
	}
	var push *hookRequest
	sc := bufio.NewScanner(stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) != 3 {
			continue
		}
		old, nw, ref := f[0], f[1], f[2]
		if ref != "refs/heads/main" && ref != "refs/heads/master" {
			fmt.Fprintf(stderr, "Push rejected: only a push to main or master deploys (you pushed %s). Try: git push flynn HEAD:main\n", strings.TrimPrefix(ref, "refs/heads/"))
			return 1
		}
		if nw == zeroRev {
			fmt.Fprintf(stderr, "Push rejected: deleting %s is not allowed\n", ref)
			return 1
		}
		if push != nil {
			fmt.Fprintln(stderr, "Push rejected: push one of main or master, not both")
			return 1
		}
		push = &hookRequest{App: app, Ref: ref, OldRev: old, NewRev: nw}
	}
	if push == nil {
		return 0
	}
	dir, err := os.Getwd() // git runs hooks in the bare repo
	if err == nil {
		push.Repo, _ = filepath.Abs(dir)
	}
	if gd := getenv("GIT_DIR"); gd != "" {
		if abs, err := filepath.Abs(gd); err == nil {
			push.Repo = abs
		}
	}
	for _, k := range []string{"GIT_OBJECT_DIRECTORY", "GIT_ALTERNATE_OBJECT_DIRECTORIES", "GIT_QUARANTINE_PATH"} {
		if v := getenv(k); v != "" {
			push.Env = append(push.Env, k+"="+v)
		}
	}
	body, _ := json.Marshal(push)
	client := &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", sock)
		},
	}}
	res, err := client.Post("http://hook/receive", "application/json", strings.NewReader(string(body)))
	if err != nil {
		fmt.Fprintf(stderr, "Push rejected: cannot reach the build service: %v\n", err)
		return 1
	}
	defer res.Body.Close()
	if _, err := io.Copy(stdout, res.Body); err != nil {
		fmt.Fprintf(stderr, "Push rejected: build output interrupted: %v\n", err)
		return 1
	}
	status := res.Trailer.Get(statusTrailer)
	if status == "ok" {
		return 0
	}
	if status == "" {
		status = "error: the build service ended without a result"
	}
	fmt.Fprintf(stderr, "Push rejected: %s\n", strings.TrimPrefix(status, "error: "))
	return 1
}
