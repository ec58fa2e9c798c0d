package ipam

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// ParsePrefix parses a CIDR prefix given by a user (API body, CLI flag). Host bits are
// masked off ("10.1.2.3/16" is 10.1.0.0/16) and IPv4-mapped IPv6 prefixes are
// unmapped. Errors are InvalidArgument and say what is wrong.
func ParsePrefix(s string) (netip.Prefix, error) {
	p, err := netip.ParsePrefix(strings.TrimSpace(s))
	if err != nil {
		return netip.Prefix{}, errdefs.InvalidArgument(
			"invalid CIDR prefix %q: %s; want an address and a prefix length such as 10.1.0.0/16 or fd00:1::/64",
			s, prefixProblem(s))
	}
	return canonicalPrefix(p)
}

// prefixProblem names what is wrong with s, which netip.ParsePrefix rejected.
func prefixProblem(s string) string {
	addr, bits, ok := strings.Cut(strings.TrimSpace(s), "/")
	switch {
	case !ok:
		return "missing prefix length"
	case strings.Contains(addr, "%"):
		return "zones are not allowed"
	}
	if _, err := netip.ParseAddr(addr); err != nil {
		return fmt.Sprintf("%q is not an IP address", addr)
	}
	return fmt.Sprintf("bad prefix length %q", bits)
}

// canonicalPrefix unmaps IPv4-mapped prefixes and masks host bits off.
func canonicalPrefix(p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() {
		return netip.Prefix{}, errdefs.InvalidArgument(
			"invalid CIDR prefix: address %s with an out-of-range prefix length", p.Addr())
	}
	if !p.Addr().Is4In6() {
		return p.Masked(), nil
	}
	if p.Bits() < 96 {
		return netip.Prefix{}, errdefs.InvalidArgument(
			"invalid CIDR prefix %s: an IPv4-mapped prefix must be /96 or longer", p)
	}
	return netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96).Masked(), nil
}

// ParseAddr parses an IP address given by a user. IPv4-mapped IPv6 addresses are
// unmapped; zones are rejected. Errors are InvalidArgument.
func ParseAddr(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(strings.TrimSpace(s))
	if err != nil {
		return netip.Addr{}, errdefs.InvalidArgument(
			"invalid IP address %q: want an address such as 10.1.2.3 or fd00::1", s)
	}
	if a.Zone() != "" {
		return netip.Addr{}, errdefs.InvalidArgument(
			"invalid IP address %q: zones (%%name) are not allowed", s)
	}
	return a.Unmap(), nil
}
