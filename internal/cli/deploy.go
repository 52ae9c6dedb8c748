package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// gitSource is a repository to deploy from: the --git, --branch, --rev,
// --ssh-key and --known-hosts flags of flynn create and flynn deploy.
type gitSource struct {
	url, branch, rev, sshKey, knownHosts string
}

func (g *gitSource) flags(c *cobra.Command, withRev bool) {
	f := c.Flags()
	f.StringVar(&g.url, "git", "", "deploy from this git repository (https://..., ssh://... or USER@HOST:PATH)")
	f.StringVar(&g.branch, "branch", "", "the branch to deploy (default: the repository's HEAD)")
	if withRev {
		f.StringVar(&g.rev, "rev", "", "the commit to deploy (default: the branch's tip)")
	}
	f.StringVar(&g.sshKey, "ssh-key", "", "private key FILE the cluster fetches an SSH URL with (a deploy key)")
	f.StringVar(&g.knownHosts, "known-hosts", "", "known_hosts FILE the SSH server's host key must be in (default: any host key)")
}

// request reads the key files and returns the request to gitreceive.
func (g *gitSource) request() (*api.GitDeployRequest, error) {
	req := &api.GitDeployRequest{URL: g.url, Branch: g.branch, Rev: g.rev}
	for _, f := range []struct {
		flag, file string
		dst        *string
	}{{"--ssh-key", g.sshKey, &req.SSHKey}, {"--known-hosts", g.knownHosts, &req.KnownHosts}} {
		if f.file == "" {
			continue
		}
		b, err := os.ReadFile(f.file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.flag, err)
		}
		*f.dst = string(b)
	}
	return req, nil
}

func newDeployCmd(s *state) *cobra.Command {
	var src gitSource
	c := &cobra.Command{
		Use:   "deploy --git URL [--branch BRANCH] [--rev COMMIT]",
		Short: "Build and deploy the app from a git repository the cluster fetches",
		Long: `Build and deploy the app from a git repository: the cluster fetches it (over
HTTPS, or over SSH with the deploy key given by --ssh-key) and builds and
deploys the commit exactly as a git push of it would, with the same output.
The app's git repository on the cluster then holds that commit.`,
		Example: `  flynn -a myapp deploy --git https://github.com/flynn-examples/go-flynn-example
  flynn -a myapp deploy --git https://example.com/app.git --branch stable --rev 1a2b3c4
  flynn -a myapp deploy --git git@example.com:team/app.git --ssh-key ./deploy_key`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if src.url == "" {
				return errors.New("give the repository with --git URL")
			}
			ctx := cmd.Context()
			_, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			return s.gitDeploy(ctx, cmd.OutOrStdout(), app.Name, &src)
		},
	}
	src.flags(c, true)
	return c
}

// gitDeploy asks the cluster's gitreceive to deploy app from src, copying
// the build's output to out as it comes.
func (s *state) gitDeploy(ctx context.Context, out io.Writer, app string, src *gitSource) error {
	req, err := src.request()
	if err != nil {
		return err
	}
	cl, err := s.cluster()
	if err != nil {
		return err
	}
	if cl.GitURL == "" {
		return fmt.Errorf("cluster %q has no git URL: re-add it with flynn cluster add", cl.Name)
	}
	hc := &httpclient.Client{URL: cl.GitURL, Key: cl.Key, HTTP: cl.HTTPClient()}
	hreq, err := hc.NewRequest(ctx, http.MethodPost, "/"+app+".git/deploy", req)
	if err != nil {
		return err
	}
	res, err := hc.Send(hreq)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		var ev api.GitDeployEvent
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			return fmt.Errorf("git deploy: bad response line %q", strings.TrimSpace(sc.Text()))
		}
		io.WriteString(out, ev.Output)
		if ev.Done {
			if ev.Error != "" {
				return errors.New(ev.Error)
			}
			return nil
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("git deploy: output interrupted: %w", err)
	}
	return errors.New("git deploy: the cluster ended the deploy without a result: see flynn log -a gitreceive")
}
