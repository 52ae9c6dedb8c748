package gitreceive

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/slug"
)

// The platform's shared builds of Go. A Go app's first build spends most
// of its time compiling the standard library (12 of 14 s for the Go
// sample) and fetching the toolchain; every app on a Go version does
// both alike. After a build that installed Go version V, gitreceive
// makes sure the blobstore has goStdDir/V.tar: V's toolchain and the
// build cache of `go build -trimpath std` with it, made by a job of its
// own that runs the Go buildpack on a source of gitreceive's, with none
// of any app's code or config (a build cache's entries are trusted by
// every build that reads them, so no tenant's build may write one).
// Builds get read-only URLs of those that exist in GO_STD_SEEDS; a build
// whose cache lacks its Go version restores that version's instead of
// installing it (see buildpacks/go/bin/compile). The blobstore keeps the
// goStdKeep made last.

// goStdDir is where the builds are, one goVERSION.tar each. The builds
// under legacyGoStdDir were made with the compiler's DWARF debug info,
// which builds no longer make, so none of their entries would be used:
// pruneGoStd deletes them.
const (
	goStdDir       = "/go-std/2/"
	legacyGoStdDir = "/go-std/"
)

// goStdEvery spaces the jobs that make them: each takes a core or two
// for 20 s, and a build's result (which names the version) is the app's
// to write.
const goStdEvery = 10 * time.Minute

// goStdKeep is how many shared builds of Go the blobstore keeps (each is
// a toolchain and a standard library: 100-150 MB): making another deletes
// the oldest made beyond that. One deleted is made again after the next
// build that installs its version.
const goStdKeep = 4

// goStdCPU is the job's cpu in milli-cores, which it gets as cgroup cpu
// shares (10 against another job's 1024) when others want the CPU.
const goStdCPU = 10

// goToolchainRE is a Go release's toolchain name.
var goToolchainRE = regexp.MustCompile(`^go1\.[0-9]{1,3}\.[0-9]{1,3}$`)

// goStdVersion is the Go version whose shared build e of goStdDir is;
// false when e is none.
func goStdVersion(e api.BlobEntry) (string, bool) {
	v, ok := strings.CutSuffix(e.Name, ".tar")
	return v, ok && !e.Dir && goToolchainRE.MatchString(v)
}

// goStdSeeds is GO_STD_SEEDS for a build whose blobstore is at base:
// "go1.22.12=URL ..." for each shared build there is.
func (r *BuildReceiver) goStdSeeds(ctx context.Context, base string) string {
	entries, err := r.cfg.Blobs.List(ctx, goStdDir)
	if err != nil {
		if !errors.Is(err, api.ErrNotFound) {
			r.log.Warn("list the shared Go builds", "err", err)
		}
		return ""
	}
	var seeds []string
	for _, e := range entries {
		if v, ok := goStdVersion(e); ok {
			seeds = append(seeds, v+"="+r.jobURL(base, goStdDir+e.Name, api.BlobRead))
		}
	}
	return strings.Join(seeds, " ")
}

// seedGoStd starts, in the background, the job that makes version's
// shared build of Go, once no build has run for GoStdQuiet, unless it
// exists, a job makes one, or one started less than goStdEvery ago.
func (r *BuildReceiver) seedGoStd(version string) {
	if r.cfg.NoGoStd || !goToolchainRE.MatchString(version) {
		return
	}
	r.goStd.Lock()
	if r.goStd.running || time.Since(r.goStd.last) < goStdEvery {
		r.goStd.Unlock()
		return
	}
	r.goStd.running = true
	r.goStd.Unlock()
	r.bg.Add(1)
	go func() {
		defer r.bg.Done()
		defer func() {
			r.goStd.Lock()
			r.goStd.running = false
			r.goStd.Unlock()
		}()
		ctx, cancel := context.WithTimeout(r.cfg.BaseContext, r.cfg.BuildTimeout)
		defer cancel()
		if !r.waitQuiet(ctx) {
			return
		}
		if _, err := r.cfg.Blobs.Head(ctx, goStdDir+version+".tar"); err == nil {
			return
		}
		r.goStd.Lock()
		r.goStd.last = time.Now()
		r.goStd.Unlock()
		start := time.Now()
		if err := r.makeGoStd(ctx, version); err != nil {
			r.log.Warn("make the shared build of Go", "version", version, "err", err)
			return
		}
		r.log.Info("made the shared build of Go", "version", version, "duration", time.Since(start))
		r.pruneGoStd(ctx, version)
	}()
}

