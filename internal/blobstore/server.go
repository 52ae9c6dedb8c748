package blobstore

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"path"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/discoverdclient"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// Paths the server answers itself, under the reserved /.well-known.
const (
	statusPath = "/.well-known/status"
	// treePath lists every blob, one JSON treeEntry a line.
	treePath = "/.well-known/blobstore/tree"
	// tombstonesPath lists the recorded deletes as a JSON array.
	tombstonesPath = "/.well-known/blobstore/tombstones"
)

// Backend names for Config.Backend.
const (
	BackendFS = "fs"
	BackendS3 = "s3"
)

// DefaultService is the discoverd service blobstore instances register as.
const DefaultService = "blobstore"

// Config configures a blobstore server (Run).
type Config struct {
	// Listen is the TCP address to serve on, e.g. ":5380".
	Listen string
	// Backend is BackendFS (the default) or BackendS3.
	Backend string
	// Dir is the root directory of the filesystem backend.
	Dir string
	// NoSync skips fsync of uploads (see FSOptions).
	NoSync bool
	// S3 configures the S3 backend.
	S3 S3Config
	// Keys, when not empty, are the keys every request but GET
	// /.well-known/status needs (as the HTTP Basic password or a Bearer
	// token), and the keys URLs are signed with (api.SignBlobURL): a
	// signed URL grants what it says (read or write one path until a
	// time) without a key. The first is also the key this instance
	// presents to its peers.
	Keys []string
	// ReadKeys are keys that may only read (GET and HEAD): the host
	// agents', which fetch image layers.
	ReadKeys []string
	// MaxBlobSize limits one upload, in bytes; 0 means no limit.
	MaxBlobSize int64

	// Discoverd is the URL of discoverd (several comma-separated). With
	// it, and the filesystem backend, the instances registered as
	// Service replicate each other's blobs. Without it, or with the S3
	// backend (a store the instances share), an instance stands alone.
	Discoverd string
	// DiscoverdToken is the cluster token discoverd wants.
	DiscoverdToken string
	// Service is the discoverd service of the instances (DefaultService
	// when empty).
	Service string
	// Advertise is the host:port this instance is registered as, so it
	// can skip itself among the instances; optional (instances also
	// recognize themselves by id).
	Advertise string
	// MinCopies, SyncInterval, RetryInterval and TombstoneTTL: see
	// ReplicationConfig.
	MinCopies     int
	SyncInterval  time.Duration
	RetryInterval time.Duration
	TombstoneTTL  time.Duration
}

// ServerConfig configures a Server.
type ServerConfig struct {
	Backend Backend
	// Keys, when not empty, are the keys requests need, and sign URLs
	// (see Config.Keys).
	Keys []string
	// ReadKeys may only read (see Config.ReadKeys).
	ReadKeys []string
	// MaxBlobSize limits one upload, in bytes; 0 means no limit.
	MaxBlobSize int64
	// Replication, when set, makes the server one of several instances
	// that replicate each other.
	Replication *ReplicationConfig
}

// Server is the blobstore's HTTP API over a Backend.
type Server struct {
	id      string // this instance, as its peers know it
	backend Backend
	auth    *httpapi.KeyAuth
	read    *httpapi.KeyAuth
	keys    []string // URL signing keys
	maxSize int64
	repl    *replicator // nil: no replication
	log     *slog.Logger
}

// New returns a server for cfg. With cfg.Replication, call Run for the
// background replication and Close at the end.
func New(cfg ServerConfig, log *slog.Logger) (*Server, error) {
	var id [8]byte
	rand.Read(id[:])
	s := &Server{id: hex.EncodeToString(id[:]), backend: cfg.Backend, maxSize: cfg.MaxBlobSize, log: log}
	if len(cfg.Keys) > 0 {
		s.auth = httpapi.NewKeyAuth(cfg.Keys...)
		s.read = httpapi.NewKeyAuth(cfg.ReadKeys...)
		s.keys = cfg.Keys
	}
	if cfg.Replication != nil {
		r, err := newReplicator(s.id, *cfg.Replication, cfg.Backend, log.With("part", "replication"))
		if err != nil {
			return nil, err
		}
		s.repl = r
	}
	return s, nil
}

