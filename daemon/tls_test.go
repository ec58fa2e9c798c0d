package daemon_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/internal/nstest"
)

func TestTCPMutualTLS(t *testing.T) {
	t.Parallel()
	nstest.Require(t, "docker")
	certs := newCerts(t)
	const addr = "tcp://127.0.0.1:2376"
	d := newPierd(t, "-H", addr, "--tlsverify", "--tlscacert", certs.ca, "--tlscert", certs.serverCert, "--tlskey", certs.serverKey)
	if out, err := exec.Command("nsenter", "--net="+d.hostNS, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("loopback up: %v\n%s", err, out)
	}
	d.start()
	// The docker CLI runs in pierd's namespace, where 127.0.0.1:2376 is pierd.
	dockerIn := func(args ...string) (string, error) {
		cmd := exec.Command("nsenter", append([]string{"--net=" + d.hostNS, "docker", "-H", addr}, args...)...)
		cmd.Env = dockerEnv(d.dir)
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	out, err := dockerIn("--tlsverify", "--tlscacert", certs.ca, "--tlscert", certs.clientCert, "--tlskey", certs.clientKey,
		"network", "ls", "--format", "{{.Name}}")
	if err != nil || out != "bridge\nhost\nnone" {
		t.Errorf("with a client certificate: %v\n%s", err, out)
	}
	if out, err := dockerIn("--tls", "--tlscacert", certs.ca, "network", "ls"); err == nil || !strings.Contains(out, "certificate required") {
		t.Errorf("without a client certificate: %v\n%s", err, out)
	}
	if out, err := dockerIn("network", "ls"); err == nil || !strings.Contains(out, "HTTP request to an HTTPS server") {
		t.Errorf("plain HTTP: %v\n%s", err, out)
	}
}

// TestPlainTCPRefused starts pierd in a test namespace, like every other daemon test:
// were the refusal to regress, it would serve there, never on the machine's own
// loopback or firewall.
func TestPlainTCPRefused(t *testing.T) {
	t.Parallel()
	d := newPierd(t, "-H", "tcp://127.0.0.1:2375")
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "nsenter", d.args(d.sock)...).CombinedOutput()
	if err == nil || ctx.Err() != nil || !strings.Contains(string(out), "refusing to serve the API on tcp://127.0.0.1:2375 without mutual TLS") {
		t.Errorf("plain tcp: %v (timed out: %v)\n%s", err, ctx.Err() != nil, out)
	}
}

type certFiles struct{ ca, serverCert, serverKey, clientCert, clientKey string }

// newCerts writes a CA, a server certificate for 127.0.0.1 and a client certificate.
func newCerts(t *testing.T) certFiles {
	t.Helper()
	dir := t.TempDir()
	caKey, caCert := newCert(t, nil, nil, &x509.Certificate{Subject: pkix.Name{CommonName: "pier test CA"},
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature})
	f := certFiles{ca: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"),
		serverKey: filepath.Join(dir, "server-key.pem"), clientCert: filepath.Join(dir, "cert.pem"), clientKey: filepath.Join(dir, "key.pem")}
	writePEM(t, f.ca, "CERTIFICATE", caCert.Raw)
	for _, c := range []struct {
		cert, key string
		tmpl      *x509.Certificate
	}{
		{f.serverCert, f.serverKey, &x509.Certificate{Subject: pkix.Name{CommonName: "pierd"},
			IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}},
		{f.clientCert, f.clientKey, &x509.Certificate{Subject: pkix.Name{CommonName: "client"},
			ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}},
	} {
		key, cert := newCert(t, caCert, caKey, c.tmpl)
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, c.cert, "CERTIFICATE", cert.Raw)
		writePEM(t, c.key, "EC PRIVATE KEY", der)
	}
	return f
}

// newCert signs tmpl with parent/parentKey, or self-signs it when parent is nil.
func newCert(t *testing.T, parent *x509.Certificate, parentKey *ecdsa.PrivateKey, tmpl *x509.Certificate) (*ecdsa.PrivateKey, *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.SerialNumber, tmpl.NotBefore, tmpl.NotAfter = serial, time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	if parent == nil {
		parent, parentKey = tmpl, key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}