// pruneGoStd deletes the shared builds of Go beyond the goStdKeep made
// last, keeping made (the one just made) whatever its time.
func (r *BuildReceiver) pruneGoStd(ctx context.Context, made string) {
	entries, err := r.cfg.Blobs.List(ctx, goStdDir)
	if err != nil {
		r.log.Warn("list the shared Go builds", "err", err)
		return
	}
	var builds []api.BlobEntry
	for _, e := range entries {
		if v, ok := goStdVersion(e); ok && v != made {
			builds = append(builds, e)
		}
	}
	// Newest first; the same time orders by name, so that the choice
	// does not change from one listing to the next.
	slices.SortFunc(builds, func(a, b api.BlobEntry) int {
		if c := b.Modified.Compare(a.Modified); c != 0 {
			return c
		}
		return strings.Compare(b.Name, a.Name)
	})
	for i := goStdKeep - 1; i < len(builds); i++ {
		if err := r.cfg.Blobs.Delete(ctx, goStdDir+builds[i].Name); err != nil && !errors.Is(err, api.ErrNotFound) {
			r.log.Warn("delete an old shared build of Go", "build", builds[i].Name, "err", err)
			continue
		}
		r.log.Info("deleted an old shared build of Go", "build", builds[i].Name)
	}
	if legacy, err := r.cfg.Blobs.List(ctx, legacyGoStdDir); err == nil {
		for _, e := range legacy {
			if _, ok := goStdVersion(e); ok {
				if err := r.cfg.Blobs.Delete(ctx, legacyGoStdDir+e.Name); err == nil {
					r.log.Info("deleted a shared build of Go made with DWARF", "build", e.Name)
				}
			}
		}
	}
}

// Wait waits until the receiver's own jobs have ended: after BaseContext
// has, they are stopped (see ReceiverConfig.BaseContext).
func (r *BuildReceiver) Wait() { r.bg.Wait() }

// waitQuiet waits until no build of this gitreceive has run for
// GoStdQuiet, and says whether that came before ctx's end. The job takes
// the disk, the blobstore and whatever CPU is free for half a minute: a
// pusher's next build (which often follows at once) and the app it
// deploys go first.
func (r *BuildReceiver) waitQuiet(ctx context.Context) bool {
	for {
		r.busy.Lock()
		wait := r.cfg.GoStdQuiet - time.Since(r.busy.last)
		if r.busy.builds > 0 {
			wait = r.cfg.GoStdQuiet
		}
		r.busy.Unlock()
		if wait <= 0 {
			return true
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return false
		}
	}
}

// building counts a build in (+1) or out (-1), for waitQuiet.
func (r *BuildReceiver) building(n int) {
	r.busy.Lock()
	r.busy.builds += n
	r.busy.last = time.Now()
	r.busy.Unlock()
}

// goStdSource is the source the job builds: the Go buildpack's detect
// wants a go.mod, and GOVERSION picks the toolchain.
func goStdSource() []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range []struct{ name, body string }{
		{"go.mod", "module flynn-go-std\n\ngo 1.17\n"},
		{"main.go", "package main\n\nfunc main() {}\n"},
	} {
		tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: f.name, Mode: 0o644, Size: int64(len(f.body))})
		tw.Write([]byte(f.body))
	}
	tw.Close()
	return b.Bytes()
}

// makeGoStd runs the job that installs version's toolchain, builds its
// standard library and uploads both to goStdDir.
func (r *BuildReceiver) makeGoStd(ctx context.Context, version string) error {
	base, err := r.jobBlobBase(ctx)
	if err != nil {
		return err
	}
	src := goStdDir + "src/" + version + ".tar"
	if _, err := r.cfg.Blobs.Put(ctx, src, bytes.NewReader(goStdSource()), nil); err != nil {
		return fmt.Errorf("upload its source: %w", err)
	}
	defer r.cfg.Blobs.Delete(context.WithoutCancel(ctx), src)
	env := map[string]string{
		"PATH":            defaultPath,
		"HOME":            slug.AppDir,
		"SOURCE_URL":      r.jobURL(base, src, api.BlobRead),
		"GOVERSION":       version,
		"GO_STD_SEED_URL": r.jobURL(base, goStdDir+version+".tar", api.BlobWrite),
	}
	if r.cfg.GoProxy != "" {
		env["GOPROXY"] = r.cfg.GoProxy
	}
	job, err := r.slugbuilderJob(base, env, map[string]string{metaGoStd: version})
	if err != nil {
		return err
	}
	// It gets the CPU that no other job wants (waitQuiet keeps it off
	// the disk and the blobstore while builds run, but one may start
	// meanwhile).
	job.Resources[api.ResourceCPU] = api.ResourceSpec{Limit: ptr(int64(goStdCPU))}
	var out bytes.Buffer
	jobOut := newRedactor(&out, r.cfg.BlobKey)
	exit, err := r.cfg.Jobs.RunJob(ctx, job, jobOut)
	jobOut.Flush()
	switch {
	case err != nil:
		return fmt.Errorf("run the job: %w", err)
	case exit.Error != "" || exit.OOM || exit.ExitStatus != 0:
		return fmt.Errorf("the job failed (status %d%s): %s", exit.ExitStatus, exit.Error, lastLines(out.String(), 5))
	}
	return nil
}

// metaGoStd marks the job that makes a shared Go build, naming the
// version.
const metaGoStd = "gitreceive.go_std"

// lastLines is the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// namesProxyURL says whether a GOPROXY list (entries separated by "," or
// "|") has a URL in it, as the Go buildpack needs to fetch a toolchain:
// "direct" and "off" alone do not.
func namesProxyURL(list string) bool {
	for _, p := range strings.FieldsFunc(list, func(r rune) bool { return r == ',' || r == '|' }) {
		for _, scheme := range []string{"http://", "https://", "file://"} {
			if strings.HasPrefix(p, scheme) && len(p) > len(scheme) {
				return true
			}
		}
	}
	return false
}
