package cli

import (
	"bufio"
	"fmt"
	"net/url"
	"strings"

	"github.com/spf13/cobra"
)

// newGitCredentialsCmd is the git credential helper that flynn create
// configures for a cluster's git URL: git asks it for a password and it
// answers with the cluster key of the cluster whose git URL matches.
func newGitCredentialsCmd(s *state) *cobra.Command {
	return &cobra.Command{
		Use:     "git-credentials get|store|erase",
		Short:   "Git credential helper for pushing to Flynn over HTTPS",
		Hidden:  true,
		Example: `  git config credential.https://git.flynn.localhost.helper "$(command -v flynn) git-credentials"`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if args[0] != "get" {
				return nil // store and erase are no-ops: the key lives in the config
			}
			req := map[string]string{}
			sc := bufio.NewScanner(cmd.InOrStdin())
			for sc.Scan() {
				line := sc.Text()
				if line == "" {
					break
				}
				k, v, _ := strings.Cut(line, "=")
				req[k] = v
			}
			cfg, err := s.config()
			if err != nil {
				return err
			}
			for _, cl := range cfg.Clusters {
				u, err := url.Parse(cl.GitURL)
				if err != nil || u.Host == "" {
					continue
				}
				if u.Scheme == req["protocol"] && u.Host == req["host"] {
					fmt.Fprintf(cmd.OutOrStdout(), "protocol=%s\nhost=%s\nusername=user\npassword=%s\n", u.Scheme, u.Host, cl.Key)
					return nil
				}
			}
			return nil // unknown host: let git try other helpers
		},
	}
}
