package hostcmd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/flynnrebuilt/flynn/api"
	"github.com/flynnrebuilt/flynn/internal/daemon"
	"github.com/flynnrebuilt/flynn/internal/host"
	"github.com/flynnrebuilt/flynn/internal/pki"
)

// hostMounts turns the mount locations of the platform's jobs
// ("flynn-host:NAME") into this host's own paths, so a job's release names
// no host's files:
//
//	flynn-host:bin         this host's flynn-host binary
//	flynn-host:component/NAME  the binary next to it that runs component
//	                       NAME (api.ComponentBinaries), or flynn-host
//	                       itself where that is missing
//	flynn-host:tls         the cluster's CA, certificate and key (root only)
//	flynn-host:tls-public  the CA and certificate
//	flynn-host:data/APP    APP's data dir on this host, made on first use
//	flynn-host:etcd-tls    the CA and the component certificate and key,
//	                       for etcd's mutual TLS
type hostMounts struct {
	stateDir string
	etcd     *clientv3.Client
}

var dataName = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

func (m *hostMounts) resolve(ctx context.Context, loc string) (string, error) {
	name := strings.TrimPrefix(loc, host.MountPrefix)
	switch {
	case name == "bin":
		return os.Executable()
	case strings.HasPrefix(name, "component/"):
		self, err := os.Executable()
		if err != nil {
			return "", err
		}
		return componentBinary(self, strings.TrimPrefix(name, "component/"))
	case name == "tls" || name == "tls-public":
		return m.tls(ctx, name == "tls-public")
	case name == "etcd-tls":
		return m.etcdTLS()
	case strings.HasPrefix(name, "data/"):
		app := strings.TrimPrefix(name, "data/")
		if !dataName.MatchString(app) {
			return "", fmt.Errorf("data dir name %q: lower-case letters, digits and dashes", app)
		}
		dir := filepath.Join(m.stateDir, "data", app)
		return dir, os.MkdirAll(dir, 0o700)
	}
	return "", errors.New("unknown: use flynn-host:bin, :component/NAME, :tls, :tls-public, :etcd-tls or :data/NAME")
}

// componentBinary is the path of the binary that runs component name
// (api.ComponentBinaries) next to the flynn-host binary self, or self when
// it is missing (flynn-host runs the component when called flynn-NAME, see
// ComponentCmd).
func componentBinary(self, name string) (string, error) {
	file := api.ComponentBinaries[name]
	if file == "" {
		return "", fmt.Errorf("no component binary runs %q", name)
	}
	bin := filepath.Join(filepath.Dir(self), file)
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return bin, nil
	}
	return self, nil
}

// etcdTLS copies the CA certificate and the component certificate and key
// (never the CA's or the host's keys) into a dir of their own.
func (m *hostMounts) etcdTLS() (string, error) {
	src := daemon.PKIDir(m.stateDir)
	if !pki.HasCA(src) {
		return "", errors.New("this cluster's etcd has no TLS (it was made before there was an internal CA)")
	}
	dir := filepath.Join(m.stateDir, "etcd-tls")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	for _, name := range []string{pki.CACert, pki.ComponentCert, pki.ComponentKey} {
		b, err := os.ReadFile(filepath.Join(src, name))
		if err != nil {
			return "", err
		}
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, b, 0o600); err != nil {
			return "", err
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			return "", err
		}
	}
	return dir, nil
}

// tls writes the cluster's TLS files from etcd into a dir of this host
// (again each time: a renewed certificate reaches new jobs) and returns it.
func (m *hostMounts) tls(ctx context.Context, public bool) (string, error) {
	res, err := m.etcd.Get(ctx, api.KeyClusterTLS)
	if err != nil {
		return "", fmt.Errorf("read the cluster certificate: %w", err)
	}
	if len(res.Kvs) == 0 {
		return "", errors.New("the cluster has no certificate yet (it is made by flynn-host bootstrap)")
	}
	var t api.ClusterTLS
	if err := json.Unmarshal(res.Kvs[0].Value, &t); err != nil {
		return "", fmt.Errorf("decode the cluster certificate: %w", err)
	}
	dir := filepath.Join(m.stateDir, "tls")
	files := map[string]string{"ca.crt": t.CACert, "tls.crt": t.Cert, "tls.key": t.Key}
	if public {
		dir = filepath.Join(m.stateDir, "tls-public")
		delete(files, "tls.key")
	}
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return "", err
	}
	for name, data := range files {
		mode := os.FileMode(0o644)
		if name == "tls.key" {
			mode = 0o600
		}
		tmp := filepath.Join(dir, "."+name+".tmp")
		if err := os.WriteFile(tmp, []byte(data), mode); err != nil {
			return "", err
		}
		if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
			return "", err
		}
	}
	return dir, nil
}
