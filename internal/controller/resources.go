package controller

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/controller/ctrlstore"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

func decodeProvider(r *http.Request) (*api.Provider, error) {
	p := &api.Provider{}
	if err := httpapi.DecodeJSON(r, p); err != nil {
		return nil, err
	}
	if err := validateAppName("name", p.Name); err != nil {
		return nil, api.Validation("name", "provider name %q is invalid: use lower-case letters, digits and dashes", p.Name)
	}
	u, err := url.Parse(p.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, api.Validation("url", "url must be an http(s) URL")
	}
	return p, nil
}

func (s *Server) createProvider(w http.ResponseWriter, r *http.Request) error {
	p, err := decodeProvider(r)
	if err != nil {
		return err
	}
	p.ID = ctrlstore.NewID()
	p.CreatedAt = now()
	if err := s.store.CreateProvider(r.Context(), p); err != nil {
		return err
	}
	return ok(w, p)
}

// ResourceRequest is the body of POST /providers/{provider}/resources.
type ResourceRequest struct {
	// Apps get the resource's env merged into a new release.
	Apps []string `json:"apps,omitempty"`
	// Config is passed to the provider as the request body.
	Config json.RawMessage `json:"config,omitempty"`
}

// providerReply is what a provider answers to a provisioning request.
type providerReply struct {
	ID  string            `json:"id"`
	Env map[string]string `json:"env"`
}

func decodeResourceRequest(r *http.Request) (*ResourceRequest, error) {
	req := &ResourceRequest{}
	if err := httpapi.DecodeJSON(r, req); err != nil {
		return nil, err
	}
	for i, a := range req.Apps {
		if err := validateID(fmt.Sprintf("apps[%d]", i), a); err != nil {
			return nil, err
		}
	}
	return req, nil
}

func (s *Server) provisionResource(w http.ResponseWriter, r *http.Request) error {
	req, err := decodeResourceRequest(r)
	if err != nil {
		return err
	}
	p, err := s.store.GetProvider(r.Context(), r.PathValue("provider"))
	if err != nil {
		return err
	}
	var appIDs []string
	for i, a := range req.Apps {
		app, err := s.store.GetApp(r.Context(), a)
		if err != nil {
			return api.Validation(fmt.Sprintf("apps[%d]", i), "app %q not found", a)
		}
		appIDs = append(appIDs, app.ID)
	}
	body := []byte(req.Config)
	if len(body) == 0 {
		body = []byte("{}")
	}
	// A client that hangs up does not cut the provision short: what the
	// provider makes is recorded, or deleted again (below). A provider
	// that never answers is given up on after providerTimeout.
	pctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), providerTimeout)
	defer cancel()
	res, err := s.providerDo(pctx, func() (*http.Request, error) {
		preq, err := http.NewRequestWithContext(pctx, http.MethodPost, p.URL, bytes.NewReader(body))
		if err != nil {
			return nil, fmt.Errorf("provider request: %w", err)
		}
		preq.Header.Set("Content-Type", "application/json")
		return preq, nil
	})
	if err != nil {
		return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("provider %s unreachable: %v", p.Name, err)}
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(res.Body, 1<<20))
	if res.StatusCode/100 != 2 {
		return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("provider %s answered %s: %s", p.Name, res.Status, strings.TrimSpace(string(b)))}
	}
	var pr providerReply
	if err := json.Unmarshal(b, &pr); err != nil {
		return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("provider %s answered invalid JSON: %v", p.Name, err)}
	}
	res2 := &api.Resource{ID: ctrlstore.NewID(), ProviderID: p.ID, ExternalID: pr.ID, Env: pr.Env, Apps: appIDs, CreatedAt: now()}
	if stored, err := s.saveResource(r, res2); err != nil {
		if !stored && pr.ID != "" {
			// Not recorded (the provider's env is invalid, an app went,
			// the store failed, the client hung up): no one would ever
			// hold its credentials, so it goes again.
			dctx, cancel := context.WithTimeout(context.WithoutCancel(r.Context()), providerTimeout)
			defer cancel()
			if derr := s.providerDelete(dctx, p, pr.ID); derr != nil {
				s.log.Warn("a provisioned resource that could not be recorded is left at its provider", "provider", p.Name, "id", pr.ID, "err", derr)
			}
		}
		return err
	}
	return ok(w, res2)
}

