package cli

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/rogpeppe/go-internal/testscript"
)

// This file is the original Flynn client (flynn/flynn's controller/client,
// logaggregator/client and the attach client of pkg/cluster, as its CLI
// uses them) for the script flynn_compat.txtar: requests go out with
// exactly the headers and bodies Flynn's client sends, and replies are
// decoded into the types Flynn's client decodes them into (mirrored below,
// with the Go types of the fields Flynn reads), so that a reply Flynn's
// CLI could not read fails the script.

// Flynn's types, as controller/types, logaggregator/client and
// pkg/status declare them (the fields its client and CLI read).
type (
	flynnStatus struct {
		Data struct {
			Status  string           `json:"status"`
			Detail  *json.RawMessage `json:"detail,omitempty"`
			Version string           `json:"version,omitempty"`
		} `json:"data"`
	}
	flynnApp struct {
		ID            string            `json:"id,omitempty"`
		Name          string            `json:"name,omitempty"`
		Meta          map[string]string `json:"meta"`
		Strategy      string            `json:"strategy,omitempty"`
		ReleaseID     string            `json:"release,omitempty"`
		DeployTimeout int32             `json:"deploy_timeout,omitempty"`
		CreatedAt     *time.Time        `json:"created_at,omitempty"`
		UpdatedAt     *time.Time        `json:"updated_at,omitempty"`
	}
	flynnHealthCheck struct {
		Type         string        `json:"type,omitempty"`
		Interval     time.Duration `json:"interval,omitempty"`
		Threshold    int           `json:"threshold,omitempty"`
		KillDown     bool          `json:"kill_down,omitempty"`
		StartTimeout time.Duration `json:"start_timeout,omitempty"`
		Path         string        `json:"path,omitempty"`
		Status       int           `json:"status,omitempty"`
	}
	flynnProcessType struct {
		Args  []string          `json:"args,omitempty"`
		Env   map[string]string `json:"env,omitempty"`
		Ports []struct {
			Port    int    `json:"port"`
			Proto   string `json:"proto"`
			Service *struct {
				Name   string            `json:"name"`
				Create bool              `json:"create,omitempty"`
				Check  *flynnHealthCheck `json:"check,omitempty"`
			} `json:"service,omitempty"`
		} `json:"ports,omitempty"`
		Omni        bool `json:"omni,omitempty"`
		HostNetwork bool `json:"host_network,omitempty"`
		Resources   map[string]struct {
			Request *int64 `json:"request,omitempty"`
			Limit   *int64 `json:"limit,omitempty"`
		} `json:"resources,omitempty"`
		Mounts []struct {
			Location  string `json:"location,omitempty"`
			Target    string `json:"target,omitempty"`
			Writeable bool   `json:"writeable,omitempty"`
		} `json:"mounts,omitempty"`
	}
	flynnRelease struct {
		ID          string                      `json:"id,omitempty"`
		AppID       string                      `json:"app_id,omitempty"`
		ArtifactIDs []string                    `json:"artifacts,omitempty"`
		Env         map[string]string           `json:"env,omitempty"`
		Meta        map[string]string           `json:"meta,omitempty"`
		Processes   map[string]flynnProcessType `json:"processes,omitempty"`
		CreatedAt   *time.Time                  `json:"created_at,omitempty"`
	}
	flynnFormation struct {
		AppID     string                       `json:"app,omitempty"`
		ReleaseID string                       `json:"release,omitempty"`
		Processes map[string]int               `json:"processes,omitempty"`
		Tags      map[string]map[string]string `json:"tags,omitempty"`
		CreatedAt *time.Time                   `json:"created_at,omitempty"`
		UpdatedAt *time.Time                   `json:"updated_at,omitempty"`
	}
	flynnScaleRequest struct {
		ID           string                        `json:"id"`
		AppID        string                        `json:"app"`
		ReleaseID    string                        `json:"release"`
		State        string                        `json:"state"`
		OldProcesses map[string]int                `json:"old_processes,omitempty"`
		NewProcesses *map[string]int               `json:"new_processes,omitempty"`
		OldTags      map[string]map[string]string  `json:"old_tags,omitempty"`
		NewTags      *map[string]map[string]string `json:"new_tags,omitempty"`
		CreatedAt    *time.Time                    `json:"created_at"`
		UpdatedAt    *time.Time                    `json:"updated_at"`
	}
	flynnJob struct {
		ID         string            `json:"id,omitempty"`
		UUID       string            `json:"uuid"`
		HostID     string            `json:"host_id,omitempty"`
		AppID      string            `json:"app,omitempty"`
		ReleaseID  string            `json:"release,omitempty"`
		Type       string            `json:"type,omitempty"`
		State      string            `json:"state,omitempty"`
		Args       []string          `json:"args,omitempty"`
		Meta       map[string]string `json:"meta,omitempty"`
		ExitStatus *int32            `json:"exit_status,omitempty"`
		HostError  *string           `json:"host_error,omitempty"`
		RunAt      *time.Time        `json:"run_at,omitempty"`
		Restarts   *int32            `json:"restarts,omitempty"`
		CreatedAt  *time.Time        `json:"created_at,omitempty"`
		UpdatedAt  *time.Time        `json:"updated_at,omitempty"`
	}
	flynnDeployment struct {
		ID              string                       `json:"id,omitempty"`
		AppID           string                       `json:"app,omitempty"`
		OldReleaseID    string                       `json:"old_release,omitempty"`
		NewReleaseID    string                       `json:"new_release,omitempty"`
		Strategy        string                       `json:"strategy,omitempty"`
		Status          string                       `json:"status,omitempty"`
		Processes       map[string]int               `json:"processes,omitempty"`
		Tags            map[string]map[string]string `json:"tags,omitempty"`
		DeployTimeout   int32                        `json:"deploy_timeout,omitempty"`
		DeployBatchSize *int                         `json:"deploy_batch_size,omitempty"`
		CreatedAt       *time.Time                   `json:"created_at,omitempty"`
		FinishedAt      *time.Time                   `json:"finished_at,omitempty"`
	}
	flynnDeploymentEvent struct {
		AppID        string `json:"app,omitempty"`
		DeploymentID string `json:"deployment,omitempty"`
		ReleaseID    string `json:"release,omitempty"`
		Status       string `json:"status,omitempty"`
		JobType      string `json:"job_type,omitempty"`
		JobState     string `json:"job_state,omitempty"`
		Error        string `json:"error,omitempty"`
	}
	flynnEvent struct {
		ID         int64           `json:"id,omitempty"`
		AppID      string          `json:"app,omitempty"`
		ObjectType string          `json:"object_type,omitempty"`
		ObjectID   string          `json:"object_id,omitempty"`
		Data       json.RawMessage `json:"data,omitempty"`
		CreatedAt  *time.Time      `json:"created_at,omitempty"`
	}
	flynnAppDeletionEvent struct {
		AppDeletion *struct {
			AppID            string            `json:"app"`
			DeletedRoutes    []json.RawMessage `json:"deleted_routes"`
			DeletedResources []json.RawMessage `json:"deleted_resources"`
			DeletedReleases  []flynnRelease    `json:"deleted_releases"`
		} `json:"app_deletion"`
		Error string `json:"error"`
	}
	flynnReleaseDeletionEvent struct {
		ReleaseDeletion *struct {
			AppID         string   `json:"app"`
			ReleaseID     string   `json:"release"`
			RemainingApps []string `json:"remaining_apps"`
			DeletedFiles  []string `json:"deleted_files"`
		} `json:"release_deletion"`
		Error string `json:"error"`
	}
	flynnLogMessage struct {
		HostID      string    `json:"host_id,omitempty"`
		JobID       string    `json:"job_id,omitempty"`
		Msg         string    `json:"msg,omitempty"`
		ProcessType string    `json:"process_type,omitempty"`
		Source      string    `json:"source,omitempty"`
		Stream      string    `json:"stream,omitempty"`
		Timestamp   time.Time `json:"timestamp,omitempty"`
	}
	flynnLogChunk struct {
		Event string          `json:"event,omitempty"`
		Data  json.RawMessage `json:"data,omitempty"`
	}
	flynnJSONError struct {
		Code    string          `json:"code"`
		Message string          `json:"message"`
		Detail  json.RawMessage `json:"detail,omitempty"`
		Retry   bool            `json:"retry"`
	}
)

