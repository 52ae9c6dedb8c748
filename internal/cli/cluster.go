package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

func newClusterCmd(s *state) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "cluster",
		Short: "List, add and remove clusters",
		Long:  "Without a subcommand, list the clusters in the config (~/.flynnrc or $FLYNNRC); the default is marked.",
		Example: `  flynn cluster
  flynn cluster add -p Q9bT...= default flynn.localhost KEY
  flynn cluster default prod`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := s.config()
			if err != nil {
				return err
			}
			return printList(cmd, asJSON, cfg.Clusters, "NAME\tCONTROLLER URL\tGIT URL", func(cl *Cluster) []string {
				name := cl.Name
				if name == cfg.Default {
					name += " (default)"
				}
				return []string{name, cl.ControllerURL, cl.GitURL}
			})
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	c.AddCommand(newClusterAddCmd(s), newClusterRemoveCmd(s), newClusterDefaultCmd(s), newClusterBackupCmd(s))
	return c
}

func newClusterAddCmd(s *state) *cobra.Command {
	var (
		pin, caFile, controllerURL, gitURL, sshURL string
		force, makeDefault                         bool
	)
	c := &cobra.Command{
		Use:   "add [-p PIN] NAME DOMAIN KEY",
		Short: "Add a cluster to the config",
		Long: `Add a cluster. The controller is at https://controller.DOMAIN and git at
https://git.DOMAIN unless --controller-url / --git-url say otherwise (use them
when DOMAIN does not resolve to the cluster). PIN is the base64 SHA-256 of the
controller's TLS certificate, as flynn-host bootstrap prints it.`,
		Example: `  flynn cluster add -p Q9bT...= default flynn.localhost 5d1f...
  flynn cluster add --controller-url http://127.0.0.1:8081 dev flynn.localhost KEY`,
		Args: exactArgs(3, "NAME DOMAIN KEY"),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, domain, key := args[0], args[1], args[2]
			if !validAppName(name) {
				return fmt.Errorf("invalid cluster name %q: use lower-case letters, digits and dashes", name)
			}
			if domain == "" || strings.ContainsAny(domain, "/: ") {
				return fmt.Errorf("invalid domain %q: give a bare domain like flynn.localhost", domain)
			}
			if key == "" {
				return errors.New("the cluster key is empty")
			}
			if pin != "" {
				if err := validatePin(pin); err != nil {
					return err
				}
			}
			if caFile != "" {
				b, err := os.ReadFile(caFile)
				if err != nil {
					return fmt.Errorf("read --cert file: %w", err)
				}
				p, err := parseCertPin(b)
				if err != nil {
					return fmt.Errorf("--cert %s: %v", caFile, err)
				}
				if pin != "" && pin != p {
					return errors.New("-p and --cert name different certificates")
				}
				pin = p
			}
			cl := &Cluster{
				Name: name, Domain: domain, Key: key, TLSPin: pin,
				ControllerURL: "https://controller." + domain,
				GitURL:        "https://git." + domain,
				SSHGitURL:     sshURL,
			}
			if controllerURL != "" {
				cl.ControllerURL = trimURL(controllerURL)
			}
			if gitURL != "" {
				cl.GitURL = trimURL(gitURL)
			}
			cfg, err := s.config()
			if err != nil {
				return err
			}
			if err := cfg.Add(cl, force); err != nil {
				return err
			}
			if makeDefault {
				cfg.Default = name
			}
			if err := cfg.Save(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Cluster %q added.\n", name)
			return nil
		},
	}
	f := c.Flags()
	f.StringVarP(&pin, "tls-pin", "p", "", "base64 SHA-256 pin of the controller's TLS certificate")
	f.StringVar(&caFile, "cert", "", "PEM file of the controller's certificate (sets the pin)")
	f.StringVar(&controllerURL, "controller-url", "", "controller URL (default https://controller.DOMAIN)")
	f.StringVar(&gitURL, "git-url", "", "git URL (default https://git.DOMAIN)")
	f.StringVar(&sshURL, "ssh-git", "", "host:port of git over SSH (for flynn create --ssh)")
	f.BoolVarP(&force, "force", "f", false, "replace a cluster with the same name")
	f.BoolVarP(&makeDefault, "default", "d", false, "make it the default cluster")
	return c
}

func newClusterRemoveCmd(s *state) *cobra.Command {
	return &cobra.Command{
		Use:     "remove NAME",
		Short:   "Remove a cluster from the config",
		Example: "  flynn cluster remove old",
		Args:    exactArgs(1, "NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := s.config()
			if err != nil {
				return err
			}
			if err := cfg.Remove(args[0]); err != nil {
				return err
			}
			if err := cfg.Save(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Cluster %q removed.\n", args[0])
			return nil
		},
	}
}

func newClusterDefaultCmd(s *state) *cobra.Command {
	return &cobra.Command{
		Use:     "default [NAME]",
		Short:   "Show or set the default cluster",
		Example: "  flynn cluster default\n  flynn cluster default prod",
		Args:    cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			cfg, err := s.config()
			if err != nil {
				return err
			}
			if len(args) == 0 {
				if cfg.Default == "" {
					return errors.New("no default cluster: add one with flynn cluster add")
				}
				fmt.Fprintln(cmd.OutOrStdout(), cfg.Default)
				return nil
			}
			if cfg.Find(args[0]) == nil {
				return fmt.Errorf("cluster %q not found: see flynn cluster", args[0])
			}
			cfg.Default = args[0]
			if err := cfg.Save(); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%q is now the default cluster.\n", args[0])
			return nil
		},
	}
}

// exactArgs is cobra.ExactArgs with a message naming the arguments.
func exactArgs(n int, names string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != n {
			return fmt.Errorf("%s wants %s (see %s --help)", cmd.CommandPath(), names, cmd.CommandPath())
		}
		return nil
	}
}

func writeJSON(cmd *cobra.Command, v any) error {
	enc := json.NewEncoder(cmd.OutOrStdout())
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}
