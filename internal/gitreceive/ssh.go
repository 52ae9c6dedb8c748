package gitreceive

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

// KeyChecker says whether a public key may push.
type KeyChecker interface {
	Allowed(ctx context.Context, key ssh.PublicKey) (bool, error)
}

// ServeSSH accepts git pushes over SSH on ln until ctx ends. Only
// "git-receive-pack '<app>.git'" is allowed, by registered keys.
func (s *Server) ServeSSH(ctx context.Context, ln net.Listener, hostKey ssh.Signer, keys KeyChecker) error {
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(meta ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			defer cancel()
			ok, err := keys.Allowed(cctx, key)
			if err != nil {
				s.log.Warn("ssh key check", "err", err)
				return nil, errors.New("key check failed")
			}
			if !ok {
				return nil, fmt.Errorf("unknown public key %s", ssh.FingerprintSHA256(key))
			}
			return &ssh.Permissions{Extensions: map[string]string{"fingerprint": ssh.FingerprintSHA256(key)}}, nil
		},
		ServerVersion: "SSH-2.0-flynn-gitreceive",
	}
	cfg.AddHostKey(hostKey)
	var wg sync.WaitGroup
	defer wg.Wait()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.handleSSH(ctx, conn, cfg)
		}()
	}
}

func (s *Server) handleSSH(ctx context.Context, nc net.Conn, cfg *ssh.ServerConfig) {
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	conn, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		s.log.Debug("ssh handshake", "remote", nc.RemoteAddr(), "err", err)
		return
	}
	nc.SetDeadline(time.Time{})
	defer conn.Close()
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, "only session channels")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			return
		}
		go s.handleSession(ctx, ch, creqs)
	}
}

func exitStatus(ch ssh.Channel, code int) {
	b := make([]byte, 4)
	binary.BigEndian.PutUint32(b, uint32(code))
	ch.SendRequest("exit-status", false, b)
}

func (s *Server) handleSession(ctx context.Context, ch ssh.Channel, reqs <-chan *ssh.Request) {
	defer ch.Close()
	for req := range reqs {
		switch req.Type {
		case "env":
			req.Reply(true, nil)
		case "exec":
			var p struct{ Command string }
			if err := ssh.Unmarshal(req.Payload, &p); err != nil {
				req.Reply(false, nil)
				continue
			}
			req.Reply(true, nil)
			code := s.execSSH(ctx, ch, p.Command)
			exitStatus(ch, code)
			return
		default:
			req.Reply(false, nil)
		}
	}
}

func (s *Server) execSSH(ctx context.Context, ch ssh.Channel, command string) int {
	verb, arg, _ := strings.Cut(strings.TrimSpace(command), " ")
	if verb != "git-receive-pack" {
		fmt.Fprintf(ch.Stderr(), "flynn: only git push is supported here (got %q)\n", verb)
		return 1
	}
	app, err := appFromPath(arg)
	if err != nil {
		fmt.Fprintf(ch.Stderr(), "flynn: %v\n", err)
		return 1
	}
	if err := s.cfg.Receiver.Authorize(ctx, app); err != nil {
		fmt.Fprintf(ch.Stderr(), "flynn: %v\n", err)
		return 1
	}
	unlock := s.lock(app)
	defer unlock()
	dir, err := s.prepare(ctx, app)
	if err != nil {
		s.log.Error("prepare repo", "app", app, "err", err)
		fmt.Fprintln(ch.Stderr(), "flynn: cannot prepare the repository, try again")
		return 1
	}
	cmd := exec.CommandContext(ctx, "git-receive-pack", dir)
	cmd.Env = append(os.Environ(), s.hookEnv(app)...)
	cmd.Stdin = ch
	cmd.Stdout = ch
	cmd.Stderr = ch.Stderr()
	err = cmd.Run()
	code := 0
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else {
			fmt.Fprintf(ch.Stderr(), "flynn: %v\n", err)
			code = 1
		}
	}
	s.afterPush(ctx, app, dir)
	return code
}