// providerDelete asks provider p to delete the resource it knows as id
// (DELETE <provider-url>?id=<id>); one it does not know counts as deleted.
func (s *Server) providerDelete(ctx context.Context, p *api.Provider, id string) error {
	u := p.URL
	if strings.Contains(u, "?") {
		u += "&"
	} else {
		u += "?"
	}
	u += "id=" + url.QueryEscape(id)
	dres, err := s.providerDo(ctx, func() (*http.Request, error) {
		dreq, err := http.NewRequestWithContext(ctx, http.MethodDelete, u, nil)
		if err != nil {
			return nil, fmt.Errorf("deprovision request: %w", err)
		}
		return dreq, nil
	})
	if err != nil {
		return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("provider %s unreachable: %v", p.Name, err)}
	}
	dres.Body.Close()
	if dres.StatusCode/100 != 2 && dres.StatusCode != http.StatusNotFound {
		return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("provider %s answered %s to the deletion", p.Name, dres.Status)}
	}
	return nil
}

// providerTimeout bounds a provision's request to its provider, and the
// deletion of what could not be recorded.
const providerTimeout = 5 * time.Minute

// providerWait bounds how long a provider that cannot be reached (its
// job restarting, its service without a live instance) is waited for.
const providerWait = 30 * time.Second

