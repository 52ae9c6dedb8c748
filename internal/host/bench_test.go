package host_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/host/network"
	"github.com/flynnrebuilt/flynn/internal/host/runtime"
	"github.com/flynnrebuilt/flynn/internal/image"
)

// The start benchmarks measure the time from the API call to a running
// process, against a bare `runc run -d` of the busybox rootfs (no overlay,
// CNI, supervisor or API). Run with -benchtime=1x; they report ms/job.
//
// BenchmarkStartSequential starts 50 jobs one by one through the agent and
// 50 containers with bare runc, alternating between the two (each pair in
// turn order), so that both meet the same machine: its speed drifts by a
// third over minutes, which a run of the one after the other took into
// their ratio. Each start begins on a quiet host, the agent having remade
// the spare network namespace the last job took (as an agent that has been
// up a while has). BenchmarkStartAgentConcurrent and
// BenchmarkStartBareRuncConcurrent start 20 at once, the agent's once it
// has made its spares (a burst uses them up and goes on without).
//
// The agent's benchmarks also log where a start's time went: the phases
// the agent logs for each job it starts (at debug level), and "api", the
// rest of the client's time (HTTP, JSON).

const (
	benchSeq  = 50
	benchConc = 20
)

func BenchmarkStartSequential(b *testing.B) {
	a := startAgent(b)
	a.add(busyboxJob("warm", "true")) // fetch the layer outside the timing
	run, cleanup := bareRunc(b)
	b.ResetTimer()
	var agent, bare time.Duration
	for n := 0; n < b.N; n++ {
		var ids []string
		for i := 0; i < benchSeq; i++ {
			startAgentJob := func() {
				j := busyboxJob(fmt.Sprintf("seq-%d-%d", n, i), "sleep", "1000")
				start := time.Now()
				a.add(j)
				agent += time.Since(start)
			}
			startBare := func() {
				id := fmt.Sprintf("flt-bare-%d-%d", n, i)
				start := time.Now()
				if err := run(id); err != nil {
					cleanup(ids)
					b.Fatal(err)
				}
				bare += time.Since(start)
				ids = append(ids, id)
			}
			order := []func(){startAgentJob, startBare}
			if i%2 == 1 {
				order[0], order[1] = order[1], order[0]
			}
			for _, f := range order {
				b.StopTimer()
				waitAllSpares(b, a)
				b.StartTimer()
				f()
			}
		}
		b.StopTimer()
		cleanup(ids)
		killAll(b, a)
		b.StartTimer()
	}
	jobs := float64(b.N * benchSeq)
	b.ReportMetric(float64(agent.Microseconds())/1000/jobs, "ms/job")
	b.ReportMetric(float64(bare.Microseconds())/1000/jobs, "runc-ms/job")
	b.ReportMetric(float64(agent)/float64(bare), "x-runc")
	logPhases(b, a, "seq-", agent)
}

func BenchmarkStartAgentConcurrent(b *testing.B) {
	a := startAgent(b)
	a.add(busyboxJob("warm", "true"))
	waitAllSpares(b, a)
	b.ResetTimer()
	var wall, latency time.Duration
	for n := 0; n < b.N; n++ {
		start := time.Now()
		var wg sync.WaitGroup
		var mu sync.Mutex
		for i := 0; i < benchConc; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				j := busyboxJob(fmt.Sprintf("conc-%d-%d", n, i), "sleep", "1000")
				t := time.Now()
				aj, err := a.client.AddJob(context.Background(), j)
				mu.Lock()
				latency += time.Since(t)
				mu.Unlock()
				if err != nil || aj.Status != api.HostJobRunning {
					b.Errorf("add %s: %v %+v", j.ID, err, aj)
				}
			}()
		}
		wg.Wait()
		wall += time.Since(start)
		b.StopTimer()
		killAll(b, a)
		waitAllSpares(b, a)
		b.StartTimer()
	}
	b.ReportMetric(float64(wall.Milliseconds())/float64(b.N), "ms/20jobs")
	b.ReportMetric(float64(wall.Milliseconds())/float64(b.N*benchConc), "ms/job")
	logPhases(b, a, "conc-", latency)
}

// waitAllSpares waits until the agent has all its spare network
// namespaces made: a quiet host, as one that has been up a while is.
func waitAllSpares(b *testing.B, a *agentProc) {
	b.Helper()
	waitSpares(b, a, "all made", func(p map[string]bool) bool { return len(p) == network.DefaultSpares })
}

var (
	startedLine = regexp.MustCompile(`msg="job started" .*job=(\S+) took=(\S+) (.*)`)
	phaseAttr   = regexp.MustCompile(`phases\.(\w+)=(\S+)`)
)

