package pki

import (
	"crypto/tls"
	"net"
	"os"
	"path/filepath"
	"testing"
)

// TestMutualTLS: a host certificate serves and a component certificate
// is accepted as a client; a certificate of another CA is refused; no CA
// means no TLS.
func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	if on, err := EnsureHost(dir, "h1", []net.IP{net.IPv4(127, 0, 0, 1)}); on || err != nil {
		t.Fatalf("EnsureHost without a CA = %v, %v; want false, nil", on, err)
	}
	c, k, err := NewCA("c1")
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteCA(dir, c, k); err != nil {
		t.Fatal(err)
	}
	if on, err := EnsureHost(dir, "h1", []net.IP{net.IPv4(127, 0, 0, 1)}); !on || err != nil {
		t.Fatalf("EnsureHost = %v, %v", on, err)
	}
	before, _ := os.ReadFile(filepath.Join(dir, HostCert))
	EnsureHost(dir, "h1", []net.IP{net.IPv4(127, 0, 0, 1)})
	if after, _ := os.ReadFile(filepath.Join(dir, HostCert)); string(after) != string(before) {
		t.Error("a valid host certificate was issued again")
	}
	srvCfg, err := TLSConfig(dir, HostCert, HostKey)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvCfg)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.(*tls.Conn).Handshake()
			c.Write([]byte("ok"))
			c.Close()
		}
	}()
	dial := func(cfg *tls.Config) error {
		c, err := tls.Dial("tcp", ln.Addr().String(), cfg)
		if err != nil {
			return err
		}
		defer c.Close()
		b := make([]byte, 2)
		_, err = c.Read(b)
		return err
	}
	cli, err := TLSConfig(dir, ComponentCert, ComponentKey)
	if err != nil {
		t.Fatal(err)
	}
	if err := dial(cli); err != nil {
		t.Fatalf("component client refused: %v", err)
	}
	// Another cluster's CA and certificate.
	other := t.TempDir()
	c2, k2, _ := NewCA("c2")
	WriteCA(other, c2, k2)
	EnsureHost(other, "h2", []net.IP{net.IPv4(127, 0, 0, 1)})
	foreign, _ := TLSConfig(other, ComponentCert, ComponentKey)
	foreign.RootCAs = cli.RootCAs // trusts the server, presents a foreign cert
	if err := dial(foreign); err == nil {
		t.Fatal("a certificate of another CA was accepted")
	}
	noCert := &tls.Config{RootCAs: cli.RootCAs}
	if err := dial(noCert); err == nil {
		t.Fatal("a client without a certificate was accepted")
	}
}
