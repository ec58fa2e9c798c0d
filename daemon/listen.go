package daemon

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/piernet/pier/errdefs"
)

// listenSpec is one parsed -H address.
type listenSpec struct {
	network string // "unix" or "tcp"
	addr    string // socket path or host:port
}

func (l listenSpec) String() string { return l.network + "://" + l.addr }

// listenSpecs parses the configured hosts. Plain TCP is refused: the API controls the
// host's networking and must not be reachable without authentication.
func listenSpecs(c Config) ([]listenSpec, error) {
	var out []listenSpec
	for _, h := range c.Hosts {
		l, err := parseHost(h)
		if err != nil {
			return nil, err
		}
		if l.network == "tcp" && !(c.TLSVerify && c.TLSCACert != "" && c.TLSCert != "" && c.TLSKey != "") {
			return nil, errdefs.InvalidArgument("refusing to serve the API on %s without mutual TLS: "+
				"anyone who can connect could reconfigure this host's network; "+
				"add --tlsverify --tlscacert CA --tlscert CERT --tlskey KEY, or use a unix:// socket", h)
		}
		out = append(out, l)
	}
	return out, nil
}

func parseHost(h string) (listenSpec, error) {
	u, err := url.Parse(h)
	if err == nil {
		switch {
		case u.Scheme == "unix" && u.Host == "" && u.Path != "":
			return listenSpec{network: "unix", addr: u.Path}, nil
		case u.Scheme == "tcp" && u.Host != "" && (u.Path == "" || u.Path == "/"):
			if _, _, err := net.SplitHostPort(u.Host); err == nil {
				return listenSpec{network: "tcp", addr: u.Host}, nil
			}
		}
	}
	return listenSpec{}, errdefs.InvalidArgument("invalid API address %q: want unix:///path/to.sock or tcp://host:port", h)
}

// serverTLS loads the mutual-TLS configuration: clients must present a certificate
// signed by the CA.
func serverTLS(c Config) (*tls.Config, error) {
	if !c.TLSVerify {
		return nil, nil
	}
	cert, err := tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("loading TLS certificate and key: %w", err)
	}
	caPEM, err := os.ReadFile(c.TLSCACert)
	if err != nil {
		return nil, fmt.Errorf("reading TLS CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errdefs.InvalidArgument("TLS CA file %s holds no PEM certificate", c.TLSCACert)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert},
		ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}, nil
}

// listen opens one listener. A unix socket left by a previous pierd is removed first,
// unless something still answers on it.
func listen(l listenSpec, tlsCfg *tls.Config) (net.Listener, error) {
	if l.network == "tcp" {
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			return nil, err
		}
		return tls.NewListener(ln, tlsCfg), nil
	}
	return listenUnix(l.addr)
}

func listenUnix(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating socket directory: %w", err)
	}
	if err := removeStaleSocket(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, err
	}
	if err := securePerms(path); err != nil {
		ln.Close()
		return nil, err
	}
	return ln, nil
}

func removeStaleSocket(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return errdefs.Conflict("%s exists and is not a socket; refusing to replace it", path)
	}
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return errdefs.Unavailable("another daemon is serving on %s", path)
	}
	return os.Remove(path)
}

// securePerms makes the socket mode 0660 owned by root:root, so only root and members
// of the root group reach the API.
func securePerms(path string) error {
	if os.Geteuid() != 0 {
		return os.Chmod(path, 0o660) // tests as non-root: ownership cannot be given away
	}
	gid := 0
	if g, err := user.LookupGroup("root"); err == nil {
		gid, _ = strconv.Atoi(g.Gid)
	}
	if err := os.Chown(path, 0, gid); err != nil {
		return fmt.Errorf("setting socket owner: %w", err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		return fmt.Errorf("setting socket mode: %w", err)
	}
	return nil
}

func hostsString(ls []listenSpec) string {
	var s []string
	for _, l := range ls {
		s = append(s, l.String())
	}
	return strings.Join(s, ",")
}
