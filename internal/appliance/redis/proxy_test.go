package redis

import (
	"bufio"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeServer answers every command it gets with "+" and the command's
// words joined by spaces: what reaches a database's server shows.
func fakeServer(t *testing.T) string {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "s.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					args, err := readCommand(br)
					if err != nil {
						return
					}
					c.Write([]byte("+" + strings.Join(args, " ") + "\r\n"))
				}
			}()
		}
	}()
	return sock
}

// proxy serves one connection through serveConn to the fake server,
// whose password is "secret" and id "db_1".
func proxy(t *testing.T) (*bufio.Reader, net.Conn) {
	t.Helper()
	sock := fakeServer(t)
	dial := func(user, pass string) (net.Conn, bool, error) {
		if pass != "secret" || (user != "" && user != "default" && user != "db_1") {
			return nil, false, nil
		}
		c, err := net.Dial("unix", sock)
		return c, true, err
	}
	client, srv := net.Pipe()
	go serveConn(srv, dial)
	t.Cleanup(func() { client.Close() })
	client.SetDeadline(time.Now().Add(10 * time.Second))
	return bufio.NewReader(client), client
}

func expect(t *testing.T, br *bufio.Reader, want string) {
	t.Helper()
	got, err := br.ReadString('\n')
	if err != nil {
		t.Fatalf("want %q, read: %v", want, err)
	}
	if got = strings.TrimRight(got, "\r\n"); got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func send(t *testing.T, c net.Conn, s string) {
	t.Helper()
	go c.Write([]byte(s)) // net.Pipe: the write waits for the reader
}

func TestProxyWantsAuthFirst(t *testing.T) {
	br, c := proxy(t)
	send(t, c, string(encodeCommand([]string{"GET", "k"})))
	expect(t, br, strings.TrimSpace(errNoAuth))
	send(t, c, string(encodeCommand([]string{"HELLO", "3"})))
	expect(t, br, strings.TrimSpace(errHelloAuth))
	send(t, c, string(encodeCommand([]string{"AUTH", "wrong"})))
	expect(t, br, strings.TrimSpace(errWrongPass))
	// The right password with another database's name is refused.
	send(t, c, string(encodeCommand([]string{"AUTH", "db_2", "secret"})))
	expect(t, br, strings.TrimSpace(errWrongPass))
	send(t, c, string(encodeCommand([]string{"AUTH"})))
	expect(t, br, "-ERR wrong number of arguments for 'auth' command")
	// Commands pipelined behind AUTH reach the server in order.
	send(t, c, string(encodeCommand([]string{"AUTH", "secret"}))+string(encodeCommand([]string{"SET", "k", "v"}))+string(encodeCommand([]string{"GET", "k"})))
	expect(t, br, "+AUTH secret")
	expect(t, br, "+SET k v")
	expect(t, br, "+GET k")
}

func TestProxyAuthWithUserAndInline(t *testing.T) {
	for _, user := range []string{"default", "db_1"} {
		br, c := proxy(t)
		send(t, c, "AUTH "+user+" secret\r\nPING\r\n")
		expect(t, br, "+AUTH default secret")
		expect(t, br, "+PING")
	}
}

// HELLO with AUTH is answered by the server, which checks the password
// too (its user is "default").
func TestProxyHelloAuth(t *testing.T) {
	br, c := proxy(t)
	send(t, c, string(encodeCommand([]string{"HELLO", "3", "AUTH", "db_1", "secret", "SETNAME", "app"})))
	expect(t, br, "+HELLO 3 AUTH default secret SETNAME app")
	br, c = proxy(t)
	send(t, c, string(encodeCommand([]string{"HELLO", "3", "AUTH", "default"})))
	expect(t, br, "-ERR syntax error in HELLO option 'auth'")
}

func TestProxyRefusesOversizedCommandsBeforeAuth(t *testing.T) {
	br, c := proxy(t)
	send(t, c, "*1\r\n$100000\r\n")
	expect(t, br, "-ERR Protocol error: invalid bulk length")
	if _, err := br.ReadString('\n'); err == nil {
		t.Fatal("connection still open after a protocol error")
	}
	br, c = proxy(t)
	send(t, c, "*100\r\n")
	expect(t, br, "-ERR Protocol error: invalid multibulk length")
	br, c = proxy(t)
	send(t, c, strings.Repeat("x", 20000)+"\r\n")
	expect(t, br, "-ERR Protocol error: too big inline request")
}

func TestProxyClosesAfterTooManyWrongPasswords(t *testing.T) {
	br, c := proxy(t)
	for range maxAuthTries - 1 {
		send(t, c, "AUTH guess\r\n")
		expect(t, br, strings.TrimSpace(errWrongPass))
	}
	send(t, c, "AUTH guess\r\n")
	expect(t, br, "-ERR too many failed authentications")
}

func TestConfig(t *testing.T) {
	a := &Appliance{cfg: Config{DataDir: "/data", RunDir: "/run/redis", MaxMemory: "64mb"}}
	conf := a.config("db_0123456789abcdef", "pw")
	for _, want := range []string{"port 0\n", "unixsocket /run/redis/db_0123456789abcdef.sock\n", "dir /data/db_0123456789abcdef/data\n",
		"appendonly yes\n", "maxmemory 64mb\n", "requirepass pw\n"} {
		if !strings.Contains(conf, want) {
			t.Errorf("config lacks %q:\n%s", want, conf)
		}
	}
}
