package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
)

// newVolumeCmd is `flynn volume`: the persistent volumes the hosts keep
// for process types that ask for one (a database's data directory).
func newVolumeCmd(s *state) *cobra.Command {
	var asJSON bool
	list := func(cmd *cobra.Command, args []string) error {
		ctx := cmd.Context()
		c, _, err := s.client()
		if err != nil {
			return err
		}
		appID := ""
		if s.appFlag != "" || s.getenv("FLYNN_APP") != "" {
			_, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			appID = app.ID
		}
		vs, err := c.VolumeList(ctx, appID)
		if err != nil {
			return err
		}
		return printList(cmd, asJSON, vs, "ID\tHOST\tAPP\tTYPE\tPATH\tSIZE\tIN USE\tCREATED", func(v *api.Volume) []string {
			return []string{v.ID, v.HostID, orDefault(v.AppName, v.AppID), v.JobType, v.Path, byteSize(v.Size), yesNo(v.InUse), ago(v.CreatedAt)}
		})
	}
	c := &cobra.Command{
		Use:   "volume",
		Short: "List, show and delete the hosts' persistent volumes",
		Example: `  flynn volume list
  flynn -a postgres volume list
  flynn volume show 0b5e...-postgres-1
  flynn volume delete 0b5e...-postgres-1`,
		Args: cobra.NoArgs,
		RunE: list,
	}
	c.PersistentFlags().BoolVar(&asJSON, "json", false, "print JSON")
	c.AddCommand(&cobra.Command{
		Use:     "list",
		Short:   "List volumes (of the app with -a or $FLYNN_APP, else all)",
		Example: "  flynn volume list\n  flynn -a postgres volume list --json",
		Args:    cobra.NoArgs,
		RunE:    list,
	})
	c.AddCommand(&cobra.Command{
		Use:     "show ID",
		Short:   "Show a volume",
		Example: "  flynn volume show 0b5e...-postgres-1",
		Args:    exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := s.client()
			if err != nil {
				return err
			}
			v, err := c.GetVolume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if asJSON {
				return writeJSON(cmd, v)
			}
			tw := table(cmd)
			for _, kv := range [][2]string{
				{"ID", v.ID}, {"Host", v.HostID}, {"Type", v.Type}, {"App", orDefault(v.AppName, v.AppID)},
				{"Release", v.ReleaseID}, {"Process type", v.JobType}, {"Path", v.Path}, {"Size", byteSize(v.Size)},
				{"Last job", v.JobID}, {"In use", yesNo(v.InUse)}, {"Created", ago(v.CreatedAt)},
			} {
				fmt.Fprintf(tw, "%s:\t%s\n", kv[0], kv[1])
			}
			return tw.Flush()
		},
	})
	var yes bool
	del := &cobra.Command{
		Use:     "delete [-y] ID",
		Short:   "Delete a volume and its data (refused while a job uses it)",
		Example: "  flynn volume delete -y 0b5e...-postgres-1",
		Args:    exactArgs(1, "ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := s.client()
			if err != nil {
				return err
			}
			v, err := c.GetVolume(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if err := confirm(cmd, yes, fmt.Sprintf("Delete volume %s on host %s with all its data?", v.ID, v.HostID), "volume not deleted: answer yes, or pass -y"); err != nil {
				return err
			}
			if err := c.DeleteVolume(cmd.Context(), v.ID); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Deleted volume %s.\n", v.ID)
			return nil
		},
	}
	del.Flags().BoolVarP(&yes, "yes", "y", false, "do not ask for confirmation")
	c.AddCommand(del)
	return c
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