// flynnTypes maps a name in the scripts to a new value of a Flynn type.
var flynnTypes = map[string]func() any{
	"status":          func() any { return &flynnStatus{} },
	"app":             func() any { return &flynnApp{} },
	"apps":            func() any { return &[]flynnApp{} },
	"release":         func() any { return &flynnRelease{} },
	"releases":        func() any { return &[]flynnRelease{} },
	"formation":       func() any { return &flynnFormation{} },
	"scale_request":   func() any { return &flynnScaleRequest{} },
	"job":             func() any { return &flynnJob{} },
	"jobs":            func() any { return &[]flynnJob{} },
	"deployment":      func() any { return &flynnDeployment{} },
	"deployments":     func() any { return &[]flynnDeployment{} },
	"event":           func() any { return &flynnEvent{} },
	"events":          func() any { return &[]flynnEvent{} },
	"error":           func() any { return &flynnJSONError{} },
	"log_message":     func() any { return &flynnLogMessage{} },
	"log_chunk":       func() any { return &flynnLogChunk{} },
	"volumes":         func() any { return &[]json.RawMessage{} },
	"app_deletion":    func() any { return &flynnAppDeletionEvent{} },
	"release_deleted": func() any { return &flynnReleaseDeletionEvent{} },
	"deployment_ev":   func() any { return &flynnDeploymentEvent{} },
}

