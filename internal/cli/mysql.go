package cli

import (
	"io"
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
	dump := dumpCommand("Dump the app's database (SQL) to FILE, or stdout", "  flynn mysql dump -f db.sql", func(cmd *cobra.Command, w io.Writer) error {
		return s.runMySQL(cmd, "mariadb-dump", []string{"--single-transaction", "--routines", "--no-tablespaces"}, strings.NewReader(""), w)
	})
	restore := restoreCommand("Restore a dump (flynn mysql dump) from FILE, or stdin, into the app's database", "", "  flynn mysql restore -f db.sql", func(cmd *cobra.Command, r io.Reader) error {
		return s.runMySQL(cmd, "mariadb", nil, r, cmd.OutOrStdout())
	})
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
