package member

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base32"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/piernet/pier/errdefs"
)

// Validity of the cluster CA and of the node certificates it signs. There is no
// rotation yet: ten years keeps a lab or a small cluster from expiring under its users.
const (
	caValidity   = 10 * 365 * 24 * time.Hour
	certValidity = 10 * 365 * 24 * time.Hour
)

// b32 is the lower-case, unpadded base32 of tokens and fingerprints.
var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// ca is the cluster CA: its certificate always, its key only on etcd members.
type ca struct {
	cert    *x509.Certificate
	certPEM []byte
	key     crypto.Signer // nil on client-only nodes
	keyPEM  []byte
}

func newKey() (*ecdsa.PrivateKey, error) {
	return ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
}

func serial() (*big.Int, error) {
	return rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
}

func encodeKey(k *ecdsa.PrivateKey) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func certPEM(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// newCA creates a self-signed ECDSA P-256 cluster CA.
func newCA(name string) (*ca, error) {
	k, err := newKey()
	if err != nil {
		return nil, err
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          sn,
		Subject:               pkix.Name{CommonName: "pier cluster CA (" + name + ")"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		return nil, fmt.Errorf("creating cluster CA: %w", err)
	}
	keyPEM, err := encodeKey(k)
	if err != nil {
		return nil, err
	}
	return parseCA(certPEM(der), keyPEM)
}

// parseCA decodes a CA certificate and, if keyPEM is not empty, its key.
func parseCA(crt, keyPEM []byte) (*ca, error) {
	b, _ := pem.Decode(crt)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, errors.New("cluster CA certificate: no PEM certificate")
	}
	cert, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("cluster CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, errors.New("cluster CA certificate is not a CA")
	}
	c := &ca{cert: cert, certPEM: crt}
	if len(keyPEM) == 0 {
		return c, nil
	}
	pair, err := tls.X509KeyPair(crt, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("cluster CA key: %w", err)
	}
	signer, ok := pair.PrivateKey.(crypto.Signer)
	if !ok {
		return nil, errors.New("cluster CA key cannot sign")
	}
	c.key, c.keyPEM = signer, keyPEM
	return c, nil
}

// fingerprint is the lower-case base32 SHA-256 of a certificate's DER bytes.
func fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return lower(b32.EncodeToString(sum[:]))
}

func lower(s string) string {
	b := []byte(s)
	for i, c := range b {
		if 'A' <= c && c <= 'Z' {
			b[i] = c + 'a' - 'A'
		}
	}
	return string(b)
}

// newCSR makes a key and a certificate request for a node named name.
func newCSR(name string) (csrPEM, keyPEM []byte, err error) {
	k, err := newKey()
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, k)
	if err != nil {
		return nil, nil, err
	}
	if keyPEM, err = encodeKey(k); err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), keyPEM, nil
}

// parseCSR decodes and checks the signature of a PEM certificate request.
func parseCSR(data []byte) (*x509.CertificateRequest, error) {
	b, _ := pem.Decode(data)
	if b == nil || b.Type != "CERTIFICATE REQUEST" {
		return nil, errdefs.InvalidArgument("csr: no PEM certificate request")
	}
	csr, err := x509.ParseCertificateRequest(b.Bytes)
	if err != nil {
		return nil, errdefs.InvalidArgument("csr: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, errdefs.InvalidArgument("csr: %w", err)
	}
	return csr, nil
}

// sign issues a node certificate for pub named name. A member certificate serves
// (etcd clients and peers, the join service) and is also a client; it names the
// advertise address and 127.0.0.1. A client-only certificate is a client only.
func (c *ca) sign(name string, pub crypto.PublicKey, member bool, advertise netip.Addr) ([]byte, error) {
	if c.key == nil {
		return nil, errors.New("this node holds no cluster CA key")
	}
	sn, err := serial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: sn,
		Subject:      pkix.Name{CommonName: name},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if member {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		tmpl.IPAddresses = []net.IP{net.IP(advertise.AsSlice()), net.IPv4(127, 0, 0, 1)}
		tmpl.DNSNames = []string{"localhost"}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, pub, c.key)
	if err != nil {
		return nil, fmt.Errorf("signing certificate for %q: %w", name, err)
	}
	return certPEM(der), nil
}

// pool is a cert pool holding only the cluster CA.
func (c *ca) pool() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c.cert)
	return p
}

// writeFile writes data to dir/name atomically (temp file, then rename) with mode perm.
func writeFile(dir, name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(dir, "."+name+".tmp*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(dir, name))
	}
	if err != nil {
		os.Remove(tmp)
	}
	return err
}
