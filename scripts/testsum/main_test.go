package main

import (
	"strings"
	"testing"
	"time"
)

func TestSummary(t *testing.T) {
	events := `{"Action":"start","Package":"p/a"}
{"Action":"run","Package":"p/a","Test":"TestOK"}
{"Action":"output","Package":"p/a","Test":"TestOK","Output":"=== RUN   TestOK\n"}
{"Action":"output","Package":"p/a","Test":"TestOK","Output":"quiet log of a passing test\n"}
{"Action":"pass","Package":"p/a","Test":"TestOK","Elapsed":0.1}
{"Action":"run","Package":"p/a","Test":"TestSkip"}
{"Action":"skip","Package":"p/a","Test":"TestSkip"}
{"Action":"run","Package":"p/a","Test":"TestBad"}
{"Action":"output","Package":"p/a","Test":"TestBad","Output":"    x_test.go:9: waited for the thing\n"}
{"Action":"fail","Package":"p/a","Test":"TestBad","Elapsed":1.5}
{"Action":"output","Package":"p/a","Output":"FAIL\n"}
{"Action":"output","Package":"p/a","Output":"FAIL\tp/a\t1.7s\n"}
{"Action":"fail","Package":"p/a","Elapsed":1.7}
{"Action":"output","Package":"p/b","Output":"PASS\n"}
{"Action":"output","Package":"p/b","Output":"ok  \tp/b\t0.2s\n"}
{"Action":"pass","Package":"p/b","Elapsed":0.2}
{"Action":"run","Package":"p/c","Test":"TestHang"}
{"Action":"output","Package":"p/c","Test":"TestHang","Output":"    waiting for the daemon\n"}
{"Action":"output","Package":"p/c","Output":"panic: test timed out after 1m0s\n"}
{"Action":"fail","Package":"p/c","Elapsed":60}
{"Action":"output","Package":"p/d","Output":"?   \tp/d\t[no test files]\n"}
{"Action":"skip","Package":"p/d"}
{"ImportPath":"p/e","Action":"build-output","Output":"e.go:1: syntax error\n"}
{"ImportPath":"p/e","Action":"build-fail"}
`
	var out strings.Builder
	s := newSummary(&out)
	s.read(strings.NewReader(events))
	s.finish(&out, 90*time.Second)
	got := out.String()
	for _, want := range []string{
		"waited for the thing",
		"FAIL\tp/a\t1.7s",
		"ok  \tp/b\t0.2s",
		"=== TestHang did not finish; its output:\n    waiting for the daemon",
		"panic: test timed out",
		"[no test files]",
		"e.go:1: syntax error",
		"packages: 1 ok, 2 failed, 1 without tests",
		"tests:    1 passed, 1 failed, 1 skipped",
		"BUILD FAILED: p/e",
		"FAILED: p/a TestBad (1.5s)",
		"FAILED: p/c TestHang (did not finish)",
		"FAIL in 1m30s",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("output lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "quiet log of a passing test") {
		t.Errorf("output has a passing test's log:\n%s", got)
	}
	if !s.failed() {
		t.Error("failed() = false")
	}
}
