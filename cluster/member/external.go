package member

import (
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"os"

	"github.com/piernet/pier/errdefs"
)

// ExternalOptions describe an etcd that pier does not run (--cluster-store).
type ExternalOptions struct {
	Endpoints []string // etcd://host:port (or host:port)
	// PEM files; all empty: plain text. CACert alone: TLS, server verified.
	// Cert and Key (both or neither): client certificate.
	CACert, Cert, Key string
	Logger            *slog.Logger
}

// External returns the client settings for an external etcd. It reads the TLS files
// but does not contact etcd.
func External(o ExternalOptions) (*Member, error) {
	if len(o.Endpoints) == 0 {
		return nil, errdefs.InvalidArgument("cluster store: no endpoints")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	tc, err := externalTLS(o)
	if err != nil {
		return nil, err
	}
	scheme := "http://"
	if tc != nil {
		scheme = "https://"
	}
	m := &Member{tls: tc, zl: zapLogger(o.Logger)}
	for _, e := range o.Endpoints {
		hp, err := ParseStoreURL(e)
		if err != nil {
			hp = e // host:port as etcd's own tools take it
		}
		m.clientURLs = append(m.clientURLs, scheme+hp)
	}
	return m, nil
}

func externalTLS(o ExternalOptions) (*tls.Config, error) {
	if (o.Cert == "") != (o.Key == "") {
		return nil, errdefs.InvalidArgument("cluster store: give both a certificate and a key, or neither")
	}
	if o.CACert == "" && o.Cert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if o.CACert != "" {
		pem, err := os.ReadFile(o.CACert)
		if err != nil {
			return nil, errdefs.InvalidArgument("cluster store CA: %w", err)
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, errdefs.InvalidArgument("cluster store CA %s: no PEM certificate", o.CACert)
		}
	}
	if o.Cert != "" {
		pair, err := tls.LoadX509KeyPair(o.Cert, o.Key)
		if err != nil {
			return nil, errdefs.InvalidArgument("cluster store certificate: %w", err)
		}
		tc.Certificates = []tls.Certificate{pair}
	}
	return tc, nil
}
