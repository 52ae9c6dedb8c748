package cli

import (
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// mysqlEnv are the variables a mysql resource gives an app.
var mysqlEnv = []string{"MYSQL_HOST", "MYSQL_PORT", "MYSQL_USER", "MYSQL_PWD", "MYSQL_DATABASE"}

// newMySQLCmd is `flynn mysql`: the mariadb client and mariadb-dump
// against the app's MySQL database, as one-off jobs of the mysql
// appliance's release with the app's credentials (the password in
// MYSQL_PWD, never on a command line).
func newMySQLCmd(s *state) *cobra.Command {
	c := &cobra.Command{
		Use:   "mysql",
		Short: "Use the app's MySQL database: console, dump, restore",
		Example: `  flynn mysql console
  flynn mysql console -- -e 'show tables'
  flynn mysql dump -f db.sql
  flynn mysql restore -f db.sql`,
	}
	console := &cobra.Command{
		Use:   "console [-- ARG...]",
		Short: "Open the mariadb client on the app's database (arguments go to it)",
		Example: `  flynn mysql console
  flynn mysql console -- -e 'select 1'`,
		RunE: func(cmd *cobra.Command, args []string) error {
			return s.runMySQL(cmd, "mariadb", args, cmd.InOrStdin(), cmd.OutOrStdout())
		},
	}
	var file string
	var quiet bool
	dump := &cobra.Command{
		Use:     "dump [-q] [-f FILE]",
		Short:   "Dump the app's database (SQL) to FILE, or stdout",
		Example: "  flynn mysql dump -f db.sql",
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
			err := s.runMySQL(cmd, "mariadb-dump", []string{"--single-transaction", "--routines", "--no-tablespaces"}, strings.NewReader(""), io.MultiWriter(out, p))
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
	dump.Flags().StringVarP(&file, "file", "f", "", "write the dump to FILE (default stdout)")
	dump.Flags().BoolVarP(&quiet, "quiet", "q", false, "print no progress")
	var rfile string
	var rquiet bool
	restore := &cobra.Command{
		Use:     "restore [-q] [-f FILE]",
		Short:   "Restore a dump (flynn mysql dump) from FILE, or stdin, into the app's database",
		Example: "  flynn mysql restore -f db.sql",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			in := cmd.InOrStdin()
			if rfile != "" {
				f, err := os.Open(rfile)
				if err != nil {
					return err
				}
				defer f.Close()
				in = f
			}
			p := newProgress(cmd.ErrOrStderr(), rquiet, "Restored")
			err := s.runMySQL(cmd, "mariadb", nil, io.TeeReader(in, p), cmd.OutOrStdout())
			p.done()
			return err
		},
	}
	restore.Flags().StringVarP(&rfile, "file", "f", "", "read the dump from FILE (default stdin)")
	restore.Flags().BoolVarP(&rquiet, "quiet", "q", false, "print no progress")
	c.AddCommand(console, dump, restore)
	return c
}

// runMySQL runs prog (mariadb or mariadb-dump) with args as a one-off job
// of the mysql appliance's current release, connected to the app's
// database: host, port, user and database as arguments, the password in
// the job's env (MYSQL_PWD).
func (s *state) runMySQL(cmd *cobra.Command, prog string, args []string, stdin io.Reader, stdout io.Writer) error {
	db, err := s.appDatabase(cmd.Context(), "mysql", mysqlEnv, "FLYNN_MYSQL")
	if err != nil {
		return err
	}
	e := db.env
	full := append([]string{prog, "--protocol=tcp", "-h", e["MYSQL_HOST"], "-P", e["MYSQL_PORT"], "-u", e["MYSQL_USER"]}, args...)
	full = append(full, e["MYSQL_DATABASE"])
	return s.runDatabaseJob(cmd, db, full, map[string]string{"MYSQL_PWD": e["MYSQL_PWD"]}, stdin, stdout)
}
