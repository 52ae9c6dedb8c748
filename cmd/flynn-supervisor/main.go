// Command flynn-supervisor supervises one host job: flynn-supervisor JOBDIR.
// The host agent starts one per job, in its own session, when the binary is
// installed next to flynn-host; it does what `flynn-host supervise JOBDIR`
// does (see internal/host/runtime/supervisor) in a binary of about 2 MB, so
// the supervisors that stay up as long as their jobs cost little memory.
package main

import (
	"os"

	"github.com/flynnrebuilt/flynn/internal/host/runtime/supervisor"
)

func main() {
	if len(os.Args) != 2 || os.Args[1] == "" || os.Args[1][0] == '-' {
		os.Stderr.WriteString("usage: flynn-supervisor JOBDIR (started by the host agent)\n")
		os.Exit(2)
	}
	if err := supervisor.Run(os.Args[1]); err != nil {
		os.Stderr.WriteString("Error: " + err.Error() + "\n")
		os.Exit(1)
	}
}
