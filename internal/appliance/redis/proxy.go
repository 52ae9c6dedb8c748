package redis

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// The proxy is the appliance's one TCP port. Every database has a
// redis-server of its own listening on a unix socket only, with the
// database's password; a client reaches one by authenticating: its
// password (AUTH [user] pass, or HELLO with AUTH) names the database.
// Until then the proxy answers every other command as a
// password-protected Redis does (NOAUTH). Then it sends the AUTH or HELLO
// on to the database's server, which answers it, and splices the rest of
// the connection to it: the client talks to its own Redis, AUTH again
// included (as MIGRATE does on every call).

// Limits on a connection that has not authenticated yet.
const (
	authTimeout    = 30 * time.Second
	maxAuthTries   = 10
	maxPreAuthArgs = 16
	maxPreAuthArg  = 4096
)

const (
	errNoAuth    = "-NOAUTH Authentication required.\r\n"
	errWrongPass = "-WRONGPASS invalid username-password pair or user is disabled.\r\n"
	errHelloAuth = "-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"
)

// backend finds the database a password opens and dials its server:
// ok false when no database has that password (user, when not empty,
// must be "default" or the database's id).
type backend func(user, pass string) (conn net.Conn, ok bool, err error)

// serveConn serves one client connection until it ends.
func serveConn(c net.Conn, dial backend) error {
	defer c.Close()
	c.SetDeadline(time.Now().Add(authTimeout))
	br := bufio.NewReaderSize(c, 16<<10)
	tries := 0
	for {
		args, err := readCommand(br)
		if err != nil {
			var pe protoError
			if errors.As(err, &pe) {
				io.WriteString(c, "-ERR Protocol error: "+string(pe)+"\r\n")
			}
			return err
		}
		if len(args) == 0 {
			continue
		}
		var user, pass string
		var fwd []string // the command the server gets: it checks the password too
		switch strings.ToUpper(args[0]) {
		case "AUTH":
			switch len(args) {
			case 2:
				pass = args[1]
				fwd = args
			case 3:
				user, pass = args[1], args[2]
				fwd = []string{args[0], "default", pass}
			default:
				io.WriteString(c, "-ERR wrong number of arguments for 'auth' command\r\n")
				continue
			}
		case "HELLO":
			var err error
			if fwd, user, pass, err = parseHello(args); err != nil {
				io.WriteString(c, "-ERR "+err.Error()+"\r\n")
				continue
			}
			if pass == "" {
				io.WriteString(c, errHelloAuth)
				continue
			}
		case "QUIT":
			io.WriteString(c, "+OK\r\n")
			return nil
		default:
			io.WriteString(c, errNoAuth)
			continue
		}
		srv, ok, err := dial(user, pass)
		if err != nil {
			io.WriteString(c, "-ERR "+oneLine(err.Error())+"\r\n")
			return err
		}
		if !ok {
			tries++
			if tries >= maxAuthTries {
				io.WriteString(c, "-ERR too many failed authentications\r\n")
				return errors.New("too many failed authentications")
			}
			// A wrong password costs time, as a guess should.
			time.Sleep(100 * time.Millisecond)
			io.WriteString(c, errWrongPass)
			continue
		}
		c.SetDeadline(time.Time{})
		// The server answers the AUTH or HELLO (its +OK, or HELLO's
		// map), and knows the connection for authenticated.
		if _, err := srv.Write(encodeCommand(fwd)); err != nil {
			srv.Close()
			return err
		}
		return splice(c, br, srv)
	}
}

// splice copies between the client (whose reader may hold commands it
// pipelined after authenticating) and the server until either ends.
func splice(c net.Conn, br *bufio.Reader, srv net.Conn) error {
	defer srv.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		io.Copy(srv, br)
		if cw, ok := srv.(interface{ CloseWrite() error }); ok {
			cw.CloseWrite()
		} else {
			srv.Close()
		}
	}()
	_, err := io.Copy(c, srv)
	c.Close()
	<-done
	return err
}

// parseHello reads HELLO [protover [AUTH user pass] [SETNAME name]]: the
// command to send on (AUTH's user made "default": a server's one user)
// and AUTH's user and password.
func parseHello(args []string) (fwd []string, user, pass string, err error) {
	fwd = []string{args[0]}
	if len(args) == 1 {
		return fwd, "", "", nil
	}
	fwd = append(fwd, args[1])
	for i := 2; i < len(args); i++ {
		switch strings.ToUpper(args[i]) {
		case "AUTH":
			if i+2 >= len(args) {
				return nil, "", "", fmt.Errorf("syntax error in HELLO option 'auth'")
			}
			user, pass = args[i+1], args[i+2]
			fwd = append(fwd, args[i], "default", pass)
			i += 2
		case "SETNAME":
			if i+1 >= len(args) {
				return nil, "", "", fmt.Errorf("syntax error in HELLO option 'setname'")
			}
			fwd = append(fwd, args[i], args[i+1])
			i++
		default:
			return nil, "", "", fmt.Errorf("syntax error in HELLO option '%s'", oneLine(args[i]))
		}
	}
	return fwd, user, pass, nil
}

type protoError string

func (e protoError) Error() string { return "protocol error: " + string(e) }

// readCommand reads one command: a RESP array of bulk strings, or an
// inline command (words on a line), within the pre-authentication limits.
func readCommand(br *bufio.Reader) ([]string, error) {
	line, err := readLine(br)
	if err != nil {
		return nil, err
	}
	if !strings.HasPrefix(line, "*") {
		return strings.Fields(line), nil
	}
	n, err := strconv.Atoi(line[1:])
	if err != nil || n > maxPreAuthArgs {
		return nil, protoError("invalid multibulk length")
	}
	args := make([]string, 0, max(n, 0))
	for range n {
		l, err := readLine(br)
		if err != nil {
			return nil, err
		}
		if !strings.HasPrefix(l, "$") {
			return nil, protoError(fmt.Sprintf("expected '$', got '%.1s'", l))
		}
		size, err := strconv.Atoi(l[1:])
		if err != nil || size < 0 || size > maxPreAuthArg {
			return nil, protoError("invalid bulk length")
		}
		b := make([]byte, size+2)
		if _, err := io.ReadFull(br, b); err != nil {
			return nil, err
		}
		if string(b[size:]) != "\r\n" {
			return nil, protoError("bulk string not followed by CRLF")
		}
		args = append(args, string(b[:size]))
	}
	return args, nil
}

// readLine reads a line of at most maxPreAuthArg bytes, without its CRLF
// (or LF, as redis accepts in inline commands).
func readLine(br *bufio.Reader) (string, error) {
	var sb strings.Builder
	for {
		frag, err := br.ReadSlice('\n')
		sb.Write(frag)
		if sb.Len() > maxPreAuthArg+16 {
			return "", protoError("too big inline request")
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		if err != nil {
			return "", err
		}
		return strings.TrimRight(sb.String(), "\r\n"), nil
	}
}

// encodeCommand is args as a RESP array of bulk strings.
func encodeCommand(args []string) []byte {
	b := []byte("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b = append(b, '$')
		b = strconv.AppendInt(b, int64(len(a)), 10)
		b = append(b, "\r\n"...)
		b = append(b, a...)
		b = append(b, "\r\n"...)
	}
	return b
}

func oneLine(s string) string { return strings.NewReplacer("\r", " ", "\n", " ").Replace(s) }
