package hostcmd

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/internal/logging"
)

// The forwarder of `up --hosts N`: this machine's loopback ports (HTTP,
// HTTPS, git over SSH) to the same ports of the hosts, which live in their
// own network namespaces. Each connection goes to the next host in turn
// that accepts it, so a host that is down costs a connect timeout, not a
// failed request.

func newForwardCmd(env Env) *cobra.Command {
	var listenIP, to string
	var ports []int
	var dialTimeout time.Duration
	cmd := &cobra.Command{
		Use:    "forward --port P [--port P...] --to IP,IP,...",
		Short:  "Forward this machine's loopback ports to the same ports of the hosts (up --hosts)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			log, err := logging.New(env.Stderr, logging.Config{Level: "info"})
			if err != nil {
				return err
			}
			var targets []string
			for _, t := range strings.Split(to, ",") {
				if t = strings.TrimSpace(t); t != "" {
					if net.ParseIP(t) == nil {
						return fmt.Errorf("--to %q: give IP addresses", t)
					}
					targets = append(targets, t)
				}
			}
			if len(ports) == 0 || len(targets) == 0 {
				return errors.New("give --port and --to")
			}
			return forward(cmd.Context(), listenIP, ports, targets, dialTimeout, log)
		},
	}
	cmd.Flags().StringVar(&listenIP, "listen-ip", "127.0.0.1", "address to listen on")
	cmd.Flags().IntSliceVar(&ports, "port", nil, "port to forward (repeatable)")
	cmd.Flags().StringVar(&to, "to", "", "the hosts' addresses, comma-separated")
	cmd.Flags().DurationVar(&dialTimeout, "dial-timeout", time.Second, "how long to try a host before the next")
	return cmd
}

// forward serves every port until ctx ends.
func forward(ctx context.Context, listenIP string, ports []int, targets []string, dialTimeout time.Duration, log *slog.Logger) error {
	var lns []net.Listener
	for _, p := range ports {
		ln, err := net.Listen("tcp", net.JoinHostPort(listenIP, strconv.Itoa(p)))
		if err != nil {
			for _, l := range lns {
				l.Close()
			}
			return fmt.Errorf("forward: %w", err)
		}
		lns = append(lns, ln)
	}
	log.Info("forwarding", "ports", ports, "to", targets)
	var next atomic.Uint64
	var wg sync.WaitGroup
	for i, ln := range lns {
		port := ports[i]
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				c, err := ln.Accept()
				if err != nil {
					return
				}
				wg.Add(1)
				go func() {
					defer wg.Done()
					defer c.Close()
					start := int(next.Add(1))
					for k := range targets {
						t := net.JoinHostPort(targets[(start+k)%len(targets)], strconv.Itoa(port))
						d := net.Dialer{Timeout: dialTimeout}
						u, err := d.DialContext(ctx, "tcp", t)
						if err != nil {
							continue
						}
						splice(c, u)
						return
					}
					log.Warn("no host accepted a connection", "port", port)
				}()
			}
		}()
	}
	<-ctx.Done()
	for _, ln := range lns {
		ln.Close()
	}
	wg.Wait()
	return nil
}

// splice copies both ways until both sides are done.
func splice(a, b net.Conn) {
	defer b.Close()
	done := make(chan struct{})
	go func() {
		io.Copy(b, a)
		if tc, ok := b.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		close(done)
	}()
	io.Copy(a, b)
	if tc, ok := a.(*net.TCPConn); ok {
		tc.CloseWrite()
	}
	<-done
}

// startForwarder starts `flynn-host forward` in the background (pid and
// log in stateDir) unless it runs with the same arguments.
func startForwarder(out io.Writer, stateDir string, ports []int, targets []string) error {
	args := []string{"forward", "--to", strings.Join(targets, ",")}
	for _, p := range ports {
		args = append(args, "--port", strconv.Itoa(p))
	}
	pidFile := filepath.Join(stateDir, "forward.pid")
	if pid := pidOf(pidFile, "forward"); pid != 0 {
		cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if strings.Contains(string(cmdline), strings.Join(args, "\x00")) {
			return nil
		}
		syscall.Kill(pid, syscall.SIGTERM)
	}
	exe, err := os.Executable()
	if err != nil {
		return err
	}
	logFile := filepath.Join(stateDir, "forward.log")
	lf, err := os.OpenFile(logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer lf.Close()
	c := exec.Command(exe, args...)
	c.Stdout, c.Stderr = lf, lf
	c.SysProcAttr = backgroundProcAttr()
	if err := c.Start(); err != nil {
		return fmt.Errorf("start the port forwarder: %w", err)
	}
	pid := c.Process.Pid
	c.Process.Release()
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(pid)+"\n"), 0o644); err != nil {
		return err
	}
	// Up once its ports accept.
	for i := 0; i < 100; i++ {
		conn, err := net.DialTimeout("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(ports[0])), time.Second)
		if err == nil {
			conn.Close()
			fmt.Fprintf(out, "==> forwarding 127.0.0.1 ports %v to the hosts (pid %d, log %s)\n", ports, pid, logFile)
			return nil
		}
		if pidOf(pidFile, "forward") == 0 {
			b, _ := os.ReadFile(logFile)
			return fmt.Errorf("the port forwarder exited: %s", strings.TrimSpace(string(b)))
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("the port forwarder did not start listening")
}

// stopForwarder stops the forwarder of stateDir, if any.
func stopForwarder(out io.Writer, stateDir string) {
	pidFile := filepath.Join(stateDir, "forward.pid")
	if pid := pidOf(pidFile, "forward"); pid != 0 {
		syscall.Kill(pid, syscall.SIGTERM)
		for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
			time.Sleep(50 * time.Millisecond)
		}
		fmt.Fprintln(out, "==> stopped the port forwarder")
	}
	os.Remove(pidFile)
}
