// Command testsum runs `go test -json` with the arguments it is given and
// prints what a person reading a CI log needs: each package's result line,
// the whole output of every test that failed (and of tests still running
// when their package failed, such as at a timeout), build errors, and at
// the end a summary of packages, tests passed, failed and skipped, and the
// total time. It exits non-zero when go test did.
//
//	go run ./scripts/testsum -count=1 -p 1 ./...
package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sort"
	"strings"
	"time"
)

func main() {
	start := time.Now()
	gocmd := os.Getenv("GO") // the Makefile's $(GO)
	if gocmd == "" {
		gocmd = "go"
	}
	cmd := exec.Command(gocmd, append([]string{"test", "-json"}, os.Args[1:]...)...)
	cmd.Stderr = os.Stderr
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	if err := cmd.Start(); err != nil {
		fmt.Fprintln(os.Stderr, "testsum:", err)
		os.Exit(2)
	}
	s := newSummary(os.Stdout)
	s.read(stdout)
	runErr := cmd.Wait()
	s.finish(os.Stdout, time.Since(start))
	if runErr != nil || s.failed() {
		if runErr != nil {
			fmt.Fprintf(os.Stdout, "go test: %v\n", runErr)
		}
		os.Exit(1)
	}
}

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	ImportPath string // build-output, build-fail
	Test       string
	Elapsed    float64
	Output     string
}

type key struct{ pkg, test string }

// summary follows the events and keeps the output of what has not ended.
type summary struct {
	w       io.Writer
	out     map[key][]string // output of tests and packages still running
	running map[key]bool

	pkgOK, pkgFail, pkgNoTests int
	pass, fail, skip           int
	failures                   []string // "pkg TestName (1.2s)"
	build                      map[string][]string
	buildFailed                []string
	slowest                    []pkgTime
}

type pkgTime struct {
	pkg string
	sec float64
}

func newSummary(w io.Writer) *summary {
	return &summary{w: w, out: map[key][]string{}, running: map[key]bool{}, build: map[string][]string{}}
}

func (s *summary) read(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		var e event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			// Not an event (go test writes some errors as text).
			fmt.Fprintln(s.w, sc.Text())
			continue
		}
		s.handle(e)
	}
}

func (s *summary) handle(e event) {
	k := key{e.Package, e.Test}
	switch e.Action {
	case "build-output":
		s.build[e.ImportPath] = append(s.build[e.ImportPath], e.Output)
	case "build-fail":
		s.buildFailed = append(s.buildFailed, e.ImportPath)
		fmt.Fprint(s.w, strings.Join(s.build[e.ImportPath], ""))
	case "run":
		s.running[k] = true
	case "output":
		s.out[k] = append(s.out[k], e.Output)
	case "pass", "skip", "fail":
		if e.Test == "" {
			s.endPackage(e)
			return
		}
		delete(s.running, k)
		switch e.Action {
		case "pass":
			s.pass++
		case "skip":
			s.skip++
		case "fail":
			s.fail++
			s.failures = append(s.failures, fmt.Sprintf("%s %s (%.1fs)", e.Package, e.Test, e.Elapsed))
			fmt.Fprint(s.w, strings.Join(s.out[k], ""))
		}
		delete(s.out, k)
	}
}

func (s *summary) endPackage(e event) {
	k := key{e.Package, ""}
	lines := s.out[k]
	delete(s.out, k)
	switch {
	case e.Action == "fail":
		s.pkgFail++
		// Tests that never ended (a panic, a timeout) say what they were
		// doing; then the package's own output (the panic, FAIL lines).
		var stuck []string
		for rk := range s.running {
			if rk.pkg == e.Package {
				stuck = append(stuck, rk.test)
			}
		}
		sort.Strings(stuck)
		for _, t := range stuck {
			fmt.Fprintf(s.w, "=== %s did not finish; its output:\n%s", t, strings.Join(s.out[key{e.Package, t}], ""))
			s.failures = append(s.failures, fmt.Sprintf("%s %s (did not finish)", e.Package, t))
			delete(s.running, key{e.Package, t})
		}
		fmt.Fprint(s.w, strings.Join(lines, ""))
	case e.Action == "skip":
		s.pkgNoTests++
		fmt.Fprint(s.w, strings.Join(lines, "")) // "?   pkg [no test files]"
	default:
		s.pkgOK++
		s.slowest = append(s.slowest, pkgTime{e.Package, e.Elapsed})
		// Only the result line ("ok  pkg 1.2s"), not PASS or logs.
		for _, l := range lines {
			if strings.HasPrefix(l, "ok ") {
				fmt.Fprint(s.w, l)
			}
		}
	}
}

func (s *summary) failed() bool {
	return s.pkgFail > 0 || s.fail > 0 || len(s.buildFailed) > 0
}

func (s *summary) finish(w io.Writer, total time.Duration) {
	fmt.Fprintln(w, "\n==== test summary")
	fmt.Fprintf(w, "packages: %d ok, %d failed, %d without tests\n", s.pkgOK, s.pkgFail, s.pkgNoTests)
	fmt.Fprintf(w, "tests:    %d passed, %d failed, %d skipped (subtests included)\n", s.pass, s.fail, s.skip)
	sort.Slice(s.slowest, func(i, j int) bool { return s.slowest[i].sec > s.slowest[j].sec })
	if len(s.slowest) > 5 {
		s.slowest = s.slowest[:5]
	}
	var slow []string
	for _, p := range s.slowest {
		slow = append(slow, fmt.Sprintf("%s %.0fs", strings.TrimPrefix(p.pkg, "github.com/flynnrebuilt/flynn/"), p.sec))
	}
	if len(slow) > 0 {
		fmt.Fprintf(w, "slowest:  %s\n", strings.Join(slow, ", "))
	}
	for _, b := range s.buildFailed {
		fmt.Fprintf(w, "BUILD FAILED: %s\n", b)
	}
	for _, f := range s.failures {
		fmt.Fprintf(w, "FAILED: %s\n", f)
	}
	result := "PASS"
	if s.failed() {
		result = "FAIL"
	}
	fmt.Fprintf(w, "%s in %s\n", result, total.Round(time.Second))
}
