// Command flynn-host is Flynn's server-side binary. See internal/hostcmd.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/flynnrebuilt/flynn/internal/hostcmd"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := hostcmd.Run(ctx, os.Args[1:], hostcmd.Env{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv})
	stop()
	os.Exit(code)
}