// flynnClientCmds are the script commands that play Flynn's client.
func flynnClientCmds() map[string]func(ts *testscript.TestScript, neg bool, args []string) {
	return map[string]func(ts *testscript.TestScript, neg bool, args []string){
		// flynnapi [-raw] [-sse N] [-attach] METHOD PATH [BODYFILE]
		// sends a request as Flynn's client does: HTTP Basic with an
		// empty user and the key, Content-Type: application/json
		// always, and Accept: application/json (Get/Post/Put/Delete),
		// none (-raw: RawReq, as GetAppLog sends), or
		// text/event-stream (-sse: read N events, then close).
		// $VARs in PATH and BODYFILE are expanded. The body (SSE: the
		// data of each event, one per line; -attach: the job's frames)
		// goes to stdout, "status N" and "content-type T" to stderr.
		// -attach upgrades to flynn-attach/0 and prints "stdout: ...",
		// "stderr: ..." and "exit N" or "error: MSG". With ! the status
		// must be 4xx.
		"flynnapi": func(ts *testscript.TestScript, neg bool, args []string) {
			flynnAPI(ts, neg, args)
		},
		// flynndecode TYPE [-lines] decodes stdout into Flynn's TYPE (each
		// line with -lines) as Flynn's client does, failing as it would.
		"flynndecode": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) < 1 || flynnTypes[args[0]] == nil {
				ts.Fatalf("usage: flynndecode TYPE [-lines]")
			}
			out := ts.ReadFile("stdout")
			docs := []string{out}
			if len(args) > 1 && args[1] == "-lines" {
				docs = strings.Split(strings.TrimRight(out, "\n"), "\n")
			}
			for _, d := range docs {
				v := flynnTypes[args[0]]()
				err := json.Unmarshal([]byte(d), v)
				if (err != nil) != neg {
					ts.Fatalf("decode %q into Flynn's %s: %v", d, args[0], err)
				}
			}
		},
		// setjson VAR KEY sets $VAR to the top-level string KEY of the JSON
		// object on stdout.
		"setjson": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) != 2 {
				ts.Fatalf("usage: setjson VAR KEY")
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(ts.ReadFile("stdout")), &m); err != nil {
				ts.Fatalf("setjson: stdout is not a JSON object: %v", err)
			}
			v, ok := m[args[1]].(string)
			if !ok {
				ts.Fatalf("setjson: no string %q in %v", args[1], m)
			}
			ts.Setenv(args[0], v)
		},
		// flynndeploy APP RELEASE deploys as Flynn's DeployAppRelease
		// does: POST /apps/APP/deploy, and unless the deployment finished
		// at once, its events (from the first, past=true) until one says
		// complete or failed.
		"flynndeploy": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) != 2 {
				ts.Fatalf("usage: flynndeploy APP RELEASE")
			}
			if err := flynnDeploy(ts, args[0], args[1]); err != nil {
				ts.Fatalf("flynndeploy: %v", err)
			}
		},
		// flynnscale APP RELEASE PROCESSES_JSON scales as Flynn's
		// ScaleAppRelease does: it opens the app's job and scale_request
		// event stream, PUTs the scale request, prints the release's job
		// events, and returns once the request's scale_request event says
		// complete.
		"flynnscale": func(ts *testscript.TestScript, neg bool, args []string) {
			if len(args) != 3 {
				ts.Fatalf("usage: flynnscale APP RELEASE PROCESSES_JSON")
			}
			if err := flynnScale(ts, args[0], args[1], args[2]); err != nil {
				ts.Fatalf("flynnscale: %v", err)
			}
		},
	}
}

