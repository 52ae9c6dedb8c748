package bootstrap

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

// genTLS makes the cluster CA and a certificate for DOMAIN and *.DOMAIN
// signed by it. The CA's key is not kept: the CA only vouches for this
// one certificate. tls.key is readable by root only; ca.crt and tls.crt
// are also copied to public/, which non-root system jobs mount.
func (r *run) genTLS(ctx context.Context) error {
	caPEM, certPEM, keyPEM, der, err := GenerateCerts(r.cfg.Domain, time.Now())
	if err != nil {
		return err
	}
	pub := filepath.Join(r.tlsDir, "public")
	if err := os.MkdirAll(pub, 0o755); err != nil {
		return err
	}
	os.Chmod(r.tlsDir, 0o711)
	for _, f := range []struct {
		path string
		data []byte
		mode os.FileMode
	}{
		{filepath.Join(r.tlsDir, "ca.crt"), caPEM, 0o644},
		{filepath.Join(r.tlsDir, "tls.crt"), certPEM, 0o644},
		{filepath.Join(r.tlsDir, "tls.key"), keyPEM, 0o600},
		{filepath.Join(pub, "ca.crt"), caPEM, 0o644},
		{filepath.Join(pub, "tls.crt"), certPEM, 0o644},
	} {
		if err := os.WriteFile(f.path, f.data, f.mode); err != nil {
			return err
		}
	}
	r.res.CACert = string(caPEM)
	r.res.Pin = Pin(der)
	// Every host gives the files to the jobs that mount flynn-host:tls.
	b, _ := json.Marshal(api.ClusterTLS{CACert: string(caPEM), Cert: string(certPEM), Key: string(keyPEM)})
	if _, err := r.etcd.Put(ctx, api.KeyClusterTLS, string(b)); err != nil {
		return fmt.Errorf("store the cluster certificate: %w", err)
	}
	return nil
}

// Pin is the CLI's pin of a DER certificate: base64 of its sha256.
func Pin(der []byte) string {
	sum := sha256.Sum256(der)
	return base64.StdEncoding.EncodeToString(sum[:])
}

// GenerateCerts makes a CA and a certificate for domain and *.domain
// signed by it: PEM of the CA, of the certificate and of its key, and the
// certificate's DER.
func GenerateCerts(domain string, now time.Time) (caPEM, certPEM, keyPEM, der []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	serial := func() *big.Int {
		n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
		return n
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "Flynn cluster CA " + domain, Organization: []string{"Flynn"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("create CA: %w", err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "*." + domain, Organization: []string{"Flynn"}},
		DNSNames:     []string{domain, "*." + domain},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err = x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, nil, fmt.Errorf("create certificate: %w", err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, nil, err
	}
	caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	certPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyPEM = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb})
	return caPEM, certPEM, keyPEM, der, nil
}
