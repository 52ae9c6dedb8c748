package blobstore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net"
	"net/http"
	"path"
	"strconv"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/httpapi"
)

// Config configures a blobstore server.
type Config struct {
	// Listen is the TCP address to serve on, e.g. ":5380".
	Listen string
	// Dir is the root directory of the filesystem backend.
	Dir string
	// NoSync skips fsync of uploads (see FSOptions).
	NoSync bool
	// Keys, when not empty, are the cluster keys PUT and DELETE need (as the
	// HTTP Basic password or a Bearer token). GET and HEAD stay open.
	Keys []string
	// MaxBlobSize limits one upload, in bytes; 0 means no limit.
	MaxBlobSize int64
}

// Server is the blobstore's HTTP API over a Backend.
type Server struct {
	backend Backend
	auth    *httpapi.KeyAuth
	maxSize int64
	log     *slog.Logger
}

// NewServer returns a server for b. With keys, writes need one of them.
func NewServer(b Backend, keys []string, maxSize int64, log *slog.Logger) *Server {
	s := &Server{backend: b, maxSize: maxSize, log: log}
	if len(keys) > 0 {
		s.auth = httpapi.NewKeyAuth(keys...)
	}
	return s
}

// Run serves a filesystem-backed blobstore on cfg.Listen until ctx is done.
func Run(ctx context.Context, cfg Config, log *slog.Logger) error {
	if cfg.Dir == "" {
		return errors.New("blobstore: no storage directory configured")
	}
	b, err := NewFS(cfg.Dir, FSOptions{NoSync: cfg.NoSync})
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return fmt.Errorf("blobstore: %w", err)
	}
	log.Info("blobstore listening", "addr", ln.Addr().String(), "dir", cfg.Dir, "auth", len(cfg.Keys) > 0)
	return httpapi.Serve(ctx, ln, NewServer(b, cfg.Keys, cfg.MaxBlobSize, log).Handler(), log)
}

// Handler returns the server's HTTP handler, with the standard middleware.
func (s *Server) Handler() http.Handler {
	return httpapi.Wrap(s.log, s.routes())
}

func (s *Server) routes() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /.well-known/status", httpapi.HandlerFunc(s.status))
	mux.Handle("GET /{path...}", httpapi.HandlerFunc(s.get))
	mux.Handle("PUT /{path...}", s.writeAuth(httpapi.HandlerFunc(s.put)))
	mux.Handle("DELETE /{path...}", s.writeAuth(httpapi.HandlerFunc(s.delete)))
	mux.Handle("/{path...}", httpapi.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Allow", "GET, HEAD, PUT, DELETE")
		return &api.Error{Code: api.CodeMethodNotAllowed, Message: fmt.Sprintf("method %s is not supported; use GET, HEAD, PUT or DELETE", r.Method)}
	}))
	// ServeMux would redirect unclean paths (/a/../b) instead of refusing
	// them, so paths are checked before it sees them.
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/.well-known/status" {
			if _, _, err := ValidName(r.URL.Path); err != nil {
				httpapi.WriteError(w, r, err)
				return
			}
		}
		mux.ServeHTTP(w, r)
	})
}

func (s *Server) writeAuth(h http.Handler) http.Handler {
	if s.auth == nil {
		return h
	}
	return s.auth.Require(nil, h)
}

func (s *Server) status(w http.ResponseWriter, r *http.Request) error {
	return httpapi.WriteJSON(w, http.StatusOK, map[string]string{"status": "healthy"})
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
	if dir {
		entries, err := s.backend.List(r.Context(), name)
		if err != nil {
			return err
		}
		return httpapi.WriteJSON(w, http.StatusOK, entries)
	}
	obj, err := s.backend.Open(r.Context(), name)
	if err != nil {
		return err
	}
	defer obj.Close()
	info := obj.Info()
	h := w.Header()
	ctype := mime.TypeByExtension(path.Ext(name))
	if ctype == "" {
		ctype = "application/octet-stream"
	}
	h.Set("Content-Type", ctype)
	if info.SHA256 != "" {
		h.Set("ETag", `"`+info.SHA256+`"`)
		h.Set(api.BlobSHA256Header, info.SHA256)
	}
	// ServeContent handles HEAD, Range, If-Range, If-None-Match and
	// If-Modified-Since, and streams from the seeker.
	http.ServeContent(w, r, "", info.Modified, obj)
	return nil
}

func (s *Server) put(w http.ResponseWriter, r *http.Request) error {
	name, dir, err := ValidName(r.URL.Path)
	if err != nil {
		return err
	}
	if dir {
		return api.Validation("path", "cannot PUT a directory path (it ends in /)")
	}
	want := r.Header.Get(api.BlobSHA256Header)
	if want != "" {
		if err := ValidSHA256(want); err != nil {
			return err
		}
	}
	var info api.BlobInfo
	if src := r.Header.Get(api.BlobCopyFromHeader); src != "" {
		srcName, srcDir, err := ValidName(src)
		if err != nil {
			err.(*api.Error).Field = api.BlobCopyFromHeader
			return err
		}
		if srcDir {
			return api.Validation(api.BlobCopyFromHeader, "cannot copy a directory")
		}
		obj, err := s.backend.Open(r.Context(), srcName)
		if err != nil {
			return err
		}
		defer obj.Close()
		info, err = s.backend.Put(r.Context(), name, obj, want)
		if err != nil {
			return err
		}
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
		info, err = s.backend.Put(r.Context(), name, body, want)
		if err != nil {
			var mbe *http.MaxBytesError
			if errors.As(err, &mbe) {
				return &api.Error{Code: api.CodeTooLarge, Message: fmt.Sprintf("blob exceeds the limit of %d bytes", s.maxSize)}
			}
			return err
		}
	}
	w.Header().Set("ETag", `"`+info.SHA256+`"`)
	w.Header().Set(api.BlobSHA256Header, info.SHA256)
	return httpapi.WriteJSON(w, http.StatusCreated, info)
}

func (s *Server) delete(w http.ResponseWriter, r *http.Request) error {
	name, dir, err := ValidName(r.URL.Path)
	if err != nil {
		return err
	}
	if dir {
		return api.Validation("path", "cannot DELETE a directory path (it ends in /)")
	}
	if err := s.backend.Delete(r.Context(), name); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}
