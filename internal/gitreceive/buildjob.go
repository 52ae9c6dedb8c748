package gitreceive

import (
	"bytes"
	"context"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/slugbuilder"
)

// errBuildTimeout is the cause of a build job stopped at BuildTimeout.
var errBuildTimeout = errors.New("build timed out")

// savingWait bounds how long a build waits for the app's last build job,
// stopped, to end. Past it, the build goes on: the host then refuses it
// the volume, and it restores the cache from the blobstore.
const savingWait = time.Minute

// savingJob is a build job saving its cache after its result.
type savingJob struct {
	done    chan struct{} // closed when it ended
	stop    context.CancelFunc
	stopped atomic.Bool // stopped for a newer build
}

// runBuild runs a build job, relaying its output to out. It returns at
// the job's exit or, when the job's result is out (its
// slugbuilder.FinishedLine, with the result readable by ready), at once
// with saving true: the job goes on saving the build cache
// (BUILD_CACHE_SAVE_LAST) unwatched by the push, its output no longer
// relayed, and the app's next build stops it (waitSaving). Until then
// the push's end stops the job, and BuildTimeout bounds it throughout.
func (r *BuildReceiver) runBuild(ctx context.Context, appID string, job *api.HostJob, out io.Writer, ready func(context.Context) bool) (exit *api.HostJobExit, saving bool, err error) {
	jctx, cancel := context.WithTimeoutCause(context.WithoutCancel(ctx), r.cfg.BuildTimeout, errBuildTimeout)
	unlink := context.AfterFunc(ctx, cancel)
	w := &finishWatch{w: out, finished: make(chan struct{}, 1)}
	type ran struct {
		exit *api.HostJobExit
		err  error
	}
	ranc := make(chan ran, 1)
	go func() {
		exit, err := r.cfg.Jobs.RunJob(jctx, job, w)
		ranc <- ran{exit, err}
	}()
	ended := func(res ran) (*api.HostJobExit, bool, error) {
		unlink()
		cancel()
		w.flush()
		if res.err != nil && errors.Is(context.Cause(jctx), errBuildTimeout) && ctx.Err() == nil {
			return nil, false, errBuildTimeout
		}
		return res.exit, false, res.err
	}
	for {
		select {
		case res := <-ranc:
			return ended(res)
		case <-w.finished:
		}
		// A build's own output could say the line too: the result
		// tells.
		if ready(ctx) {
			break
		}
		w.resume()
	}
	w.stop()
	if !unlink() {
		// The push ended meanwhile: the job is being stopped.
		return ended(<-ranc)
	}
	sj := &savingJob{done: make(chan struct{}), stop: cancel}
	r.saving.Lock()
	if r.saving.apps == nil {
		r.saving.apps = make(map[string]*savingJob)
	}
	r.saving.apps[appID] = sj
	r.saving.Unlock()
	// Not one of the receiver's own jobs (Wait): a gitreceive that exits
	// meanwhile does not wait for the save. The job ends on its host or
	// is cut short, which the app's next build takes as a stopped save.
	go func() {
		res := <-ranc
		cancel()
		switch {
		case sj.stopped.Load():
			r.log.Info("stopped a build job's cache save for the app's next build", "app", appID, "job", job.ID)
		case res.err != nil:
			r.log.Warn("build job after its result", "app", appID, "job", job.ID, "err", res.err)
		case res.exit.Error != "" || res.exit.OOM || res.exit.ExitStatus != 0:
			// The next build restores the last cache stored.
			r.log.Warn("build job failed to save the build cache", "app", appID, "job", job.ID,
				"status", res.exit.ExitStatus, "oom", res.exit.OOM, "error", res.exit.Error)
		}
		r.saving.Lock()
		if r.saving.apps[appID] == sj {
			delete(r.saving.apps, appID)
		}
		r.saving.Unlock()
		close(sj.done)
		r.building(-1)
	}()
	return nil, true, nil
}

// waitSaving stops the app's last build job if it still saves its cache,
// and waits (at most savingWait) for it to end: the next build uses the
// cache volume it holds, and goes on from the cache it left there (the
// slugbuilder marks it unsaved before it saves), saving it itself. It
// says whether such a job ended just now (see volumeFreeWait).
func (r *BuildReceiver) waitSaving(ctx context.Context, appID string) (justEnded bool, err error) {
	r.saving.Lock()
	sj := r.saving.apps[appID]
	r.saving.Unlock()
	if sj == nil {
		return false, nil
	}
	select {
	case <-sj.done:
		return true, nil
	default:
	}
	sj.stopped.Store(true)
	sj.stop()
	t := time.NewTimer(savingWait)
	defer t.Stop()
	select {
	case <-sj.done:
		return true, nil
	case <-t.C:
		return false, nil
	case <-ctx.Done():
		return false, ctx.Err()
	}
}

// volumeFreeWait is how long a build asks again for the cache volume of a
// build job that just ended: its host frees the volume once it has
// recorded the exit, a moment after the job's output ends.
const volumeFreeWait = 5 * time.Second

// finishWatch relays a build job's output line by line, and tells on
// finished when a line begins with slugbuilder.FinishedLine. It then holds
// what follows until told whether that was the build's end: stop drops it
// and all that comes after, resume relays it and goes on.
type finishWatch struct {
	mu       sync.Mutex
	w        io.Writer
	buf      []byte // an unfinished line
	held     []byte // lines after a finished line, until stop or resume
	holding  bool
	stopped  bool
	finished chan struct{} // buffered: a signal is never waited on
}

func (f *finishWatch) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return len(p), nil
	}
	f.buf = append(f.buf, p...)
	return len(p), f.relay()
}

// relay relays the whole lines of buf, or holds them after a finished
// line.
func (f *finishWatch) relay() error {
	for {
		i := bytes.IndexByte(f.buf, '\n')
		if i < 0 {
			return nil
		}
		line := f.buf[:i+1]
		if f.holding {
			f.held = append(f.held, line...)
			f.buf = f.buf[i+1:]
			continue
		}
		_, err := f.w.Write(line)
		if bytes.HasPrefix(line, []byte(slugbuilder.FinishedLine)) {
			f.holding = true
			select {
			case f.finished <- struct{}{}:
			default:
			}
		}
		f.buf = f.buf[i+1:]
		if err != nil {
			return err
		}
	}
}

// flush relays what is held and an unfinished last line.
func (f *finishWatch) flush() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.stopped {
		f.w.Write(append(f.held, f.buf...))
		f.held, f.buf, f.holding = nil, nil, false
	}
}

// resume goes on relaying, from the lines held (which may hold another
// finished line).
func (f *finishWatch) resume() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.stopped {
		return
	}
	f.buf = append(f.held, f.buf...)
	f.held, f.holding = nil, false
	f.relay()
}

// stop drops the output from now on.
func (f *finishWatch) stop() {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stopped = true
	f.held, f.buf = nil, nil
}
