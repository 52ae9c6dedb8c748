package redis

import (
	"bufio"
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
	"syscall"
	"time"
)

// Restore replaces the data of the database at addr (reached with
// password, as an app reaches it) with an RDB dump (flynn redis dump):
// it loads the dump into a redis-server of its own, empties the database
// and moves every key across with MIGRATE ... COPY REPLACE, their TTLs
// kept. It runs where redis-server is (a one-off job of the appliance's
// release); the password travels only inside the connections.
func Restore(ctx context.Context, rdb io.Reader, addr, password string, progress io.Writer, log *slog.Logger) error {
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		return errors.New("no redis-server in PATH")
	}
	dir, err := os.MkdirTemp("", "flynn-redis-restore")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	f, err := os.Create(filepath.Join(dir, "dump.rdb"))
	if err != nil {
		return err
	}
	n, err := io.Copy(f, rdb)
	if err == nil {
		err = f.Close()
	}
	if err != nil {
		return fmt.Errorf("read the dump: %w", err)
	}
	if n == 0 {
		return errors.New("the dump is empty")
	}
	sock := filepath.Join(dir, "redis.sock")
	srv := exec.Command(bin, "-")
	srv.Stdin = strings.NewReader(strings.Join([]string{"port 0", "unixsocket " + sock, "dir " + dir,
		"dbfilename dump.rdb", "appendonly no", "save \"\"", "daemonize no", "logfile \"\"", ""}, "\n"))
	var srvLog strings.Builder
	srv.Stdout, srv.Stderr = &srvLog, &srvLog
	srv.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := srv.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	defer func() {
		srv.Process.Kill()
		<-exited
	}()
	var src *conn
	for deadline := time.Now().Add(time.Minute); ; {
		if src, err = dialConn("unix", sock); err == nil {
			if _, err = src.do("PING"); err == nil {
				break
			}
			src.Close()
		}
		select {
		case err := <-exited:
			exited <- err
			return fmt.Errorf("the dump does not load (not an RDB file of this Redis?): %v: %s", err, lastLine(srvLog.String()))
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("loading the dump: %v", err)
		}
	}
	defer src.Close()

	dst, err := dialConn("tcp", addr)
	if err != nil {
		return err
	}
	defer dst.Close()
	if _, err := dst.do("AUTH", password); err != nil {
		return fmt.Errorf("the database: %w", err)
	}
	if _, err := dst.do("FLUSHALL"); err != nil {
		return fmt.Errorf("empty the database: %w", err)
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return err
	}
	dbs := 16
	if v, err := src.do("CONFIG", "GET", "databases"); err == nil {
		if l, ok := v.([]any); ok && len(l) == 2 {
			if s, ok := l[1].(string); ok {
				dbs, _ = strconv.Atoi(s)
			}
		}
	}
	moved := 0
	for db := 0; db < dbs; db++ {
		if _, err := src.do("SELECT", strconv.Itoa(db)); err != nil {
			return err
		}
		cursor := "0"
		for {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			v, err := src.do("SCAN", cursor, "COUNT", "500")
			if err != nil {
				return err
			}
			l, ok := v.([]any)
			if !ok || len(l) != 2 {
				return fmt.Errorf("SCAN answered %v", v)
			}
			cursor, _ = l[0].(string)
			keys, _ := l[1].([]any)
			if len(keys) > 0 {
				args := []string{"MIGRATE", host, port, "", strconv.Itoa(db), "60000", "COPY", "REPLACE", "AUTH", password, "KEYS"}
				for _, k := range keys {
					s, _ := k.(string)
					args = append(args, s)
				}
				if _, err := src.do(args...); err != nil {
					return fmt.Errorf("copy keys to the database: %w", err)
				}
				moved += len(keys)
				fmt.Fprintf(progress, "Restored %d keys\n", moved)
			}
			if cursor == "0" {
				break
			}
		}
	}
	log.Info("restored", "keys", moved)
	if moved == 0 {
		fmt.Fprintln(progress, "Restored 0 keys (the dump holds none)")
	}
	return nil
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// conn is a minimal RESP client: a command out, its reply back.
type conn struct {
	net.Conn
	br *bufio.Reader
}

func dialConn(network, addr string) (*conn, error) {
	c, err := net.DialTimeout(network, addr, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return &conn{Conn: c, br: bufio.NewReader(c)}, nil
}

// do sends args and reads the reply: a string, an int64, nil, or []any;
// an error reply is an error.
func (c *conn) do(args ...string) (any, error) {
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := c.Write(encodeCommand(args)); err != nil {
		return nil, err
	}
	return readReply(c.br)
}

type replyError string

func (e replyError) Error() string { return string(e) }

func readReply(br *bufio.Reader) (any, error) {
	line, err := br.ReadString('\n')
	if err != nil {
		return nil, err
	}
	line = strings.TrimRight(line, "\r\n")
	if line == "" {
		return nil, errors.New("empty reply")
	}
	switch line[0] {
	case '+':
		return line[1:], nil
	case '-':
		return nil, replyError(line[1:])
	case ':':
		return strconv.ParseInt(line[1:], 10, 64)
	case '$':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(line[1:])
		if err != nil {
			return nil, err
		}
		if n < 0 {
			return nil, nil
		}
		l := make([]any, 0, n)
		for range n {
			v, err := readReply(br)
			if err != nil {
				var re replyError
				if !errors.As(err, &re) {
					return nil, err
				}
				v = re
			}
			l = append(l, v)
		}
		return l, nil
	}
	return nil, fmt.Errorf("unexpected reply %q", line)
}