// NewServer returns a server for b that stands alone (no replication).
// With keys, requests need one of them or a URL signed with one.
func NewServer(b Backend, keys []string, maxSize int64, log *slog.Logger) *Server {
	s, _ := New(ServerConfig{Backend: b, Keys: keys, MaxBlobSize: maxSize}, log)
	return s
}

// CatchUp applies the deletes the other instances recorded, so that an
// instance that was away does not serve blobs deleted meanwhile. Run
// (the package function) calls it before it serves.
func (s *Server) CatchUp(ctx context.Context) {
	if s.repl != nil {
		s.repl.catchUp(ctx)
	}
}

// Run does the replication's background work until ctx is done, and
// returns once it has stopped: it retries replicas that failed and runs
// the anti-entropy passes. Without replication it only waits for ctx.
// It returns nil: its work goes on through failures, which it logs.
func (s *Server) Run(ctx context.Context) error {
	if s.repl == nil {
		<-ctx.Done()
		return nil
	}
	s.repl.run(ctx)
	return nil
}

// Close releases the server's files. Call it after Run has returned and
// the handler is no longer served.
func (s *Server) Close() error {
	if s.repl != nil {
		return s.repl.tombs.close()
	}
	return nil
}

// Run serves a blobstore as cfg says on cfg.Listen until ctx is done.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	var (
		b   Backend
		err error
	)
	switch cfg.Backend {
	case "", BackendFS:
		if cfg.Dir == "" {
			return errors.New("blobstore: no storage directory configured")
		}
		b, err = NewFS(cfg.Dir, FSOptions{NoSync: cfg.NoSync})
	case BackendS3:
		b, err = NewS3(ctx, cfg.S3)
	default:
		return fmt.Errorf("blobstore: unknown backend %q; use %q or %q", cfg.Backend, BackendFS, BackendS3)
	}
	if err != nil {
		return err
	}
	scfg := ServerConfig{Backend: b, Keys: cfg.Keys, ReadKeys: cfg.ReadKeys, MaxBlobSize: cfg.MaxBlobSize}
	switch {
	case cfg.Discoverd == "":
	case cfg.Backend == BackendS3:
		log.Info("no replication between blobstore instances: they share the S3 bucket")
	default:
		service := cfg.Service
		if service == "" {
			service = DefaultService
		}
		key := ""
		if len(cfg.Keys) > 0 {
			key = cfg.Keys[0]
		}
		scfg.Replication = &ReplicationConfig{
			Peers:         DiscoverdPeers{Client: discoverdclient.New(cfg.Discoverd, cfg.DiscoverdToken), Service: service},
			Self:          cfg.Advertise,
			Listen:        cfg.Listen,
			Key:           key,
			MinCopies:     cfg.MinCopies,
			StateDir:      filepath.Join(cfg.Dir, stateDirName),
			NoSync:        cfg.NoSync,
			TombstoneTTL:  cfg.TombstoneTTL,
			SyncInterval:  cfg.SyncInterval,
			RetryInterval: cfg.RetryInterval,
		}
	}
	srv, err := New(scfg, log)
	if err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	defer srv.Close()
	if scfg.Replication != nil {
		// Before the port is open: until then peers count this
		// instance as down, and its host does not register it.
		cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		srv.CatchUp(cctx)
		cancel()
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	log.Info("blobstore listening", "addr", ln.Addr().String(), "backend", orDefault(cfg.Backend, BackendFS), "dir", cfg.Dir,
		"auth", len(cfg.Keys) > 0, "replication", scfg.Replication != nil, "id", srv.id)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		srv.Run(ctx)
	}()
	err = httpapi.Serve(ctx, ln, srv.Handler(), log)
	cancel()
	wg.Wait()
	return err
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// Handler returns the server's HTTP handler, with the standard middleware.
func (s *Server) Handler() http.Handler {
	return httpapi.Wrap(s.log, s.routes())
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET "+statusPath, httpapi.HandlerFunc(s.status))
	mux.Handle("GET "+treePath, s.fullAuth(httpapi.HandlerFunc(s.tree)))
	mux.Handle("GET "+tombstonesPath, s.fullAuth(httpapi.HandlerFunc(s.tombstones)))
	mux.Handle("GET /{path...}", s.readAuth(httpapi.HandlerFunc(s.get)))
	mux.Handle("PUT /{path...}", s.writeAuth(httpapi.HandlerFunc(s.put)))
	mux.Handle("DELETE /{path...}", s.writeAuth(httpapi.HandlerFunc(s.delete)))
	mux.Handle("/{path...}", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Allow", "GET, HEAD, PUT, DELETE")
		return &api.Error{Code: api.CodeMethodNotAllowed, Message: fmt.Sprintf("method %s is not supported; use GET, HEAD, PUT or DELETE", r.Method)}
	}))
	// ServeMux would redirect unclean paths (/a/../b) instead of refusing
	// them, so paths are checked before it sees them.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case statusPath, treePath, tombstonesPath:
		default:
			if _, _, err := ValidName(r.URL.Path); err != nil {
				httpapi.WriteError(w, r, err)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// writeAuth lets through requests with a key or a URL signed for writing
// the path.
func (s *Server) writeAuth(h http.Handler) http.Handler {
	if s.auth == nil {
		return h
	}
	return s.auth.Require(s.signed, h)
}

// readAuth lets through requests with a key, a read key or a URL signed
// for reading the path.
func (s *Server) readAuth(h http.Handler) http.Handler {
	if s.auth == nil {
		return h
	}
	return s.auth.Require(func(r *http.Request) bool { return s.read.Check(r) || s.signed(r) }, h)
}

// fullAuth lets through requests with a key: listings of every blob are
// for the instances and the platform.
func (s *Server) fullAuth(h http.Handler) http.Handler {
	if s.auth == nil {
		return h
	}
	return s.auth.Require(nil, h)
}

// signed reports whether r's URL is signed, with one of the keys, for r's
// method and path. A signed write may not copy another blob (which it
// could not read) nor be a replica.
func (s *Server) signed(r *http.Request) bool {
	if r.URL.Query().Get(api.BlobSigParam) == "" || r.Header.Get(api.BlobCopyFromHeader) != "" || isReplica(r) {
		return false
	}
	now := time.Now()
	for _, k := range s.keys {
		if api.CheckBlobSignature(r.URL.Query(), k, r.Method, r.URL.Path, now) {
			return true
		}
	}
	return false
}

// isReplica reports whether r comes from another instance.
func isReplica(r *http.Request) bool { return r.Header.Get(ReplicaHeader) != "" }

// version reads the version a replicated write carries.
func version(r *http.Request) (time.Time, error) {
	v := r.Header.Get(api.BlobModifiedHeader)
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil || t.IsZero() {
		return time.Time{}, api.Validation(api.BlobModifiedHeader, "a replicated write needs the blob's version in %s (RFC 3339 time)", api.BlobModifiedHeader)
	}
	return t.UTC(), nil
}

type statusReply struct {
	Status string `json:"status"`
	// ID identifies this instance (it changes when it restarts).
	ID string `json:"id"`
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) error {
	return httpapi.WriteJSON(w, http.StatusOK, statusReply{Status: "healthy", ID: s.id})
}

// tree lists every blob of this instance, one JSON object a line.
func (s *Server) tree(w http.ResponseWriter, r *http.Request) error {
	w.Header().Set("Content-Type", "application/x-ndjson")
	enc := json.NewEncoder(w)
	started := false
	err := walk(r.Context(), s.backend, func(e treeEntry) error {
		started = true
		return enc.Encode(e)
	})
	if err != nil && !started {
		return err
	}
	if err != nil {
		// The reply has begun: end it with the error, which the reader
		// takes as an incomplete list.
		enc.Encode(treeEntry{Error: err.Error()})
	}
	return nil
}

func (s *Server) tombstones(w http.ResponseWriter, r *http.Request) error {
	list := []Tombstone{}
	if s.repl != nil {
		list = s.repl.tombs.list()
	}
	return httpapi.WriteJSON(w, http.StatusOK, list)
}

// blobHeaders sets the headers that describe a blob being served.
func blobHeaders(h http.Header, name string, info api.BlobInfo) {
	ctype := mime.TypeByExtension(path.Ext(name))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	h.Set("Content-Type", ctype)
	if info.SHA256 != "" {
		h.Set("ETag", `"`+info.SHA256+`"`)
		h.Set(api.BlobSHA256Header, info.SHA256)
	}
	h.Set(api.BlobModifiedHeader, info.Modified.UTC().Format(time.RFC3339Nano))
}

func (s *Server) get(w http.ResponseWriter, r *http.Request) error {
	name, dir, err := ValidName(r.URL.Path)
	if err != nil {
		return err
	}
	if !dir {
		if v := r.URL.Query().Get("dir"); v != "" {
			if dir, err = strconv.ParseBool(v); err != nil {
				return api.Validation("dir", "dir must be true or false")
			}
		}
	}
	replicate := s.repl != nil && !isReplica(r)
	if dir {
		entries, err := s.backend.List(r.Context(), name)
		if replicate && (err == nil || errors.Is(err, api.ErrNotFound)) {
			entries, err = s.repl.mergeList(r.Context(), name, entries, err)
		}
		if err != nil {
			return err
		}
		return httpapi.WriteJSON(w, http.StatusOK, entries)
	}
	obj, err := s.backend.Open(r.Context(), name)
	if replicate && errors.Is(err, api.ErrNotFound) {
		return s.repair(w, r, name, err)
	}
	if err != nil {
		return err
	}
	return s.serve(w, r, name, obj)
}

// serve writes the open blob obj, closing it.
func (s *Server) serve(w http.ResponseWriter, r *http.Request, name string, obj Object) error {
	defer obj.Close()
	info := obj.Info()
	blobHeaders(w.Header(), name, info)
	// ServeContent handles HEAD, Range, If-Range, If-None-Match and
	// If-Modified-Since, and streams from the seeker.
	http.ServeContent(w, r, "", info.Modified, obj)
	return nil
}

// repair serves a blob this instance lacks from the peer with its newest
// copy, and keeps a copy. A plain GET streams from the peer to the client
// while the copy is written; other requests (HEAD, ranges, conditions)
// are answered from the copy once it is complete. localErr is returned
// when no peer has the blob.
func (s *Server) repair(w http.ResponseWriter, r *http.Request, name string, localErr error) error {
	ctx := r.Context()
	p, _, err := s.repl.find(ctx, name)
	if err != nil {
		return localErr
	}
	if r.Method == http.MethodGet && plainGet(r) {
		return s.streamRepair(w, r, p, name, localErr)
	}
	if _, err := s.repl.fetch(ctx, p, name); err != nil {
		if errors.Is(err, api.ErrNotFound) {
			return localErr
		}
		return err
	}
	obj, err := s.backend.Open(ctx, name)
	if err != nil {
		return err
	}
	return s.serve(w, r, name, obj)
}

// plainGet reports whether r asks for a whole blob without conditions.
func plainGet(r *http.Request) bool {
	for _, h := range []string{"Range", "If-Range", "If-Match", "If-None-Match", "If-Modified-Since", "If-Unmodified-Since"} {
		if r.Header.Get(h) != "" {
			return false
		}
	}
	return true
}

func (s *Server) streamRepair(w http.ResponseWriter, r *http.Request, p *peer, name string, localErr error) error {
	body, info, err := p.get(r.Context(), name)
	if errors.Is(err, api.ErrNotFound) {
		return localErr
	}
	if err != nil {
		return fmt.Errorf("read %q from %s: %w", "/"+name, p.addr, err)
	}
	defer body.Close()
	if s.repl.tombs.dead(name, info.Modified) {
		return localErr
	}
	h := w.Header()
	blobHeaders(h, name, info)
	h.Set("Last-Modified", info.Modified.UTC().Format(http.TimeFormat))
	h.Set("Accept-Ranges", "bytes")
	h.Set("Content-Length", strconv.FormatInt(info.Size, 10))
	w.WriteHeader(http.StatusOK)
	// The client gets its last byte once the blob is checked (and kept,
	// if it can be): a blob that fails its checksum reaches the client
	// cut short, and a client that has the whole blob finds it here.
	out := &holdTail{w: w, left: max(info.Size-1, 0), h: sha256.New()}
	_, err = s.backend.Put(r.Context(), name, io.TeeReader(body, out), PutOptions{SHA256: info.SHA256, Size: info.Size, Modified: info.Modified})
	if err != nil && !errors.Is(err, ErrStale) {
		s.log.Warn("keeping a copy of a blob read from a peer failed", "path", "/"+name, "peer", p.addr, "err", err)
		// The copy failed, maybe not the blob: the client may still
		// have it whole.
		io.Copy(out, body)
	}
	if out.n == info.Size && (info.SHA256 == "" || hex.EncodeToString(out.h.Sum(nil)) == info.SHA256) {
		w.Write(out.tail)
	}
	return nil
}

// holdTail writes to w all but what comes after the first left bytes,
// which it keeps in tail, and hashes and counts everything.
type holdTail struct {
	w    io.Writer
	left int64
	tail []byte
	h    hash.Hash
	n    int64
	err  error // the first write error of w: the client is gone
}

func (t *holdTail) Write(p []byte) (int, error) {
	if t.err != nil {
		return 0, t.err
	}
	t.h.Write(p)
	t.n += int64(len(p))
	pass := p
	if int64(len(pass)) > t.left {
		pass = p[:t.left]
		t.tail = append(t.tail, p[t.left:]...)
	}
	t.left -= int64(len(pass))
	if len(pass) > 0 {
		if _, err := t.w.Write(pass); err != nil {
			t.err = err
			return 0, err
		}
	}
	return len(p), nil
}

func (s *Server) put(w http.ResponseWriter, r *http.Request) error {
	name, dir, err := ValidName(r.URL.Path)
	if err != nil {
		return err
	}
	if dir {
		return api.Validation("path", "cannot PUT a directory path (it ends in /)")
	}
	opts := PutOptions{SHA256: r.Header.Get(api.BlobSHA256Header)}
	if opts.SHA256 != "" {
		if err := ValidSHA256(opts.SHA256); err != nil {
			return err
		}
	}
	replica := isReplica(r)
	src := r.Header.Get(api.BlobCopyFromHeader)
	if replica {
		if src != "" {
			return api.Validation(api.BlobCopyFromHeader, "a replicated write carries the blob, not a copy source")
		}
		if opts.Modified, err = version(r); err != nil {
			return err
		}
		if s.repl != nil && s.repl.tombs.dead(name, opts.Modified) {
			// Deleted after this version was written: keep it deleted.
			// The body is read all the same, so the sender sees the
			// reply rather than a connection closed under its upload.
			io.Copy(io.Discard, r.Body)
			return httpapi.WriteJSON(w, http.StatusOK, api.BlobInfo{Path: "/" + name})
		}
	} else if s.repl != nil {
		if at, ok := s.repl.tombs.get(name); ok {
			opts.NotBefore = at.Add(time.Nanosecond)
		}
	}
	var info api.BlobInfo
	if src != "" {
		info, err = s.copy(r.Context(), name, src, opts)
	} else {
		// Blobs are streamed to the backend: the server's body limit
		// for JSON requests does not apply; maxSize does.
		httpapi.SetMaxBody(r, -1)
		body := r.Body
		if s.maxSize > 0 {
			if r.ContentLength > s.maxSize {
				return &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("blob of %d bytes exceeds the limit of %d", r.ContentLength, s.maxSize)}
			}
			body = http.MaxBytesReader(w, r.Body, s.maxSize)
		}
		if r.ContentLength > 0 {
			opts.Size = r.ContentLength
		}
		info, err = s.backend.Put(r.Context(), name, body, opts)
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("blob exceeds the limit of %d bytes", s.maxSize)}
		}
	}
	if replica && errors.Is(err, ErrStale) {
		// This instance has a newer version already.
		return httpapi.WriteJSON(w, http.StatusOK, info)
	}
	if err != nil {
		return err
	}
	if s.repl != nil && !replica {
		copies, err := s.repl.replicatePut(r.Context(), name)
		if err != nil {
			return err
		}
		info.Copies = copies
	}
	w.Header().Set("ETag", `"`+info.SHA256+`"`)
	w.Header().Set(api.BlobSHA256Header, info.SHA256)
	return httpapi.WriteJSON(w, http.StatusCreated, info)
}

