package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Cluster is one cluster the CLI knows: where its controller and git
// endpoints are, the key, and the pinned TLS certificate.
type Cluster struct {
	Name          string `toml:"name" json:"name"`
	Domain        string `toml:"domain,omitempty" json:"domain,omitempty"`
	Key           string `toml:"key" json:"key"`
	TLSPin        string `toml:"tls_pin,omitempty" json:"tls_pin,omitempty"`
	ControllerURL string `toml:"controller_url" json:"controller_url"`
	GitURL        string `toml:"git_url,omitempty" json:"git_url,omitempty"`
	// SSHGitURL is host:port of the cluster's git-over-SSH endpoint.
	SSHGitURL string `toml:"ssh_git_url,omitempty" json:"ssh_git_url,omitempty"`
}

// Config is the content of ~/.flynnrc (TOML, as Flynn's CLI wrote it).
type Config struct {
	Default  string     `toml:"default" json:"default"`
	Clusters []*Cluster `toml:"cluster" json:"cluster"`

	path string
}

// configPath is $FLYNNRC, else ~/.flynnrc.
func configPath(getenv func(string) string) (string, error) {
	if p := getenv("FLYNNRC"); p != "" {
		return p, nil
	}
	home := getenv("HOME")
	if home == "" {
		h, err := os.UserHomeDir()
		if err != nil {
			return "", fmt.Errorf("cannot find the home directory; set $FLYNNRC to the config file's path")
		}
		home = h
	}
	return filepath.Join(home, ".flynnrc"), nil
}

// loadConfig reads the config; a missing file is an empty config.
func loadConfig(getenv func(string) string) (*Config, error) {
	p, err := configPath(getenv)
	if err != nil {
		return nil, err
	}
	c := &Config{path: p}
	b, err := os.ReadFile(p)
	if errors.Is(err, os.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	if _, err := toml.Decode(string(b), c); err != nil {
		return nil, fmt.Errorf("config %s is not valid TOML: %v", p, err)
	}
	return c, nil
}

// Save writes the config atomically with mode 0600 (it holds keys).
func (c *Config) Save() error {
	var buf bytes.Buffer
	if err := toml.NewEncoder(&buf).Encode(c); err != nil {
		return fmt.Errorf("encode config: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(c.path), 0o755); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	tmp := c.path + ".tmp"
	if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
		return fmt.Errorf("save config: %w", err)
	}
	if err := os.Rename(tmp, c.path); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("save config: %w", err)
	}
	return nil
}

// Find returns the named cluster or nil.
func (c *Config) Find(name string) *Cluster {
	for _, cl := range c.Clusters {
		if cl.Name == name {
			return cl
		}
	}
	return nil
}

// Add adds a cluster; force replaces one with the same name.
func (c *Config) Add(cl *Cluster, force bool) error {
	for i, old := range c.Clusters {
		if old.Name == cl.Name {
			if !force {
				return fmt.Errorf("cluster %q already exists (use -f to replace it)", cl.Name)
			}
			c.Clusters[i] = cl
			return nil
		}
	}
	c.Clusters = append(c.Clusters, cl)
	if len(c.Clusters) == 1 {
		c.Default = cl.Name
	}
	return nil
}

// Remove removes a cluster by name.
func (c *Config) Remove(name string) error {
	for i, cl := range c.Clusters {
		if cl.Name == name {
			c.Clusters = append(c.Clusters[:i], c.Clusters[i+1:]...)
			if c.Default == name {
				c.Default = ""
				if len(c.Clusters) > 0 {
					c.Default = c.Clusters[0].Name
				}
			}
			return nil
		}
	}
	return fmt.Errorf("cluster %q not found (see flynn cluster)", name)
}

// validatePin checks that pin is a base64 sha256 digest.
func validatePin(pin string) error {
	b, err := base64.StdEncoding.DecodeString(pin)
	if err != nil || len(b) != sha256.Size {
		return fmt.Errorf("TLS pin %q is not a base64 SHA-256 digest", pin)
	}
	return nil
}

// PinOf returns the pin of a DER certificate: base64 of its sha256.
func PinOf(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// HTTPClient returns a client for the cluster: with a pin it checks the
// server's leaf certificate against the pin instead of the CA chain.
func (cl *Cluster) HTTPClient() *http.Client {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = dialLocalhost
	// HTTP/1.1 only: flynn run's attach is an HTTP/1.1 protocol upgrade,
	// which HTTP/2 (that the router offers over TLS) cannot carry.
	tr.ForceAttemptHTTP2 = false
	tr.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{}
	if cl.TLSPin != "" {
		want, _ := base64.StdEncoding.DecodeString(cl.TLSPin)
		tr.TLSClientConfig = &tls.Config{
			InsecureSkipVerify: true, // replaced by the pin check below
			VerifyConnection: func(cs tls.ConnectionState) error {
				if len(cs.PeerCertificates) == 0 {
					return errors.New("server sent no certificate")
				}
				sum := sha256.Sum256(cs.PeerCertificates[0].Raw)
				if !bytes.Equal(sum[:], want) {
					return fmt.Errorf("TLS pin mismatch: the server's certificate is not the one pinned for cluster %q (re-add the cluster with the right -p pin)", cl.Name)
				}
				return nil
			},
		}
	}
	return &http.Client{Transport: tr, Timeout: 0}
}

// parseCertPin returns the pin of the first certificate in a PEM file.
func parseCertPin(pemBytes []byte) (string, error) {
	for {
		var blk *pem.Block
		blk, pemBytes = pem.Decode(pemBytes)
		if blk == nil {
			return "", errors.New("no certificate in PEM")
		}
		if blk.Type == "CERTIFICATE" {
			if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
				return "", err
			}
			return PinOf(blk.Bytes), nil
		}
	}
}

// clusterFor picks the cluster: -c flag, $FLYNN_CLUSTER, the default.
func clusterFor(cfg *Config, flag string, getenv func(string) string) (*Cluster, error) {
	name := flag
	if name == "" {
		name = getenv("FLYNN_CLUSTER")
	}
	if name == "" {
		name = cfg.Default
	}
	if name == "" {
		if len(cfg.Clusters) == 0 {
			return nil, errors.New("no cluster configured: add one with flynn cluster add (make up does it for you)")
		}
		return nil, errors.New("no default cluster: pick one with flynn cluster default NAME or -c NAME")
	}
	cl := cfg.Find(name)
	if cl == nil {
		return nil, fmt.Errorf("cluster %q not found: see flynn cluster", name)
	}
	return cl, nil
}

// defaultTimeout bounds simple API calls.
const defaultTimeout = 30 * time.Second

func trimURL(s string) string { return strings.TrimSuffix(s, "/") }

// dialLocalhost dials like net.Dialer, except that names under .localhost
// (a single-node cluster's default domain, flynn.localhost) reach the
// loopback address, as RFC 6761 asks and browsers and curl do, without a
// DNS or /etc/hosts entry.
func dialLocalhost(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if host, port, err := net.SplitHostPort(addr); err == nil {
		h := strings.ToLower(strings.TrimSuffix(host, "."))
		if h == "localhost" || strings.HasSuffix(h, ".localhost") {
			addr = net.JoinHostPort("127.0.0.1", port)
		}
	}
	return d.DialContext(ctx, network, addr)
}
