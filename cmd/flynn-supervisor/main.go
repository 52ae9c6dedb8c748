// Command flynn-supervisor supervises one host job: flynn-supervisor JOBDIR.
// The host agent starts one per job, in its own session, when the binary is
// installed next to flynn-host; it does what `flynn-host supervise JOBDIR`
// does (see internal/host/runtime/supervisor) in a binary of a few MB, so
// the supervisors that stay up as long as their jobs cost little memory.
package main

import (
	"fmt"
	"os"

	"github.com/flynnrebuilt/flynn/internal/host/runtime/supervisor"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] == "" || os.Args[1][0] == '-' {
		fmt.Fprintln(os.Stderr, "usage: flynn-supervisor JOBDIR (started by the host agent)")
		os.Exit(2)
	}
	if err := supervisor.Run(os.Args[1]); err != nil {
		fmt.Fprintf(os.Stderr, "Error: %v\n", err)
		os.Exit(1)
	}
}
