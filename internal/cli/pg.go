package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
)

// pgEnv are the variables a postgres resource gives an app that psql,
// pg_dump and pg_restore read. The password travels in the job's env,
// never on a command line.
var pgEnv = []string{"PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE"}

// newPgCmd is `flynn pg`: psql, pg_dump and pg_restore against the app's
// postgres database, run as one-off jobs of the postgres appliance's
// release (which has the client tools) with the app's credentials.
func newPgCmd(s *state) *cobra.Command {
	c := &cobra.Command{
		Use:   "pg",
		Short: "Use the app's Postgres database: psql, dump, restore",
		Long: `Commands for the app's Postgres database (flynn resource add postgres). Each
runs a one-off job of the postgres appliance with the app's PG* variables.`,
		Example: `  flynn pg psql
  flynn pg psql -- -c 'select count(*) from users'
  flynn pg dump -f db.dump
  flynn pg restore -f db.dump`,
	}
	psql := &cobra.Command{
		Use:   "psql [-- ARG...]",
		Short: "Open psql on the app's database (arguments go to psql)",
		Example: `  flynn pg psql
  flynn pg psql -- -c 'select 1'
  echo 'select 1' | flynn pg psql`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return s.runPg(cmd, append([]string{"psql"}, args...), cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	dump := dumpCommand("Dump the app's database (pg_dump's custom format) to FILE, or stdout", `  flynn pg dump -f db.dump
  flynn pg dump > db.dump`, func(cmd *cobra.Command, w io.Writer) error {
		return s.runPg(cmd, []string{"pg_dump", "--format=custom", "--no-owner", "--no-acl"}, strings.NewReader(""), w)
	})
	restore := restoreCommand("Restore a dump (flynn pg dump) from FILE, or stdin, into the app's database", "", `  flynn pg restore -f db.dump
  flynn pg restore < db.dump`, func(cmd *cobra.Command, r io.Reader) error {
		db, err := s.appDatabase(cmd.Context(), "postgres", pgEnv, "FLYNN_POSTGRES")
		if err != nil {
			return err
		}
		pgArgs := []string{"pg_restore", "--clean", "--if-exists", "--no-owner", "--no-acl", "--exit-on-error", "-d", db.env["PGDATABASE"]}
		return s.runDatabaseJob(cmd, db, pgArgs, db.env, r, cmd.OutOrStdout())
	})
	c.AddCommand(psql, dump, restore)
	return c
}

// appDatabase is an app's database resource: the resource's variables
// from the app's env and the appliance app that serves the database.
type appDatabase struct {
	env       map[string]string
	appliance *api.App
}

// appDatabase finds the app's database of provider: keys of its env, each
// required, and the appliance app, named by the env's nameVar or else
// provider.
func (s *state) appDatabase(ctx context.Context, provider string, keys []string, nameVar string) (*appDatabase, error) {
	c, app, err := s.appClient(ctx)
	if err != nil {
		return nil, err
	}
	if app.ReleaseID == "" {
		return nil, fmt.Errorf("app %s has no release, so no database: add one with flynn -a %s resource add %s", app.Name, app.Name, provider)
	}
	rel, err := c.GetRelease(ctx, app.ReleaseID)
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, k := range keys {
		if rel.Env[k] == "" {
			return nil, fmt.Errorf("app %s has no %s database (no %s in its env): add one with flynn -a %s resource add %s", app.Name, provider, k, app.Name, provider)
		}
		env[k] = rel.Env[k]
	}
	name := orDefault(rel.Env[nameVar], provider)
	appliance, err := c.GetApp(ctx, name)
	if errors.Is(err, api.ErrNotFound) {
		return nil, fmt.Errorf("the %s appliance (app %s) is not on this cluster", provider, name)
	}
	if err != nil {
		return nil, err
	}
	if appliance.ReleaseID == "" {
		return nil, fmt.Errorf("the %s appliance (app %s) has no release", provider, appliance.Name)
	}
	return &appDatabase{env: env, appliance: appliance}, nil
}

// runDatabaseJob runs args as a one-off job of the database appliance's
// current release with env (credentials travel there, never in args).
func (s *state) runDatabaseJob(cmd *cobra.Command, db *appDatabase, args []string, env map[string]string, stdin io.Reader, stdout io.Writer) error {
	nj := &api.NewJob{ReleaseID: db.appliance.ReleaseID, Args: args, Env: env, DisableLog: true}
	return s.runAttachedIO(cmd.Context(), cmd, db.appliance, nj, stdin, stdout)
}

// runPg runs args as a one-off job of the postgres appliance's current
// release with the app's PG* env.
func (s *state) runPg(cmd *cobra.Command, args []string, stdin io.Reader, stdout io.Writer) error {
	db, err := s.appDatabase(cmd.Context(), "postgres", pgEnv, "FLYNN_POSTGRES")
	if err != nil {
		return err
	}
	return s.runDatabaseJob(cmd, db, args, db.env, stdin, stdout)
}

// progress counts the bytes written to it and reports them on w every
// second and at the end.
type progress struct {
	w     io.Writer
	quiet bool
	verb  string
	n     atomic.Int64
	stop  chan struct{}
	ended chan struct{}
	start time.Time
}

func newProgress(w io.Writer, quiet bool, verb string) *progress {
	p := &progress{w: w, quiet: quiet, verb: verb, stop: make(chan struct{}), ended: make(chan struct{}), start: time.Now()}
	go func() {
		defer close(p.ended)
		t := time.NewTicker(time.Second)
		defer t.Stop()
		for {
			select {
			case <-p.stop:
				return
			case <-t.C:
				if !p.quiet {
					fmt.Fprintf(p.w, "\r%s %s...", p.verb, byteSize(p.n.Load()))
				}
			}
		}
	}()
	return p
}

func (p *progress) Write(b []byte) (int, error) {
	p.n.Add(int64(len(b)))
	return len(b), nil
}

func (p *progress) done() {
	close(p.stop)
	<-p.ended
	if !p.quiet {
		fmt.Fprintf(p.w, "\r%s %s in %s.\n", p.verb, byteSize(p.n.Load()), time.Since(p.start).Round(100*time.Millisecond))
	}
}

// dumpCommand is a database's `dump [-q] [-f FILE]`: dump writes the
// database to w (FILE, or stdout), with progress on stderr when writing
// to a file; a failed dump leaves no file.
func dumpCommand(short, example string, dump func(cmd *cobra.Command, w io.Writer) error) *cobra.Command {
	var file string
	var quiet bool
	c := &cobra.Command{
		Use:     "dump [-q] [-f FILE]",
		Short:   short,
		Example: example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			out := cmd.OutOrStdout()
			var f *os.File
			if file != "" {
				var err error
				if f, err = os.Create(file); err != nil {
					return err
				}
				defer f.Close()
				out = f
			}
			p := newProgress(cmd.ErrOrStderr(), quiet || file == "", "Dumped")
			err := dump(cmd, io.MultiWriter(out, p))
			p.done()
			if err != nil {
				if f != nil {
					os.Remove(file)
				}
				return err
			}
			if f != nil {
				return f.Close()
			}
			return nil
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "write the dump to FILE (default stdout)")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print no progress")
	return c
}

// restoreCommand is a database's `restore [-q] [-f FILE]`: restore reads
// the dump from r (FILE, or stdin), with progress on stderr.
func restoreCommand(short, long, example string, restore func(cmd *cobra.Command, r io.Reader) error) *cobra.Command {
	var file string
	var quiet bool
	c := &cobra.Command{
		Use:     "restore [-q] [-f FILE]",
		Short:   short,
		Long:    long,
		Example: example,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			in := cmd.InOrStdin()
			if file != "" {
				f, err := os.Open(file)
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			p := newProgress(cmd.ErrOrStderr(), quiet, "Restored")
			err := restore(cmd, io.TeeReader(in, p))
			p.done()
			return err
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "read the dump from FILE (default stdin)")
	c.Flags().BoolVarP(&quiet, "quiet", "q", false, "print no progress")
	return c
}
