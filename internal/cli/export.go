package cli

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/controllerclient"
)

// An export is Flynn's: a tar of files under "<app name>/": app.json,
// routes.json, and when the app has a release, release.json,
// artifacts.json, formation.json and "<layer id>.layer" for each layer of
// its artifacts that lives in the blobstore (the slug). The stack layer,
// which every host holds, is not exported; import uses the importing
// cluster's.

func newExportCmd(s *state) *cobra.Command {
	var file string
	c := &cobra.Command{
		Use:   "export [-f FILE]",
		Short: "Export an app (release, slug, formation, routes and env) to a tar file",
		Long: `Write the app's metadata, deploy settings, routes, current release (with its
env and process types), the release's artifacts and slug layer, and its
formation to a tar file (default: stdout), in Flynn's export format. flynn
import creates an app from it, on this cluster or another.`,
		Example: `  flynn -a myapp export -f myapp.tar
  flynn -a myapp export > myapp.tar`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			c, app, err := s.appClient(ctx)
			if err != nil {
				return err
			}
			var dest io.Writer = cmd.OutOrStdout()
			if file != "" {
				f, err := os.Create(file)
				if err != nil {
					return fmt.Errorf("create export file: %w", err)
				}
				defer f.Close()
				dest = f
			}
			tw := &exportWriter{tw: tar.NewWriter(dest), dir: app.Name}
			if err := exportApp(ctx, c, app, tw); err != nil {
				return err
			}
			if err := tw.tw.Close(); err != nil {
				return fmt.Errorf("write export: %w", err)
			}
			if file != "" {
				fmt.Fprintf(cmd.ErrOrStderr(), "Exported %s to %s\n", app.Name, file)
			}
			return nil
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "file to write (default: stdout)")
	return c
}

type exportWriter struct {
	tw  *tar.Writer
	dir string
}

func (w *exportWriter) header(name string, size int64) error {
	return w.tw.WriteHeader(&tar.Header{
		Name: path.Join(w.dir, name), Mode: 0o644, Size: size,
		ModTime: time.Now(), Typeflag: tar.TypeReg,
	})
}

func (w *exportWriter) writeJSON(name string, v any) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	b = append(b, '\n')
	if err := w.header(name, int64(len(b))); err != nil {
		return fmt.Errorf("write %s: %w", name, err)
	}
	_, err = w.tw.Write(b)
	return err
}

func exportApp(ctx context.Context, c *controllerclient.Client, app *api.App, w *exportWriter) error {
	if err := w.writeJSON("app.json", app); err != nil {
		return err
	}
	routes, err := c.RouteList(ctx, app.ID)
	if err != nil {
		return fmt.Errorf("list routes: %w", err)
	}
	if err := w.writeJSON("routes.json", routes); err != nil {
		return err
	}
	if app.ReleaseID == "" {
		return nil // nothing more to export
	}
	rel, err := c.GetRelease(ctx, app.ReleaseID)
	if err != nil {
		return fmt.Errorf("get release: %w", err)
	}
	if err := w.writeJSON("release.json", rel); err != nil {
		return err
	}
	var arts []*api.Artifact
	for _, id := range rel.ArtifactIDs {
		a, err := c.GetArtifact(ctx, id)
		if err != nil {
			return fmt.Errorf("get artifact %s: %w", id, err)
		}
		arts = append(arts, a)
	}
	if len(arts) > 0 {
		if err := w.writeJSON("artifacts.json", arts); err != nil {
			return err
		}
	}
	stack := currentStack(ctx, c)
	for _, a := range arts {
		for _, l := range layers(a) {
			if !strings.HasPrefix(l.URL, "http://") && !strings.HasPrefix(l.URL, "https://") {
				continue // on every host (the stack), not in the blobstore
			}
			if stack != nil && l.Hashes["sha256"] != "" && l.Hashes["sha256"] == stack.Hashes["sha256"] {
				continue // the stack, which the cluster keeps in its blobstore for its hosts
			}
			if err := exportLayer(ctx, c, a.ID, l, w); err != nil {
				return err
			}
		}
	}
	f, err := c.GetFormation(ctx, app.ID, rel.ID)
	if err != nil && !errors.Is(err, api.ErrNotFound) {
		return fmt.Errorf("get formation: %w", err)
	}
	if err == nil {
		if err := w.writeJSON("formation.json", f); err != nil {
			return err
		}
	}
	return nil
}

// layers are the layers of a flynn artifact.
func layers(a *api.Artifact) []*api.ImageLayer {
	if a.Type != api.ArtifactTypeFlynn || a.Manifest == nil {
		return nil
	}
	var out []*api.ImageLayer
	for _, rf := range a.Manifest.Rootfs {
		for _, l := range rf.Layers {
			if l != nil {
				out = append(out, l)
			}
		}
	}
	return out
}