// providerDo sends the request newReq makes to a provider, again while it
// cannot be dialled (the request never reached it, so sending it again
// provisions nothing twice), for up to providerWait.
func (s *Server) providerDo(ctx context.Context, newReq func() (*http.Request, error)) (*http.Response, error) {
	deadline := time.Now().Add(providerWait)
	for {
		req, err := newReq()
		if err != nil {
			return nil, err
		}
		res, err := s.cfg.HTTP.Do(req)
		var oe *net.OpError
		dial := errors.Is(err, discoverdclient.ErrNoLiveInstance) || (errors.As(err, &oe) && oe.Op == "dial")
		if err == nil || !dial || time.Now().After(deadline) {
			return res, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// saveResource stores a resource and gives each of its apps a new release
// with the resource's env merged into the current release's env; stored
// reports whether the resource was stored (a later deploy may still have
// failed).
func (s *Server) saveResource(r *http.Request, res *api.Resource) (stored bool, err error) {
	if err := validateEnv("env", res.Env); err != nil {
		return false, err
	}
	rels := map[string]*api.Release{}
	deploy := map[string]bool{} // apps whose new release is to be deployed
	for _, appID := range res.Apps {
		app, err := s.store.GetApp(r.Context(), appID)
		if err != nil {
			return false, err
		}
		rel := &api.Release{AppID: app.ID}
		if app.ReleaseID != "" {
			cur, err := s.store.GetRelease(r.Context(), app.ReleaseID)
			if err != nil {
				return false, err
			}
			cp := *cur
			rel = &cp
			rel.Env = maps.Clone(cur.Env)
			deploy[app.ID] = true
		}
		if rel.Env == nil {
			rel.Env = map[string]string{}
		}
		maps.Copy(rel.Env, res.Env)
		rel.ID = ctrlstore.NewID()
		rel.CreatedAt = now()
		rels[app.ID] = rel
	}
	if err := s.store.PutResource(r.Context(), res, rels); err != nil {
		// A write whose answer was lost may have been done: only a
		// resource surely not there counts as not stored.
		_, gerr := s.store.GetResource(context.WithoutCancel(r.Context()), res.ProviderID, res.ID)
		return !errors.Is(gerr, api.ErrNotFound), err
	}
	for appID := range deploy {
		if err := s.deployResourceRelease(r, appID, rels[appID].ID); err != nil {
			return true, err
		}
	}
	return true, nil
}

// deployResourceRelease deploys an app's release made for a resource
// being added or removed, so its running jobs get (or lose) the env, and
// waits until the deployment ends: the request answers once the app runs
// the new release. A client that then deploys the same env itself, as
// Flynn's CLI does after adding a resource, finds no deployment in its
// way.
func (s *Server) deployResourceRelease(r *http.Request, appID, releaseID string) error {
	d, err := s.store.CreateDeployment(r.Context(), appID, releaseID)
	if err != nil {
		if e, ok := api.AsError(err); ok && e.Code == api.CodeConflict {
			return api.Conflict("release %s of app %s was made with the resource's env but cannot be deployed now (%s): once that deployment ends, deploy it with flynn release rollback %s", releaseID, appID, e.Message, releaseID)
		}
		return fmt.Errorf("deploy release %s of app %s: %w", releaseID, appID, err)
	}
	timeout := time.Duration(d.DeployTimeout)*time.Second + 10*time.Second
	if rel, err := s.store.GetRelease(r.Context(), releaseID); err == nil && rel.Processes[api.ProcessTypeRelease] != nil {
		timeout += api.ReleasePhaseTimeout // the deployer runs its release command first
	}
	deadline := time.Now().Add(timeout)
	for d.Status != api.DeploymentComplete {
		if d.Status == api.DeploymentFailed {
			return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("deployment %s of release %s (with the resource's env change) failed: see flynn -a %s deployment", d.ID, releaseID, appID)}
		}
		if time.Now().After(deadline) {
			return &api.Error{Code: api.CodeUnavailable, Message: fmt.Sprintf("deployment %s of release %s (with the resource's env change) did not finish within %s: see flynn -a %s deployment", d.ID, releaseID, timeout, appID)}
		}
		select {
		case <-r.Context().Done():
			return r.Context().Err()
		case <-time.After(200 * time.Millisecond):
		}
		if d, err = s.store.GetDeployment(r.Context(), d.ID); err != nil {
			return err
		}
	}
	return nil
}

// stripResourceEnv gives each app of res a release without the env the
// resource gave it (the vars still holding the resource's values) and
// deploys it.
func (s *Server) stripResourceEnv(r *http.Request, res *api.Resource) error {
	for _, appID := range res.Apps {
		app, err := s.store.GetApp(r.Context(), appID)
		if errors.Is(err, api.ErrNotFound) {
			continue
		}
		if err != nil {
			return err
		}
		if app.ReleaseID == "" {
			continue
		}
		cur, err := s.store.GetRelease(r.Context(), app.ReleaseID)
		if err != nil {
			return err
		}
		env := maps.Clone(cur.Env)
		for k, v := range res.Env {
			if env[k] == v {
				delete(env, k)
			}
		}
		if len(env) == len(cur.Env) {
			continue
		}
		rel := *cur
		rel.ID = ctrlstore.NewID()
		rel.Env = env
		rel.CreatedAt = now()
		if err := s.store.CreateRelease(r.Context(), &rel); err != nil {
			return fmt.Errorf("release without resource %s for app %s: %w", res.ID, app.Name, err)
		}
		if err := s.deployResourceRelease(r, app.ID, rel.ID); err != nil {
			return err
		}
	}
	return nil
}

func (s *Server) putResource(w http.ResponseWriter, r *http.Request) error {
	res := &api.Resource{}
	if err := httpapi.DecodeJSON(r, res); err != nil {
		return err
	}
	p, err := s.store.GetProvider(r.Context(), r.PathValue("provider"))
	if err != nil {
		return err
	}
	res.ID = r.PathValue("id")
	if err := validateID("id", res.ID); err != nil {
		return err
	}
	res.ProviderID = p.ID
	if res.CreatedAt.IsZero() {
		res.CreatedAt = now()
	}
	for i, a := range res.Apps {
		app, err := s.store.GetApp(r.Context(), a)
		if err != nil {
			return api.Validation(fmt.Sprintf("apps[%d]", i), "app %q not found", a)
		}
		res.Apps[i] = app.ID
	}
	if _, err := s.saveResource(r, res); err != nil {
		return err
	}
	return ok(w, res)
}

func (s *Server) getResource(w http.ResponseWriter, r *http.Request) error {
	p, err := s.store.GetProvider(r.Context(), r.PathValue("provider"))
	if err != nil {
		return err
	}
	res, err := s.store.GetResource(r.Context(), p.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	return ok(w, res)
}

func (s *Server) listProviderResources(w http.ResponseWriter, r *http.Request) error {
	p, err := s.store.GetProvider(r.Context(), r.PathValue("provider"))
	if err != nil {
		return err
	}
	rs, err := s.store.ListResources(r.Context(), p.ID, "")
	if err != nil {
		return err
	}
	return ok(w, rs)
}

func (s *Server) listAppResources(w http.ResponseWriter, r *http.Request) error {
	app, err := s.app(r)
	if err != nil {
		return err
	}
	rs, err := s.store.ListResources(r.Context(), "", app.ID)
	if err != nil {
		return err
	}
	return ok(w, rs)
}

// deprovisionResource asks the provider to delete the resource
// (DELETE <provider-url>?id=<external-id>) and then deletes the record.
func (s *Server) deprovisionResource(w http.ResponseWriter, r *http.Request) error {
	p, err := s.store.GetProvider(r.Context(), r.PathValue("provider"))
	if err != nil {
		return err
	}
	res, err := s.store.GetResource(r.Context(), p.ID, r.PathValue("id"))
	if err != nil {
		return err
	}
	// The apps stop using it first: their env loses the resource's vars
	// and is deployed before the provider deletes the data.
	if err := s.stripResourceEnv(r, res); err != nil {
		return err
	}
	if res.ExternalID != "" {
		if err := s.providerDelete(r.Context(), p, res.ExternalID); err != nil {
			return err
		}
	}
	if _, err := s.store.DeleteResource(r.Context(), p.ID, res.ID); err != nil {
		return err
	}
	return ok(w, res)
}

func (s *Server) attachResource(w http.ResponseWriter, r *http.Request) error {
	return s.linkResource(w, r, true)
}

func (s *Server) detachResource(w http.ResponseWriter, r *http.Request) error {
	return s.linkResource(w, r, false)
}

func (s *Server) linkResource(w http.ResponseWriter, r *http.Request, attach bool) error {
	p, err := s.store.GetProvider(r.Context(), r.PathValue("provider"))
	if err != nil {
		return err
	}
	app, err := s.app(r)
	if err != nil {
		return err
	}
	var res *api.Resource
	if attach {
		res, err = s.store.AttachResource(r.Context(), p.ID, r.PathValue("id"), app.ID)
	} else {
		res, err = s.store.DetachResource(r.Context(), p.ID, r.PathValue("id"), app.ID)
	}
	if err != nil {
		return err
	}
	return ok(w, res)
}

// decodeKey reads an SSH public key in authorized_keys format.
func decodeKey(r *http.Request) (*api.Key, error) {
	in := &api.Key{}
	if err := httpapi.DecodeJSON(r, in); err != nil {
		return nil, err
	}
	if strings.TrimSpace(in.Key) == "" {
		return nil, api.Validation("key", "key is required: paste an SSH public key (e.g. ~/.ssh/id_ed25519.pub)")
	}
	pub, comment, _, rest, err := ssh.ParseAuthorizedKey([]byte(in.Key))
	if err != nil {
		return nil, api.Validation("key", "not an SSH public key: %v", err)
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, api.Validation("key", "give one key at a time")
	}
	sum := sha256.Sum256(pub.Marshal())
	return &api.Key{
		ID:          hex.EncodeToString(sum[:16]),
		Key:         strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))),
		Fingerprint: ssh.FingerprintSHA256(pub),
		Comment:     comment,
	}, nil
}

func (s *Server) createKey(w http.ResponseWriter, r *http.Request) error {
	k, err := decodeKey(r)
	if err != nil {
		return err
	}
	k.CreatedAt = now()
	if err := s.store.CreateKey(r.Context(), k); err != nil {
		return err
	}
	return ok(w, k)
}

func (s *Server) deleteKey(w http.ResponseWriter, r *http.Request) error {
	id := r.PathValue("id")
	if err := validateID("id", id); err != nil {
		return api.NotFound("key %q not found", id)
	}
	if err := s.store.DeleteKey(r.Context(), id); err != nil {
		return err
	}
	return ok(w, map[string]string{"id": id})
}
