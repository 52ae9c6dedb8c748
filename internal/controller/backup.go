package controller

import (
	"fmt"
	"net/http"
	"time"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/client/blobclient"
	"github.com/flynnrebuilt/flynn/internal/backup"
	"github.com/flynnrebuilt/flynn/internal/version"
)

// backup is GET /backup: a tar of the whole cluster (internal/backup's
// format: the apps' state and every blob), streamed. An error once the
// stream has begun can only end it: the file then lacks its last entry,
// which every reader of backups refuses.
func (s *Server) backup(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.BlobURL == "" {
		return &api.Error{Code: api.CodeUnavailable, Message: "this controller has no blobstore to back up (set BLOBSTORE_URL)"}
	}
	src := backup.StoreSource{Store: s.store, Blobstore: blobclient.New(s.cfg.BlobURL, s.cfg.AuthKeys[0], s.cfg.HTTP)}
	w.Header().Set("Content-Type", "application/x-tar")
	w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="flynn-backup-%s.tar"`, time.Now().UTC().Format("2006-01-02-150405")))
	meta := backup.Meta{Version: version.String(), Domain: s.cfg.ClusterDomain, BlobURL: s.cfg.BlobURL}
	if err := backup.Write(r.Context(), w, src, meta); err != nil {
		s.log.Error("backup", "err", err)
	}
	return nil
}