// exportLayer writes a layer's blob as "<id>.layer", checking its hash.
func exportLayer(ctx context.Context, c *controllerclient.Client, artifactID string, l *api.ImageLayer, w *exportWriter) error {
	rc, size, err := c.GetLayer(ctx, artifactID, l.ID)
	if err != nil {
		return fmt.Errorf("download layer %s: %w", l.ID, err)
	}
	defer rc.Close()
	var src io.Reader = rc
	if size < 0 {
		// Unknown length: spool it, as a tar entry needs its size first.
		tmp, err := os.CreateTemp("", "flynn-export-layer-")
		if err != nil {
			return err
		}
		defer os.Remove(tmp.Name())
		defer tmp.Close()
		if size, err = io.Copy(tmp, rc); err != nil {
			return fmt.Errorf("download layer %s: %w", l.ID, err)
		}
		if _, err := tmp.Seek(0, io.SeekStart); err != nil {
			return err
		}
		src = tmp
	}
	if err := w.header(l.ID+".layer", size); err != nil {
		return fmt.Errorf("write layer %s: %w", l.ID, err)
	}
	h := sha256.New()
	if _, err := io.Copy(io.MultiWriter(w.tw, h), src); err != nil {
		return fmt.Errorf("download layer %s: %w", l.ID, err)
	}
	if want := l.Hashes["sha256"]; want != "" && hex.EncodeToString(h.Sum(nil)) != want {
		return fmt.Errorf("layer %s downloaded with sha256 %x, want %s", l.ID, h.Sum(nil), want)
	}
	return nil
}

// export is an export read back.
type export struct {
	app       *api.App
	release   *api.Release
	artifacts []*api.Artifact
	formation *api.Formation
	routes    []*api.Route
	layers    map[string]string // layer id → temp file
}

func newImportCmd(s *state) *cobra.Command {
	var (
		file, name string
		routes     bool
	)
	c := &cobra.Command{
		Use:   "import [-f FILE] [-n NAME] [-r]",
		Short: "Create an app from an export",
		Long: `Create an app from a tar file written by flynn export (default: stdin): its
metadata and deploy settings, its release (env and process types) on the
exported slug and this cluster's stack, and its formation, so its processes
start. -r also creates the exported routes (those whose domain is taken are
skipped); services named after the exported app are renamed after the new one.`,
		Example: `  flynn import -f myapp.tar -n myapp-copy
  flynn import -r < myapp.tar`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			ctx := cmd.Context()
			var src io.Reader = cmd.InOrStdin()
			if file != "" {
				f, err := os.Open(file)
				if err != nil {
					return fmt.Errorf("open export file: %w", err)
				}
				defer f.Close()
				src = f
			}
			ex, err := readExport(src)
			defer func() {
				for _, p := range ex.layers {
					os.Remove(p)
				}
			}()
			if err != nil {
				return err
			}
			c, _, err := s.client()
			if err != nil {
				return err
			}
			return importApp(ctx, cmd, c, ex, name, routes)
		},
	}
	c.Flags().StringVarP(&file, "file", "f", "", "export file to read (default: stdin)")
	c.Flags().StringVarP(&name, "name", "n", "", "name of the new app (default: the exported app's)")
	c.Flags().BoolVarP(&routes, "routes", "r", false, "also create the exported routes")
	return c
}

func readExport(r io.Reader) (*export, error) {
	ex := &export{layers: map[string]string{}}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return ex, fmt.Errorf("read export: %w (is it a file written by flynn export?)", err)
		}
		base := path.Base(hdr.Name)
		decode := func(v any) error {
			if err := json.NewDecoder(tr).Decode(v); err != nil {
				return fmt.Errorf("read export: %s: %w", hdr.Name, err)
			}
			return nil
		}
		switch {
		case base == "app.json":
			ex.app = &api.App{}
			err = decode(ex.app)
		case base == "release.json":
			ex.release = &api.Release{}
			err = decode(ex.release)
		case base == "artifacts.json":
			err = decode(&ex.artifacts)
		case base == "formation.json":
			ex.formation = &api.Formation{}
			err = decode(ex.formation)
		case base == "routes.json":
			err = decode(&ex.routes)
		case strings.HasSuffix(base, ".layer"):
			f, ferr := os.CreateTemp("", "flynn-import-layer-")
			if ferr != nil {
				return ex, ferr
			}
			ex.layers[strings.TrimSuffix(base, ".layer")] = f.Name()
			_, err = io.Copy(f, tr)
			f.Close()
		}
		if err != nil {
			return ex, err
		}
	}
	if ex.app == nil {
		return ex, errors.New("the export has no app.json: is it a file written by flynn export?")
	}
	return ex, nil
}