// logPhases logs where the starts of the jobs whose ids have prefix went,
// from the agent's "job started" lines: each phase's mean per job and
// share of the client's time (client, the sum over those jobs), the
// client's time beyond the agent's being "api".
func logPhases(b *testing.B, a *agentProc, prefix string, client time.Duration) {
	var names []string
	sums := map[string]time.Duration{}
	var jobs int
	var took time.Duration
	for _, m := range startedLine.FindAllStringSubmatch(a.logs.String(), -1) {
		if !strings.HasPrefix(m[1], prefix) {
			continue
		}
		d, err := time.ParseDuration(m[2])
		if err != nil {
			b.Fatalf("job started line: took=%s: %v", m[2], err)
		}
		jobs++
		took += d
		for _, p := range phaseAttr.FindAllStringSubmatch(m[3], -1) {
			d, err := time.ParseDuration(p[2])
			if err != nil {
				b.Fatalf("job started line: %s=%s: %v", p[1], p[2], err)
			}
			if _, ok := sums[p[1]]; !ok {
				names = append(names, p[1])
			}
			sums[p[1]] += d
		}
	}
	if jobs == 0 {
		b.Fatalf("the agent logged no start of a %s job", prefix)
	}
	names = append(names, "api")
	sums["api"] = client - took
	// Four a line: the testing package cuts a benchmark's log at ten.
	var out strings.Builder
	fmt.Fprintf(&out, "phases of %d starts (mean ms/job, share of the client's time):", jobs)
	for i, n := range names {
		if i%4 == 0 {
			out.WriteString("\n")
		}
		fmt.Fprintf(&out, "  %-10s %6.2f %5.1f%%", n, float64(sums[n].Microseconds())/1000/float64(jobs), 100*float64(sums[n])/float64(client))
	}
	b.Log(out.String())
}

func killAll(b testing.TB, a *agentProc) {
	ctx := context.Background()
	jobs, _ := a.client.ListJobs(ctx)
	var wg sync.WaitGroup
	for _, j := range jobs {
		if j.Status == api.HostJobRunning {
			wg.Add(1)
			go func() {
				defer wg.Done()
				a.client.SignalJob(ctx, j.Job.ID, "KILL")
				a.waitEnded(j.Job.ID)
			}()
		}
	}
	wg.Wait()
}

// bareRunc prepares a bundle whose rootfs is the extracted busybox layer.
func bareRunc(b *testing.B) (run func(id string) error, cleanup func(ids []string)) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	dir := b.TempDir()
	store, err := image.NewStore(filepath.Join(dir, "images"))
	if err != nil {
		b.Fatal(err)
	}
	_, layer, err := store.ImportFile(context.Background(), busyboxLayer, "")
	if err != nil {
		b.Fatal(err)
	}
	bundle := filepath.Join(dir, "bundle")
	os.Mkdir(bundle, 0o755)
	if out, err := exec.Command("runc", "spec", "--bundle", bundle).CombinedOutput(); err != nil {
		b.Fatalf("runc spec: %v %s", err, out)
	}
	var spec map[string]any
	raw, _ := os.ReadFile(filepath.Join(bundle, "config.json"))
	json.Unmarshal(raw, &spec)
	spec["root"] = map[string]any{"path": layer, "readonly": true}
	proc := spec["process"].(map[string]any)
	proc["terminal"] = false
	proc["args"] = []string{"sleep", "1000"}
	linux := spec["linux"].(map[string]any)
	linux["cgroupsPath"] = "/flt-bench-bare/" // each run gets its own below
	raw, _ = json.Marshal(spec)
	os.WriteFile(filepath.Join(bundle, "config.json"), raw, 0o644)
	// runc's state directory gets one directory per container, as the
	// agent's does, and is marked as the agent marks its own.
	root := filepath.Join(dir, "runc")
	if err := os.Mkdir(root, 0o711); err != nil {
		b.Fatal(err)
	}
	runtime.MarkTopDir(root)
	run = func(id string) error {
		// A cgroup per container, like the agent's.
		linux["cgroupsPath"] = "/flt-bench-bare/" + id
		raw, _ := json.Marshal(spec)
		if err := os.WriteFile(filepath.Join(bundle, "config.json"), raw, 0o644); err != nil {
			return err
		}
		// runc run -d hands its stdio to the container, so it must not
		// be a pipe this process waits on.
		cmd := exec.Command("runc", "--root", root, "--log", filepath.Join(dir, "runc.log"), "run", "-d", "--bundle", bundle, id)
		if err := cmd.Run(); err != nil {
			b, _ := os.ReadFile(filepath.Join(dir, "runc.log"))
			return fmt.Errorf("runc run: %v %s", err, b)
		}
		return nil
	}
	cleanup = func(ids []string) {
		for _, id := range ids {
			exec.Command("runc", "--root", root, "delete", "-f", id).Run()
		}
		ents, _ := os.ReadDir("/sys/fs/cgroup")
		for _, e := range ents {
			os.Remove(filepath.Join("/sys/fs/cgroup", e.Name(), "flt-bench-bare"))
		}
	}
	return run, cleanup
}

func BenchmarkStartBareRuncConcurrent(b *testing.B) {
	if os.Geteuid() != 0 {
		b.Skip("needs root")
	}
	// Concurrent runs need one bundle each (config.json differs by cgroup).
	var wall time.Duration
	for n := 0; n < b.N; n++ {
		var runs []func(string) error
		var cleanups []func([]string)
		for i := 0; i < benchConc; i++ {
			r, c := bareRunc(b)
			runs, cleanups = append(runs, r), append(cleanups, c)
		}
		start := time.Now()
		var wg sync.WaitGroup
		for i := 0; i < benchConc; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := runs[i](fmt.Sprintf("flt-barec-%d-%d", n, i)); err != nil {
					b.Error(err)
				}
			}()
		}
		wg.Wait()
		wall += time.Since(start)
		b.StopTimer()
		for i, c := range cleanups {
			c([]string{fmt.Sprintf("flt-barec-%d-%d", n, i)})
		}
		b.StartTimer()
	}
	b.ReportMetric(float64(wall.Milliseconds())/float64(b.N), "ms/20jobs")
	b.ReportMetric(float64(wall.Milliseconds())/float64(b.N*benchConc), "ms/job")
}
