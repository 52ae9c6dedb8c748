// Command flynn-host is Flynn's server-side binary. See internal/hostcmd.
// Called flynn-NAME, the name a system job mounts the binary that runs
// component NAME under (a host mounts flynn-host there when flynn-control
// or flynn-data is not installed), it runs that component.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/flynnrebuilt/flynn/internal/component"
	"github.com/flynnrebuilt/flynn/internal/hostcmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	env := hostcmd.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv}
	var code int
	if c, ok := hostcmd.ComponentCmd(os.Args[0]); ok {
		code = component.Main(ctx, c, os.Args[1:], component.Env(env))
	} else {
		code = hostcmd.Run(ctx, os.Args[1:], env)
	}
	stop()
	os.Exit(code)
}
