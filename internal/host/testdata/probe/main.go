// Command probe is what the host agent's isolation tests run inside jobs
// as a hostile tenant would: it tries a connection and prints how it
// ended, one line per attempt, in words the tests match.
//
//	probe tcp ADDR       connect to ADDR over TCP
//	probe supervisors [NAME...]  ask every job supervisor socket on the host
//	                             (or those named) for logs
package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: probe tcp ADDR | probe supervisors")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "tcp":
		for _, addr := range os.Args[2:] {
			fmt.Printf("%s %s\n", addr, dialTCP(addr))
		}
	case "supervisors":
		supervisors(os.Args[2:])
	default:
		fmt.Fprintf(os.Stderr, "probe: unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// dialTCP names how a connection to addr ended: connected, blocked (the
// firewall answered: host or network prohibited), refused (nothing
// listens), timeout, or the error.
func dialTCP(addr string) string {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	switch {
	case err == nil:
		c.Close()
		return "connected"
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return "blocked"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case os.IsTimeout(err):
		return "timeout"
	default:
		return "error: " + err.Error()
	}
}

// supervisors finds the abstract sockets of job supervisors in
// /proc/net/unix (the host's, in a host network job) and asks each (of
// only, when given) for its job's logs: "open" when it answered with
// anything, "closed" when it hung up first.
func supervisors(only []string) {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		fmt.Println("error:", err)
		return
	}
	defer f.Close()
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 8 {
			continue
		}
		name := fields[len(fields)-1]
		if !strings.HasPrefix(name, "@flynn-supervisor-") || seen[name] || (len(only) > 0 && !slices.Contains(only, name)) {
			continue
		}
		seen[name] = true
		fmt.Printf("%s %s\n", name, askLogs(name))
	}
	fmt.Printf("%d supervisor sockets\n", len(seen))
}

func askLogs(addr string) string {
	c, err := net.Dial("unix", addr)
	if err != nil {
		return "error: " + err.Error()
	}
	defer c.Close()
	io.WriteString(c, `{"logs":true}`+"\n")
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.Read(make([]byte, 4096))
	if n > 0 {
		return fmt.Sprintf("open (read %d bytes)", n)
	}
	if os.IsTimeout(err) {
		return "open (silent)"
	}
	return "closed"
}
