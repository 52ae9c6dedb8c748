// Package pki is the cluster's internal certificate authority: the CA that
// `flynn-host init` makes and `flynn-host join` copies to each new host,
// and the certificates it issues. etcd speaks mutual TLS with them: each
// host's daemon holds a host certificate (server, peer and client), and the
// platform's components a component certificate (client only), which host
// agents give only to the platform's own jobs. Tenant jobs hold none, so
// they cannot reach etcd.
//
// A host keeps its PKI in <state-dir>/pki: ca.crt and ca.key, host.crt and
// host.key (issued for the host's address), component.crt and
// component.key.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// File names in a PKI dir.
const (
	CACert        = "ca.crt"
	CAKey         = "ca.key"
	HostCert      = "host.crt"
	HostKey       = "host.key"
	ComponentCert = "component.crt"
	ComponentKey  = "component.key"
)

// Validity of what the CA issues; certificates are renewed when a third of
// it is left.
const (
	caValidity   = 20 * 365 * 24 * time.Hour
	certValidity = 2 * 365 * 24 * time.Hour
)

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func encode(der []byte, key *ecdsa.PrivateKey) (certPEM, keyPEM []byte, err error) {
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), nil
}

// NewCA makes a CA certificate and key (PEM) named after the cluster.
func NewCA(clusterID string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Flynn internal CA " + clusterID, Organization: []string{"Flynn"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

// CA is a loaded CA.
type CA struct {
	Cert    *x509.Certificate
	CertPEM []byte
	key     *ecdsa.PrivateKey
}

// LoadCA reads ca.crt and ca.key from dir.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, CAKey))
	if err != nil {
		return nil, err
	}
	return ParseCA(certPEM, keyPEM)
}

// ParseCA parses a CA certificate and key (PEM).
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		return nil, errors.New("pki: CA certificate or key is not PEM")
	}
	cert, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	key, err := x509.ParseECPrivateKey(kb.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: CA key: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("pki: the CA certificate is not a CA")
	}
	return &CA{Cert: cert, CertPEM: certPEM, key: key}, nil
}

// Issue makes a certificate and key (PEM) named name: with ips, a server
// and client certificate for those addresses; without, a client one.
func (ca *CA) Issue(name string, ips []net.IP) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: name, Organization: []string{"Flynn"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if len(ips) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.IPAddresses = ips
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, err
	}
	return encode(der, key)
}

// WriteCA writes a CA into dir (made 0700).
func WriteCA(dir string, certPEM, keyPEM []byte) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := writeFile(filepath.Join(dir, CAKey), keyPEM); err != nil {
		return err
	}
	return writeFile(filepath.Join(dir, CACert), certPEM)
}

func writeFile(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// EnsureHost makes sure dir holds a host certificate for ips and a
// component certificate, both signed by dir's CA and not near expiry,
// issuing new ones where needed. It reports whether dir has a CA at all
// (a cluster made before there was one runs etcd without TLS).
func EnsureHost(dir, hostID string, ips []net.IP) (bool, error) {
	ca, err := LoadCA(dir)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	if !valid(filepath.Join(dir, HostCert), ca, ips) {
		c, k, err := ca.Issue("flynn-host "+hostID, ips)
		if err != nil {
			return true, err
		}
		if err := writeFile(filepath.Join(dir, HostKey), k); err != nil {
			return true, err
		}
		if err := writeFile(filepath.Join(dir, HostCert), c); err != nil {
			return true, err
		}
	}
	if !valid(filepath.Join(dir, ComponentCert), ca, nil) {
		c, k, err := ca.Issue("flynn-component", nil)
		if err != nil {
			return true, err
		}
		if err := writeFile(filepath.Join(dir, ComponentKey), k); err != nil {
			return true, err
		}
		if err := writeFile(filepath.Join(dir, ComponentCert), c); err != nil {
			return true, err
		}
	}
	return true, nil
}

// valid reports whether the certificate in file is signed by ca, has ips
// (exactly) and a third of its validity left.
func valid(file string, ca *CA, ips []net.IP) bool {
	b, err := os.ReadFile(file)
	if err != nil {
		return false
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return false
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil || cert.CheckSignatureFrom(ca.Cert) != nil {
		return false
	}
	if time.Until(cert.NotAfter) < cert.NotAfter.Sub(cert.NotBefore)/3 {
		return false
	}
	return slices.EqualFunc(cert.IPAddresses, ips, func(a, b net.IP) bool { return a.Equal(b) })
}

// HasCA reports whether dir holds a CA certificate.
func HasCA(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, CACert))
	return err == nil
}

// TLSConfig is a mutual-TLS config from dir: certFile and keyFile (names in
// dir) as this side's certificate, the CA as the only root, for both
// client and server use.
func TLSConfig(dir, certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	caPEM, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("pki: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("pki: the CA certificate is not PEM")
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		RootCAs:      pool,
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}
