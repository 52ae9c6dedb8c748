// Package component holds what the entrypoints of the platform's components
// share: the environment a command runs in, the flags every HTTP component
// takes, and running components' commands as a program.
//
// Each component's command is a package of its own under this one
// (controllercmd, routercmd, ...), so that a binary links only the
// components it runs: every package linked into a Go binary runs its init
// functions and pages in its code at start, whichever command runs. The
// system jobs run two such binaries (see api.ComponentBinaries):
// flynn-control (controller, scheduler, router, gitreceive: the components
// on etcd, whose client brings gRPC and protobuf) and flynn-data
// (blobstore, log aggregator, database appliances: none of that). Each is
// shared by the jobs it runs, as their pages are; flynn-host links them
// all for `flynn-host component NAME`. This package and its helpers import
// neither etcd's client nor any component (etcdconn holds the etcd part).
package component

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/logging"
)

// Env is what a command needs from the outside world.
type Env struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
}

// OSEnv is the process's own environment.
func OSEnv() Env {
	return Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
}

// Get returns the environment variable k, or "" without an environment.
func (e Env) Get(k string) string {
	if e.Getenv == nil {
		return ""
	}
	return e.Getenv(k)
}

// ExitError carries a specific exit code out of a command, for a status
// that was already reported (a git hook's): the runner prints nothing more.
type ExitError struct{ Code int }

func (e ExitError) Error() string { return fmt.Sprintf("exit status %d", e.Code) }

// Main runs the command that newCmd makes as a program (the body of
// cmd/flynn-NAME): args without the program name; it returns the exit
// code.
func Main(ctx context.Context, newCmd func(Env) *cobra.Command, args []string, env Env) int {
	cmd := newCmd(env)
	cmd.SilenceErrors, cmd.SilenceUsage = true, true
	cmd.SetArgs(args)
	cmd.SetIn(env.Stdin)
	cmd.SetOut(env.Stdout)
	cmd.SetErr(env.Stderr)
	if err := cmd.ExecuteContext(ctx); err != nil {
		var ee ExitError
		if errors.As(err, &ee) {
			return ee.Code
		}
		fmt.Fprintf(env.Stderr, "%s: %v\n", cmd.Name(), err)
		return 1
	}
	return 0
}

// Multi is the body of a binary that runs several components (flynn-control,
// flynn-data): called flynn-NAME (the name a job mounts it under, argv0),
// it runs component NAME with args, as the root command; otherwise
// (`flynn-control NAME ARGS`, by hand) args name the component.
func Multi(ctx context.Context, name, short string, cmds map[string]func(Env) *cobra.Command, argv0 string, args []string, env Env) int {
	if c, ok := strings.CutPrefix(filepath.Base(argv0), "flynn-"); ok && cmds[c] != nil {
		return Main(ctx, cmds[c], args, env)
	}
	return Main(ctx, func(env Env) *cobra.Command {
		root := &cobra.Command{Use: name, Short: short,
			Long: short + ".\nA job runs it under the name flynn-COMPONENT, which runs that component."}
		for _, c := range slices.Sorted(maps.Keys(cmds)) {
			root.AddCommand(cmds[c](env))
		}
		return root
	}, args, env)
}

// OrDefault is s, or def when s is empty.
func OrDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// OrDefaultInt is n, or def when n is 0.
func OrDefaultInt(n, def int) int {
	if n == 0 {
		return def
	}
	return n
}

// ServerFlags are the flags the HTTP components (blobstore, log
// aggregator) share.
type ServerFlags struct {
	Listen   string
	Keys     []string
	LogLevel string
	LogJSON  bool
}

// Register adds --listen (default :$PORT, else :defaultPort), --auth-key
// (default $FLYNN_AUTH_KEY), --log-level and --log-json to cmd.
func (f *ServerFlags) Register(cmd *cobra.Command, env Env, defaultPort string) {
	listen := ":" + defaultPort
	if p := env.Get("PORT"); p != "" {
		listen = ":" + p
	}
	var keys []string
	if k := env.Get("FLYNN_AUTH_KEY"); k != "" {
		keys = strings.Split(k, ",")
	}
	cmd.Flags().StringVar(&f.Listen, "listen", listen, "address to serve HTTP on (default :$PORT when set)")
	cmd.Flags().StringSliceVar(&f.Keys, "auth-key", keys, "cluster key(s) clients must present; repeat or comma-separate for rotation (default $FLYNN_AUTH_KEY)")
	cmd.Flags().StringVar(&f.LogLevel, "log-level", OrDefault(env.Get("FLYNN_LOG_LEVEL"), "info"), "debug, info, warn or error")
	cmd.Flags().BoolVar(&f.LogJSON, "log-json", false, "log JSON lines instead of text")
}

// Logger is the component's logger, on env's stderr.
func (f *ServerFlags) Logger(env Env, component string) (*slog.Logger, error) {
	log, err := logging.New(env.Stderr, logging.Config{Level: f.LogLevel, JSON: f.LogJSON})
	if err != nil {
		return nil, err
	}
	return log.With("component", component), nil
}

// Exit treats a shutdown caused by ctx as a normal exit.
func Exit(ctx context.Context, err error) error {
	if err != nil && errors.Is(err, context.Canceled) && ctx.Err() != nil {
		return nil
	}
	return err
}

// AdvertiseAddr is the address to register: explicit, else the bound
// address with an unspecified host replaced by ip (or 127.0.0.1).
func AdvertiseAddr(explicit, bound, ip string) string {
	if explicit != "" {
		return explicit
	}
	host, port, err := net.SplitHostPort(bound)
	if err != nil {
		return bound
	}
	if h := net.ParseIP(host); h == nil || h.IsUnspecified() {
		host = ip
		if host == "" {
			host = "127.0.0.1"
		}
	}
	return net.JoinHostPort(host, port)
}

// Discoverd is a discoverd client, or nil without a URL.
func Discoverd(url, token string) *discoverdclient.Client {
	if url == "" {
		return nil
	}
	return discoverdclient.New(url, token)
}

// ServiceHTTP is an HTTP client that reaches SERVICE.discoverd URLs (e.g.
// http://controller.discoverd) through discoverd, or nil (the default
// client) without discoverd.
func ServiceHTTP(disc *discoverdclient.Client) *http.Client {
	if disc == nil {
		return nil
	}
	return disc.HTTPClient()
}
