package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/flynnrebuilt/flynn/internal/backup"
)

func newClusterBackupCmd(s *state) *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "backup [--file FILE]",
		Short: "Back up the whole cluster to one file",
		Long: `Write a backup of the cluster: every app (not the platform's own) with its
releases, env, formations and routes, the SSH keys, providers and resources,
and every blob the apps need (slugs, repos, build caches), as one tar file.
Restore it on a fresh machine with 'flynn-host up --from-backup FILE' (or
'make up BACKUP=FILE'). The file is written to a temporary name, checked
whole, then renamed, so FILE is never a partial backup. Without --file the
backup goes to standard output.`,
		Example: `  flynn cluster backup --file flynn-backup.tar
  flynn cluster backup | gzip > flynn-backup.tar.gz`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var out io.Writer = cmd.OutOrStdout()
			tmp := ""
			if file == "" {
				if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
					return errors.New("not writing a backup to a terminal: give --file FILE or redirect the output")
				}
			} else {
				f, err := os.CreateTemp(filepath.Dir(file), "."+filepath.Base(file)+".*.partial")
				if err != nil {
					return err
				}
				tmp = f.Name()
				defer func() {
					f.Close()
					os.Remove(tmp) // gone once renamed
				}()
				out = f
			}
			start := time.Now()
			n, err := s.streamBackup(ctx, out, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if tmp == "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "backup: %s in %s\n", byteSize(n), time.Since(start).Round(100*time.Millisecond))
				return nil
			}
			c, err := backup.Check(tmp)
			if err != nil {
				return fmt.Errorf("the backup the controller sent is not whole, so it was not saved: %w", err)
			}
			if err := os.Rename(tmp, file); err != nil {
				return err
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "backup of %d apps and %d blobs (%s) written to %s in %s\n",
				len(c.State.Apps), len(c.Blobs), byteSize(n), file, time.Since(start).Round(100*time.Millisecond))
			return nil
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "file to write the backup to (default: standard output)")
	return c
}

// streamBackup copies GET /backup to w, reporting progress on progress
// every second.
func (s *state) streamBackup(ctx context.Context, w io.Writer, progress io.Writer) (int64, error) {
	res, err := s.raw(ctx, "GET", "/backup", nil, nil)
	if err != nil {
		return 0, explain(err)
	}
	defer res.Body.Close()
	var n int64
	buf := make([]byte, 256<<10)
	last := time.Now()
	for {
		m, rerr := res.Body.Read(buf)
		if m > 0 {
			if _, err := w.Write(buf[:m]); err != nil {
				return n, err
			}
			n += int64(m)
			if time.Since(last) >= time.Second {
				fmt.Fprintf(progress, "backup: %s so far\n", byteSize(n))
				last = time.Now()
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, fmt.Errorf("the backup stream broke after %s: %w", byteSize(n), rerr)
		}
	}
}

// byteSize is n bytes for people.
func byteSize(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%.1f kB", float64(n)/(1<<10))
	}
	return fmt.Sprintf("%d B", n)
}
