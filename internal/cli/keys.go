package cli

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
)

func newKeyCmd(s *state) *cobra.Command {
	var asJSON bool
	c := &cobra.Command{
		Use:   "key",
		Short: "Manage the SSH public keys allowed to git push",
		Long:  "Without a subcommand, list the SSH public keys allowed to push over SSH.",
		Example: `  flynn key
  flynn key add
  flynn key add ~/.ssh/work.pub
  flynn key remove SHA256:abc...`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return s.listKeys(cmd, asJSON)
		},
	}
	c.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	list := &cobra.Command{
		Use:     "list",
		Short:   "List the SSH public keys",
		Example: "  flynn key list\n  flynn key list --json",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			return s.listKeys(cmd, asJSON)
		},
	}
	list.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	add := &cobra.Command{
		Use:   "add [PUBLIC-KEY-FILE]",
		Short: "Add an SSH public key (default: ~/.ssh/id_*.pub)",
		Example: `  flynn key add
  flynn key add ~/.ssh/id_ed25519.pub`,
		Args: cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			file := ""
			if len(args) == 1 {
				file = args[0]
			} else {
				home, err := s.homeDir()
				if err != nil {
					return err
				}
				for _, n := range []string{"id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub"} {
					p := filepath.Join(home, ".ssh", n)
					if _, err := os.Stat(p); err == nil {
						file = p
						break
					}
				}
				if file == "" {
					return errors.New("no SSH public key found in ~/.ssh (id_ed25519.pub, id_ecdsa.pub, id_rsa.pub): make one with ssh-keygen, or name the file")
				}
			}
			b, err := os.ReadFile(file)
			if err != nil {
				return fmt.Errorf("read public key: %w", err)
			}
			c, _, err := s.client()
			if err != nil {
				return err
			}
			k, err := c.CreateKey(cmd.Context(), strings.TrimSpace(string(b)))
			if err != nil {
				if errors.Is(err, api.ErrValidation) {
					return fmt.Errorf("%s is not an SSH public key (%v): give the .pub file", file, explain(err))
				}
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Key %s added.\n", k.Fingerprint)
			return nil
		},
	}
	remove := &cobra.Command{
		Use:     "remove FINGERPRINT|ID",
		Short:   "Remove an SSH public key",
		Example: "  flynn key remove SHA256:4eDqv...",
		Args:    exactArgs(1, "a key FINGERPRINT or ID"),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, _, err := s.client()
			if err != nil {
				return err
			}
			keys, err := c.KeyList(cmd.Context())
			if err != nil {
				return err
			}
			for _, k := range keys {
				if k.ID == args[0] || k.Fingerprint == args[0] {
					if err := c.DeleteKey(cmd.Context(), k.ID); err != nil {
						return err
					}
					fmt.Fprintf(cmd.OutOrStdout(), "Key %s removed.\n", k.Fingerprint)
					return nil
				}
			}
			return fmt.Errorf("key %q not found: see flynn key", args[0])
		},
	}
	c.AddCommand(list, add, remove)
	return c
}

func (s *state) listKeys(cmd *cobra.Command, asJSON bool) error {
	c, _, err := s.client()
	if err != nil {
		return err
	}
	keys, err := c.KeyList(cmd.Context())
	if err != nil {
		return err
	}
	return printList(cmd, asJSON, keys, "FINGERPRINT\tCOMMENT\tID", func(k *api.Key) []string {
		return []string{k.Fingerprint, k.Comment, k.ID}
	})
}
