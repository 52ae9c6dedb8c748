package logging

import (
	"bytes"
	"io"
)

// PrefixWriter writes what it is given to W as it comes, with Prefix at
// the start of each line: a command's output indented in another's.
type PrefixWriter struct {
	W       io.Writer
	Prefix  string
	midline bool
}

func (p *PrefixWriter) Write(b []byte) (int, error) {
	for _, line := range bytes.SplitAfter(b, []byte("\n")) {
		if len(line) == 0 {
			continue
		}
		if !p.midline {
			if _, err := io.WriteString(p.W, p.Prefix); err != nil {
				return 0, err
			}
		}
		if _, err := p.W.Write(line); err != nil {
			return 0, err
		}
		p.midline = line[len(line)-1] != '\n'
	}
	return len(b), nil
}

// EndLine ends a last line written without its newline, so that what W
// gets next starts a line of its own.
func (p *PrefixWriter) EndLine() {
	if p.midline {
		io.WriteString(p.W, "\n")
		p.midline = false
	}
}