// copy stores at name a copy of the blob at src (a request path),
// fetching src from a peer first when this instance lacks it.
func (s *Server) copy(ctx context.Context, name, src string, opts PutOptions) (api.BlobInfo, error) {
	srcName, srcDir, err := ValidName(src)
	if err != nil {
		err.(*api.Error).Field = api.BlobCopyFromHeader
		return api.BlobInfo{}, err
	}
	if srcDir {
		return api.BlobInfo{}, api.Validation(api.BlobCopyFromHeader, "cannot copy a directory")
	}
	obj, err := s.backend.Open(ctx, srcName)
	if s.repl != nil && errors.Is(err, api.ErrNotFound) {
		if p, _, ferr := s.repl.find(ctx, srcName); ferr == nil {
			if _, ferr := s.repl.fetch(ctx, p, srcName); ferr == nil {
				obj, err = s.backend.Open(ctx, srcName)
			}
		}
	}
	if err != nil {
		return api.BlobInfo{}, err
	}
	defer obj.Close()
	opts.Size = obj.Info().Size
	return s.backend.Put(ctx, name, obj, opts)
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) error {
	name, dir, err := ValidName(r.URL.Path)
	if err != nil {
		return err
	}
	if dir {
		return api.Validation("path", "cannot DELETE a directory path (it ends in /)")
	}
	ctx := r.Context()
	if isReplica(r) {
		at, err := version(r)
		if err != nil {
			return err
		}
		return s.deleteReplica(w, r, name, at)
	}
	info, err := s.backend.Delete(ctx, name, DeleteOptions{})
	missing := errors.Is(err, api.ErrNotFound)
	if err != nil && (!missing || s.repl == nil) {
		return err
	}
	if s.repl != nil {
		// The delete's version is after the blob's, wherever it is newest.
		at := stampTime(time.Now(), time.Time{}, info.Modified)
		if missing {
			if _, pinfo, ferr := s.repl.find(ctx, name); ferr == nil {
				at = stampTime(at, time.Time{}, pinfo.Modified)
			}
		}
		if err := s.repl.tombs.add(name, at); err != nil {
			return err
		}
		had, rerr := s.repl.replicateDelete(ctx, name, at)
		if rerr != nil {
			return rerr
		}
		if missing && !had {
			return err
		}
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// deleteReplica applies a delete done on another instance at version at:
// 204 when a blob was removed, 200 with its info when a newer blob is
// kept, 404 when there was none.
func (s *Server) deleteReplica(w http.ResponseWriter, r *http.Request, name string, at time.Time) error {
	if s.repl != nil {
		if err := s.repl.tombs.add(name, at); err != nil {
			return err
		}
	}
	info, err := s.backend.Delete(r.Context(), name, DeleteOptions{Before: at})
	switch {
	case errors.Is(err, ErrStale):
		return httpapi.WriteJSON(w, http.StatusOK, info)
	case errors.Is(err, api.ErrConflict):
		// A directory here: there is no blob to delete.
		return notFound(name)
	case err != nil:
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
