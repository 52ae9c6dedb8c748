package gitreceive

import (
	"fmt"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// A push's timings line says where its time went, phase by phase:
//
//	-----> Done in 6.4s: source 0.2s, build 4.1s (fetch 0.1s, restore 0.2s, compile 3.0s, save 0.1s, slug 0.6s), release 0.1s, start 1.9s
//
// Each phase is measured around the step itself; the build's inner phases
// are the slugbuilder's own (api.SlugBuildResult.Phases), and what they do
// not cover (placing the job, starting its container) is in the build's
// time only. Phases do not overlap, but for the build's save and slug,
// which run at once (the build's time counts the longer of the two), and
// small steps between them (looking up the app) count in the total only.

// phase is the time a push spent in one step, and, for the build, the
// build's own phases.
type phase struct {
	name string
	d    time.Duration
	sub  []phase
}

// timings records the phases of one push in the order they ran.
type timings struct {
	start  time.Time
	phases []phase
}

func newTimings() *timings { return &timings{start: time.Now()} }

// since records the phase name as lasting from start until now.
func (t *timings) since(name string, start time.Time) {
	t.phases = append(t.phases, phase{name: name, d: time.Since(start)})
}

// buildPhases attaches the slugbuilder's phases to the last phase (the
// build's).
func (t *timings) buildPhases(ps []api.BuildPhase) {
	if len(t.phases) == 0 {
		return
	}
	last := &t.phases[len(t.phases)-1]
	for _, p := range ps {
		last.sub = append(last.sub, phase{name: p.Name, d: time.Duration(p.MS) * time.Millisecond})
	}
}

// line is the timings line: "Done in 6.4s: source 0.2s, build ..." with
// verb "Done in".
func (t *timings) line(verb string) string {
	return formatTimings(verb, time.Since(t.start), t.phases)
}

func formatTimings(verb string, total time.Duration, phases []phase) string {
	s := "-----> " + verb + " " + seconds(total)
	if len(phases) > 0 {
		s += ": " + formatPhases(phases)
	}
	return s
}

func formatPhases(phases []phase) string {
	parts := make([]string, len(phases))
	for i, p := range phases {
		parts[i] = p.name + " " + seconds(p.d)
		if len(p.sub) > 0 {
			parts[i] += " (" + formatPhases(p.sub) + ")"
		}
	}
	return strings.Join(parts, ", ")
}

// seconds formats d as seconds with one decimal, e.g. "4.1s".
func seconds(d time.Duration) string { return fmt.Sprintf("%.1fs", d.Seconds()) }
