package gitreceive

import (
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// SSHKeyEnv and SSHKnownHostsEnv name the files GitSSHMain reads: the
// private key it authenticates with and, when set, the known_hosts file
// the server's host key must be in (else any host key is accepted).
const (
	SSHKeyEnv        = "FLYNN_GIT_SSH_KEY"
	SSHKnownHostsEnv = "FLYNN_GIT_SSH_KNOWN_HOSTS"
)

// gitSSHPrefix starts GitSSHMain's error messages, so fetchError can tell
// them from git's.
const gitSSHPrefix = "git-ssh: "

// GitSSHMain is the SSH client git runs for a deploy from an SSH URL
// (Config.SSHCommand; flynn-host has it as "git-ssh"): git calls it as it
// calls ssh, with the "ssh" variant's arguments ([-p PORT] [-o OPTION]...
// [-4|-6] [USER@]HOST COMMAND). It runs COMMAND (git-upload-pack) on the
// server with stdin and stdout connected, and exits with its status. The
// stack that gitreceive runs on has no OpenSSH client, and this one only
// does what a fetch needs.
func GitSSHMain(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) int {
	code, err := gitSSH(args, stdin, stdout, stderr, getenv)
	if err != nil {
		fmt.Fprintln(stderr, gitSSHPrefix+err.Error())
		return 255
	}
	return code
}

func gitSSH(args []string, stdin io.Reader, stdout, stderr io.Writer, getenv func(string) string) (int, error) {
	port, user, sendProtocol := "22", "git", false
	var rest []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "-p" || a == "-o" || a == "-l":
			if i+1 == len(args) {
				return 0, fmt.Errorf("%s needs a value", a)
			}
			i++
			switch a {
			case "-p":
				port = args[i]
			case "-l":
				user = args[i]
			case "-o":
				if args[i] == "SendEnv=GIT_PROTOCOL" {
					sendProtocol = true
				}
			}
		case a == "-4" || a == "-6":
		case strings.HasPrefix(a, "-"):
			return 0, fmt.Errorf("unsupported option %s", a)
		default:
			rest = args[i:]
			i = len(args)
		}
	}
	if len(rest) < 2 {
		return 0, errors.New("usage: git-ssh [-p PORT] [-o OPTION] [USER@]HOST COMMAND")
	}
	host := rest[0]
	if u, h, ok := strings.Cut(host, "@"); ok {
		user, host = u, h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	addr := net.JoinHostPort(host, port)

	cfg := &ssh.ClientConfig{User: user, Timeout: 30 * time.Second, HostKeyCallback: ssh.InsecureIgnoreHostKey()}
	if f := getenv(SSHKnownHostsEnv); f != "" {
		cb, err := knownhosts.New(f)
		if err != nil {
			return 0, fmt.Errorf("known hosts: %w", err)
		}
		cfg.HostKeyCallback = cb
	}
	if f := getenv(SSHKeyEnv); f != "" {
		pem, err := os.ReadFile(f)
		if err != nil {
			return 0, err
		}
		signer, err := ssh.ParsePrivateKey(pem)
		if err != nil {
			return 0, fmt.Errorf("the SSH key: %w (give an unencrypted private key)", err)
		}
		cfg.Auth = []ssh.AuthMethod{ssh.PublicKeys(signer)}
	}
	client, err := ssh.Dial("tcp", addr, cfg)
	if err != nil {
		var kerr *knownhosts.KeyError
		if errors.As(err, &kerr) {
			return 0, fmt.Errorf("%s: host key not in the known hosts given", addr)
		}
		return 0, fmt.Errorf("%s: %v", addr, err)
	}
	defer client.Close()
	sess, err := client.NewSession()
	if err != nil {
		return 0, fmt.Errorf("%s: %v", addr, err)
	}
	defer sess.Close()
	if v := getenv("GIT_PROTOCOL"); sendProtocol && v != "" {
		sess.Setenv("GIT_PROTOCOL", v) // a server may refuse it: then protocol v0
	}
	sess.Stdin, sess.Stdout, sess.Stderr = stdin, stdout, stderr
	err = sess.Run(strings.Join(rest[1:], " "))
	var exit *ssh.ExitError
	if errors.As(err, &exit) {
		return exit.ExitStatus(), nil
	}
	if err != nil {
		return 0, fmt.Errorf("%s: %v", addr, err)
	}
	return 0, nil
}
