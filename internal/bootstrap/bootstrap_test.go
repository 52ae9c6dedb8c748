package bootstrap

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/flynnrebuilt/flynn/api"
)

func TestManifestValidate(t *testing.T) {
	if err := DefaultManifest().Validate(); err != nil {
		t.Fatalf("default manifest: %v", err)
	}
	tests := []struct {
		name string
		edit func(m *Manifest)
		want string
	}{
		{"no steps", func(m *Manifest) { m.Steps = nil }, "no steps"},
		{"unknown action", func(m *Manifest) { m.Steps[0].Action = "dance" }, "unknown action"},
		{"unknown app", func(m *Manifest) { m.Steps[2].App = "nope" }, "unknown app"},
		{"bad formation", func(m *Manifest) { m.Apps["router"].Formation["web"] = 1 }, "unknown process type"},
		{"wait without url", func(m *Manifest) { m.Steps = append(m.Steps, &Step{Action: ActionWaitHTTP}) }, "url is required"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := DefaultManifest()
			tt.edit(m)
			err := m.Validate()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("Validate() = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestGenerateCerts(t *testing.T) {
	caPEM, certPEM, keyPEM, der, err := GenerateCerts("example.test", time.Now())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		t.Fatalf("key pair: %v", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CA PEM")
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"example.test", "controller.example.test", "app.example.test"} {
		if _, err := cert.Verify(x509.VerifyOptions{DNSName: name, Roots: pool}); err != nil {
			t.Errorf("verify %s: %v", name, err)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{DNSName: "other.test", Roots: pool}); err == nil {
		t.Error("certificate verifies for other.test")
	}
	if blk, _ := pem.Decode(certPEM); blk == nil || Pin(blk.Bytes) != Pin(der) || len(Pin(der)) != 44 {
		t.Errorf("pin %q", Pin(der))
	}
}

// Every system process runs a component's binary (api.ComponentBinaries),
// mounted from its host where the process expects it.
func TestReleasesMountComponentBinaries(t *testing.T) {
	m := DefaultManifest()
	r := &run{cfg: Config{Manifest: m}, vars: map[string]string{}, apps: map[string]*appState{}}
	for name := range m.Apps {
		st, err := r.release(name)
		if err != nil {
			t.Fatalf("release %s: %v", name, err)
		}
		for typ, p := range st.release.Processes {
			c, ok := api.ComponentBinary(p.Args[0])
			if !ok {
				t.Errorf("%s/%s runs %q, not a component binary", name, typ, p.Args[0])
				continue
			}
			want := api.Mount{Location: api.HostMountPrefix + "component/" + c, Target: p.Args[0]}
			if !slices.Contains(p.Mounts, want) {
				t.Errorf("%s/%s: mounts %+v lack %+v", name, typ, p.Mounts, want)
			}
		}
	}
}