func flynnRequest(ts *testscript.TestScript, method, path string, body io.Reader) *http.Request {
	req, err := http.NewRequest(method, ts.Getenv("CONTROLLER_URL")+path, body)
	if err != nil {
		ts.Fatalf("%v", err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.SetBasicAuth("", ts.Getenv("CONTROLLER_KEY"))
	return req
}

func flynnAPI(ts *testscript.TestScript, neg bool, args []string) {
	raw, attach, sse := false, false, 0
	for len(args) > 0 && strings.HasPrefix(args[0], "-") {
		switch args[0] {
		case "-raw":
			raw = true
		case "-attach":
			attach = true
		case "-sse":
			if len(args) < 2 {
				ts.Fatalf("-sse needs a count")
			}
			n, err := strconv.Atoi(args[1])
			if err != nil {
				ts.Fatalf("-sse %s: %v", args[1], err)
			}
			sse, args = n, args[1:]
		default:
			ts.Fatalf("unknown flag %s", args[0])
		}
		args = args[1:]
	}
	if len(args) < 2 {
		ts.Fatalf("usage: flynnapi [-raw] [-sse N] [-attach] METHOD PATH [BODYFILE]")
	}
	var body io.Reader
	if len(args) > 2 {
		body = strings.NewReader(os.Expand(ts.ReadFile(args[2]), ts.Getenv))
	}
	req := flynnRequest(ts, args[0], os.Expand(args[1], ts.Getenv), body)
	switch {
	case sse > 0:
		req.Header.Set("Accept", "text/event-stream")
	case attach:
		req.Header.Set("Upgrade", "flynn-attach/0")
		req.Header.Set("Connection", "upgrade")
		req.Header.Set("Accept", "application/json")
	case !raw:
		req.Header.Set("Accept", "application/json")
	}
	var stdout, stderr bytes.Buffer
	defer func() {
		ts.Stdout().Write(stdout.Bytes())
		ts.Stderr().Write(stderr.Bytes())
	}()
	var res *http.Response
	var conn net.Conn
	var err error
	if attach {
		u, _ := url.Parse(ts.Getenv("CONTROLLER_URL"))
		conn, err = net.Dial("tcp", u.Host)
		if err != nil {
			ts.Fatalf("%v", err)
		}
		defer conn.Close()
		if err := req.Write(conn); err != nil {
			ts.Fatalf("%v", err)
		}
		br := bufio.NewReader(conn)
		res, err = http.ReadResponse(br, req)
		if err == nil && res.StatusCode == http.StatusSwitchingProtocols {
			fmt.Fprintf(&stderr, "status %d\nupgrade %s\n", res.StatusCode, res.Header.Get("Upgrade"))
			readAttach(ts, br, conn, &stdout)
			return
		}
	} else {
		res, err = http.DefaultClient.Do(req)
	}
	if err != nil {
		ts.Fatalf("%s %s: %v", args[0], args[1], err)
	}
	defer res.Body.Close()
	fmt.Fprintf(&stderr, "status %d\ncontent-type %s\n", res.StatusCode, res.Header.Get("Content-Type"))
	if bad := res.StatusCode >= 400; bad != neg || neg && res.StatusCode >= 500 {
		b, _ := io.ReadAll(res.Body)
		stdout.Write(b)
		ts.Fatalf("%s %s: status %d (want a %s): %s", args[0], args[1], res.StatusCode, map[bool]string{true: "4xx", false: "success"}[neg], b)
	}
	if sse == 0 {
		io.Copy(&stdout, res.Body)
		return
	}
	// Flynn's SSE reader: "data: " lines (joined) make an event; other
	// fields are ignored.
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var data []byte
	for n := 0; n < sse && sc.Scan(); {
		line := sc.Bytes()
		switch {
		case bytes.HasPrefix(line, []byte("data: ")):
			data = append(data, bytes.TrimPrefix(line, []byte("data: "))...)
		case len(line) == 0 && data != nil:
			stdout.Write(append(data, '\n'))
			data = nil
			n++
		}
	}
}

// readAttach plays Flynn's attach client: stdin EOF at once, then frames
// until the exit.
func readAttach(ts *testscript.TestScript, r *bufio.Reader, w io.Writer, out io.Writer) {
	// CloseWrite: an empty stdin data frame.
	w.Write([]byte{3, 0, 0, 0, 0, 0})
	var buf [4]byte
	for {
		typ, err := r.ReadByte()
		if err != nil {
			ts.Fatalf("attach: stream ended before an exit frame: %v", err)
		}
		switch typ {
		case 3: // data
			stream, _ := r.ReadByte()
			io.ReadFull(r, buf[:])
			p := make([]byte, binary.BigEndian.Uint32(buf[:]))
			io.ReadFull(r, p)
			if len(p) > 0 {
				fmt.Fprintf(out, "%s: %s", map[byte]string{1: "stdout", 2: "stderr", 3: "initlog"}[stream], p)
			}
		case 5: // exit
			io.ReadFull(r, buf[:])
			fmt.Fprintf(out, "exit %d\n", binary.BigEndian.Uint32(buf[:]))
			return
		case 2: // error
			io.ReadFull(r, buf[:])
			p := make([]byte, binary.BigEndian.Uint32(buf[:]))
			io.ReadFull(r, p)
			fmt.Fprintf(out, "error: %s\n", p)
			return
		default:
			ts.Fatalf("attach: unknown frame type %d", typ)
		}
	}
}

func flynnScale(ts *testscript.TestScript, app, release, procs string) error {
	events, body, err := flynnEvents(ts, url.Values{"app_id": {app}, "object_types": {"job,scale_request"}})
	if err != nil {
		return err
	}
	defer body.Close()
	var processes map[string]int
	if err := json.Unmarshal([]byte(procs), &processes); err != nil {
		return err
	}
	tags := map[string]map[string]string{}
	reqBody, _ := json.Marshal(&flynnScaleRequest{AppID: app, ReleaseID: release, State: "pending", NewProcesses: &processes, NewTags: &tags})
	preq := flynnRequest(ts, "PUT", "/apps/"+app+"/scale/"+release, bytes.NewReader(reqBody))
	preq.Header.Set("Accept", "application/json")
	pres, err := http.DefaultClient.Do(preq)
	if err != nil {
		return err
	}
	var created flynnScaleRequest
	err = json.NewDecoder(pres.Body).Decode(&created)
	pres.Body.Close()
	if err != nil || pres.StatusCode != 200 {
		return fmt.Errorf("PUT scale request: status %d, %v", pres.StatusCode, err)
	}
	fmt.Fprintf(ts.Stdout(), "scale request %s %s\n", created.ID, created.State)
	timeout := time.After(time.Minute)
	for {
		select {
		case e, ok := <-events:
			if !ok {
				return errors.New("event stream closed unexpectedly")
			}
			switch e.ObjectType {
			case "job":
				var j flynnJob
				if err := json.Unmarshal(e.Data, &j); err != nil {
					return fmt.Errorf("decode job event: %w", err)
				}
				if j.ReleaseID == release {
					fmt.Fprintf(ts.Stdout(), "==> %s %s\n", j.Type, j.State)
				}
			case "scale_request":
				var r flynnScaleRequest
				if err := json.Unmarshal(e.Data, &r); err != nil {
					return fmt.Errorf("decode scale request event: %w", err)
				}
				if r.ID != created.ID {
					continue
				}
				switch r.State {
				case "cancelled":
					return errors.New("scale request cancelled")
				case "complete":
					fmt.Fprintf(ts.Stdout(), "scale request %s complete\n", r.ID)
					return nil
				}
			}
		case <-timeout:
			return errors.New("timed out waiting for the scale request to complete (Flynn's client waits 30s by default)")
		}
	}
}

// flynnEvents opens an SSE event stream as Flynn's client does and sends
// its events on the returned channel until the body ends.
func flynnEvents(ts *testscript.TestScript, q url.Values) (<-chan flynnEvent, io.Closer, error) {
	req := flynnRequest(ts, "GET", "/events?"+q.Encode(), nil)
	req.Header.Set("Accept", "text/event-stream")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	if res.StatusCode != 200 {
		res.Body.Close()
		return nil, nil, fmt.Errorf("event stream: status %d", res.StatusCode)
	}
	events := make(chan flynnEvent)
	go func() {
		defer close(events)
		sc := bufio.NewScanner(res.Body)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			line, ok := strings.CutPrefix(sc.Text(), "data: ")
			if !ok {
				continue
			}
			var e flynnEvent
			if json.Unmarshal([]byte(line), &e) == nil {
				events <- e
			}
		}
	}()
	return events, res.Body, nil
}

func flynnDeploy(ts *testscript.TestScript, app, release string) error {
	body, _ := json.Marshal(map[string]string{"id": release})
	req := flynnRequest(ts, "POST", "/apps/"+app+"/deploy", bytes.NewReader(body))
	req.Header.Set("Accept", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	var d flynnDeployment
	err = json.NewDecoder(res.Body).Decode(&d)
	res.Body.Close()
	if err != nil || res.StatusCode != 200 {
		return fmt.Errorf("POST deploy: status %d, %v", res.StatusCode, err)
	}
	fmt.Fprintf(ts.Stdout(), "deployment %s %s\n", d.ID, d.Status)
	if d.FinishedAt != nil {
		return nil
	}
	events, body2, err := flynnEvents(ts, url.Values{"app_id": {d.AppID}, "object_id": {d.ID}, "object_types": {"deployment"}, "past": {"true"}})
	if err != nil {
		return err
	}
	defer body2.Close()
	timeout := time.After(time.Minute)
	for {
		select {
		case e, ok := <-events:
			if !ok {
				return errors.New("unexpected close of deployment event stream")
			}
			var de flynnDeploymentEvent
			if err := json.Unmarshal(e.Data, &de); err != nil {
				return fmt.Errorf("decode deployment event: %w", err)
			}
			fmt.Fprintln(ts.Stdout(), strings.Join(strings.Fields("event "+de.Status+" "+de.JobType+" "+de.JobState), " "))
			switch de.Status {
			case "complete":
				return nil
			case "failed":
				return fmt.Errorf("deployment failed: %s", de.Error)
			}
		case <-timeout:
			return errors.New("timed out waiting for the deployment to complete")
		}
	}
}