func importApp(ctx context.Context, cmd *cobra.Command, c *controllerclient.Client, ex *export, name string, withRoutes bool) error {
	oldName := ex.app.Name
	app := &api.App{Name: ex.app.Name, Meta: ex.app.Meta, Strategy: ex.app.Strategy, DeployTimeout: ex.app.DeployTimeout}
	if name != "" {
		app.Name = name
	}
	if err := c.CreateApp(ctx, app); err != nil {
		if errors.Is(err, api.ErrObjectExists) || errors.Is(err, api.ErrConflict) {
			return fmt.Errorf("app %q exists: import under another name with -n NAME", app.Name)
		}
		return fmt.Errorf("create app: %w", explain(err))
	}
	rename := func(s string) string {
		if rest, ok := strings.CutPrefix(s, oldName); ok && (rest == "" || strings.HasPrefix(rest, "-")) {
			return app.Name + rest
		}
		return s
	}
	if ex.release != nil {
		stack := currentStack(ctx, c)
		rel := *ex.release
		rel.ID, rel.AppID, rel.ArtifactIDs, rel.CreatedAt = "", app.ID, nil, time.Time{}
		for _, a := range ex.artifacts {
			na := *a
			na.ID, na.CreatedAt = "", time.Time{}
			if na.Manifest != nil {
				m := *na.Manifest
				m.Rootfs = nil
				for _, rf := range na.Manifest.Rootfs {
					nrf := *rf
					nrf.Layers = nil
					for _, l := range rf.Layers {
						nl, err := importLayer(ctx, c, l, ex.layers, stack)
						if err != nil {
							return err
						}
						nrf.Layers = append(nrf.Layers, nl)
					}
					m.Rootfs = append(m.Rootfs, &nrf)
				}
				na.Manifest = &m
				if len(m.Rootfs) > 0 && len(m.Rootfs[0].Layers) > 0 {
					na.URI = m.Rootfs[0].Layers[len(m.Rootfs[0].Layers)-1].URL
				}
			}
			if err := c.CreateArtifact(ctx, &na); err != nil {
				return fmt.Errorf("create artifact: %w", explain(err))
			}
			rel.ArtifactIDs = append(rel.ArtifactIDs, na.ID)
		}
		for _, p := range rel.Processes {
			if p == nil {
				continue
			}
			p.Service = rename(p.Service)
			for i := range p.Ports {
				if p.Ports[i].Service != nil {
					p.Ports[i].Service.Name = rename(p.Ports[i].Service.Name)
				}
			}
		}
		if err := c.CreateRelease(ctx, &rel); err != nil {
			return fmt.Errorf("create release: %w", explain(err))
		}
		if err := c.SetAppRelease(ctx, app.ID, rel.ID); err != nil {
			return fmt.Errorf("set the app's release: %w", explain(err))
		}
		if ex.formation != nil {
			f := &api.Formation{AppID: app.ID, ReleaseID: rel.ID, Processes: ex.formation.Processes, Tags: ex.formation.Tags}
			if err := c.PutFormation(ctx, f); err != nil {
				return fmt.Errorf("create formation: %w", explain(err))
			}
		}
	}
	added := 0
	if withRoutes {
		for _, r := range ex.routes {
			nr := *r
			nr.ID, nr.ParentRef, nr.CreatedAt, nr.UpdatedAt = "", "", time.Time{}, time.Time{}
			nr.Service = rename(nr.Service)
			if err := c.CreateRoute(ctx, app.ID, &nr); err != nil {
				if errors.Is(err, api.ErrConflict) || errors.Is(err, api.ErrObjectExists) {
					fmt.Fprintf(cmd.ErrOrStderr(), "skipped route %s %s: %s\n", r.Type, routeName(r), explain(err))
					continue
				}
				return fmt.Errorf("create route: %w", explain(err))
			}
			added++
		}
	}
	fmt.Fprintf(cmd.OutOrStdout(), "Imported %s (added %d routes)\n", app.Name, added)
	return nil
}

func routeName(r *api.Route) string {
	if r.Type == api.RouteTCP {
		return fmt.Sprintf("port %d", r.Port)
	}
	return r.Domain + r.Path
}

// importLayer stores an exported layer's blob in this cluster's blobstore,
// or, for a layer that was not exported (the stack every host holds),
// uses this cluster's stack layer when it is known.
func importLayer(ctx context.Context, c *controllerclient.Client, l *api.ImageLayer, files map[string]string, stack *api.ImageLayer) (*api.ImageLayer, error) {
	file, ok := files[l.ID]
	if !ok {
		// Only the stack is left out of an export.
		if stack != nil {
			return stack, nil
		}
		return l, nil
	}
	f, err := os.Open(file)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	sum := l.Hashes["sha256"]
	if sum == "" {
		sum = l.ID
	}
	nl, err := c.PutLayer(ctx, sum, f, fi.Size())
	if err != nil {
		return nil, fmt.Errorf("upload layer %s: %w", l.ID, explain(err))
	}
	nl.Meta = l.Meta
	return nl, nil
}

// currentStack is the stack layer this cluster builds and runs apps on,
// as its git receiver is configured (nil when unknown).
func currentStack(ctx context.Context, c *controllerclient.Client) *api.ImageLayer {
	rel, err := c.GetAppRelease(ctx, "gitreceive")
	if err != nil {
		return nil
	}
	var env map[string]string
	for _, p := range rel.Processes {
		if p != nil && p.Env["STACK_URL"] != "" {
			env = p.Env
		}
	}
	if env == nil {
		env = rel.Env
	}
	u, sum := env["STACK_URL"], env["STACK_SHA256"]
	if u == "" || sum == "" {
		return nil
	}
	return &api.ImageLayer{ID: sum, Type: api.LayerTypeTar, Hashes: map[string]string{"sha256": sum}, URL: u}
}
