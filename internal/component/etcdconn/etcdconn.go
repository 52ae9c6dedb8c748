// Package etcdconn connects the components to the cluster's etcd, over
// mutual TLS with the component certificate.
package etcdconn

import (
	"crypto/tls"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/pflag"

	"github.com/flynnrebuilt/flynn/internal/etcdkv"
	"github.com/flynnrebuilt/flynn/internal/pki"
)

// The components' etcd clients: the cluster's etcd speaks mutual TLS, and
// a component presents the component certificate its host gives it (the
// flynn-host:etcd-tls mount, at $ETCD_TLS_DIR).

// TLSFlag registers --etcd-tls (default $ETCD_TLS_DIR) on f.
func TLSFlag(f *pflag.FlagSet, dir *string, getenv func(string) string) {
	def := ""
	if getenv != nil {
		def = getenv("ETCD_TLS_DIR")
	}
	f.StringVar(dir, "etcd-tls", def, "dir with ca.crt, component.crt and component.key for etcd's mutual TLS (default $ETCD_TLS_DIR)")
}

// Client connects to endpoints (comma-separated), with the component
// certificate of tlsDir when it is set.
func Client(endpoints, tlsDir string) (*etcdkv.Client, error) {
	var tc *tls.Config
	if tlsDir != "" {
		var err error
		if tc, err = pki.TLSConfig(tlsDir, pki.ComponentCert, pki.ComponentKey); err != nil {
			return nil, fmt.Errorf("etcd TLS: %w", err)
		}
	}
	cli, err := etcdkv.New(etcdkv.Config{Endpoints: strings.Split(endpoints, ","), DialTimeout: 10 * time.Second, TLS: tc})
	if err != nil {
		return nil, fmt.Errorf("connect to etcd %s: %w", endpoints, err)
	}
	return cli, nil
}
