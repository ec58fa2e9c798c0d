package member

import (
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// ParseStoreURL checks a cluster store URL, etcd://host:port, and returns host:port.
func ParseStoreURL(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "etcd" || u.Opaque != "" {
		return "", errdefs.InvalidArgument("cluster store URL %q: want etcd://host:port", s)
	}
	if u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
		return "", errdefs.InvalidArgument("cluster store URL %q: want etcd://host:port, without user, path or query", s)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return "", errdefs.InvalidArgument("cluster store URL %q: want etcd://host:port (the port is required)", s)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return "", errdefs.InvalidArgument("cluster store URL %q: port %q is not a number between 1 and 65535", s, port)
	}
	return u.Host, nil
}

// ParseStoreURLs checks a comma-separated list of etcd://host:port URLs and returns
// their host:port parts.
func ParseStoreURLs(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return nil, errdefs.InvalidArgument("empty cluster store: want etcd://host:port[,host:port…]")
	}
	var out []string
	for _, part := range strings.Split(s, ",") {
		hp, err := ParseStoreURL(strings.TrimSpace(part))
		if err != nil {
			return nil, err
		}
		out = append(out, hp)
	}
	return out, nil
}

// ValidateName checks a node name: 1–63 letters, digits, '.', '_' or '-', starting
// with a letter or digit (it is also the etcd member's name and a certificate's CN).
func ValidateName(s string) error {
	ok := len(s) >= 1 && len(s) <= 63
	for i, c := range []byte(s) {
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || (c != '.' && c != '_' && c != '-')) {
			ok = false
		}
	}
	if !ok {
		return errdefs.InvalidArgument("node name %q: want 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", s)
	}
	return nil
}

func parseAdvertise(s string) netip.Addr {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}
	}
	return a
}
