package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
	"github.com/flynnrebuilt/flynn/client/httpclient"
)

// client returns a controller client for the chosen cluster, using the
// cluster's key and (when set) its pinned TLS certificate.
func (s *state) client() (*controllerclient.Client, *Cluster, error) {
	cl, err := s.cluster()
	if err != nil {
		return nil, nil, err
	}
	return controllerclient.NewWithHTTP(cl.ControllerURL, cl.Key, cl.HTTPClient()), cl, nil
}

// appClient resolves the app (see state.app), checks that it exists on the
// cluster and returns it with a client.
func (s *state) appClient(ctx context.Context) (*controllerclient.Client, *api.App, error) {
	c, cl, err := s.client()
	if err != nil {
		return nil, nil, err
	}
	name, err := s.app(ctx)
	if err != nil {
		return nil, nil, err
	}
	app, err := c.GetApp(ctx, name)
	if errors.Is(err, api.ErrNotFound) {
		return nil, nil, fmt.Errorf("app %q not found on cluster %q: see flynn apps, or create it with flynn create %s", name, cl.Name, name)
	}
	if err != nil {
		return nil, nil, err
	}
	return c, app, nil
}

// raw sends a request to the controller outside controllerclient (for
// streams that need headers the client does not expose).
func (s *state) raw(ctx context.Context, method, path string, body any, header http.Header) (*http.Response, error) {
	cl, err := s.cluster()
	if err != nil {
		return nil, err
	}
	hc := &httpclient.Client{URL: cl.ControllerURL, Key: cl.Key, HTTP: cl.HTTPClient()}
	req, err := hc.NewRequest(ctx, method, path, body)
	if err != nil {
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	return hc.Send(req)
}

// explain turns an error into the one line the user sees, saying what to
// do next where the cause is known.
func explain(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		if strings.Contains(ue.Err.Error(), "TLS pin mismatch") {
			return ue.Err
		}
		if errors.Is(err, context.Canceled) {
			return errors.New("interrupted")
		}
		return fmt.Errorf("cannot reach the controller at %s: %v (is the cluster up? check its URL with flynn cluster)", hostOf(ue.URL), ue.Err)
	}
	if e, ok := api.AsError(err); ok {
		switch e.Code {
		case api.CodeUnauthorized:
			return errors.New("the controller refused the cluster key: re-add the cluster with the right key (flynn cluster add -f ...)")
		case api.CodeValidation:
			if e.Field != "" {
				return fmt.Errorf("invalid %s: %s", e.Field, e.Message)
			}
		}
		return errors.New(e.Message)
	}
	return err
}

func hostOf(raw string) string {
	if u, err := url.Parse(raw); err == nil && u.Host != "" {
		return u.Scheme + "://" + u.Host
	}
	return raw
}

// table returns a writer for aligned columns; call Flush when done.
func table(cmd *cobra.Command) *tabwriter.Writer {
	return tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 3, ' ', 0)
}

// printList prints items as JSON (asJSON) or as an aligned table with
// header (tab-separated columns) and one row of columns per item.
func printList[T any](cmd *cobra.Command, asJSON bool, items []T, header string, row func(T) []string) error {
	if asJSON {
		return writeJSON(cmd, items)
	}
	tw := table(cmd)
	fmt.Fprintln(tw, header)
	for _, it := range items {
		fmt.Fprintln(tw, strings.Join(row(it), "\t"))
	}
	return tw.Flush()
}

// printIDs prints one id per item (the -q of listings).
func printIDs[T any](cmd *cobra.Command, items []T, id func(T) string) error {
	for _, it := range items {
		fmt.Fprintln(cmd.OutOrStdout(), id(it))
	}
	return nil
}

var procTypeRE = regexp.MustCompile(`^[a-z\d]+(-[a-z\d]+)*$`)

// parseScaleArgs parses TYPE=N arguments.
func parseScaleArgs(args []string) (map[string]int, error) {
	out := map[string]int{}
	for _, a := range args {
		typ, n, ok := strings.Cut(a, "=")
		if !ok || !procTypeRE.MatchString(typ) {
			return nil, fmt.Errorf("invalid argument %q: use TYPE=N, e.g. web=2", a)
		}
		count, err := strconv.Atoi(n)
		if err != nil || count < 0 {
			return nil, fmt.Errorf("invalid count in %q: N must be a whole number >= 0, e.g. web=2", a)
		}
		out[typ] = count
	}
	return out, nil
}

var envKeyRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// parseKeyValues parses KEY=VALUE arguments (VALUE may be empty).
func parseKeyValues(args []string, what string) (map[string]string, error) {
	out := map[string]string{}
	for _, a := range args {
		k, v, ok := strings.Cut(a, "=")
		if !ok || !envKeyRE.MatchString(k) {
			return nil, fmt.Errorf("invalid %s %q: use KEY=VALUE, e.g. FOO=bar", what, a)
		}
		out[k] = v
	}
	return out, nil
}

func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}

// ago formats a time for tables.
func ago(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	d := time.Since(t).Round(time.Second)
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%d seconds ago", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%d minutes ago", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%d hours ago", int(d.Hours()))
	}
	return t.Local().Format("2006-01-02 15:04")
}

// confirm asks a yes/no question on stdin unless yes is set.
func confirm(cmd *cobra.Command, yes bool, question, refusal string) error {
	if yes {
		return nil
	}
	fmt.Fprintf(cmd.ErrOrStderr(), "%s (type yes to confirm): ", question)
	line, err := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	if strings.TrimSpace(line) != "yes" {
		return errors.New(refusal)
	}
	return nil
}

// homeDir is $HOME, else the user's home directory.
func (s *state) homeDir() (string, error) {
	if h := s.getenv("HOME"); h != "" {
		return h, nil
	}
	return os.UserHomeDir()
}
