package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// Bridge is the desired firewall state of one bridge network.
type Bridge struct {
	Name       string // bridge interface name, e.g. "br-0123456789ab" or "pier0"
	Owner      string // network ID, written as the comment of the bridge's set elements
	Subnets4   []netip.Prefix
	Subnets6   []netip.Prefix
	ICC        bool // false: endpoints of this bridge can't talk to each other
	Masquerade bool // SNAT traffic leaving the host from these subnets
	Internal   bool // no traffic in/out of the bridge except to/from the bridge itself
}

// State is the whole desired state.
type State struct {
	Bridges []Bridge                 // sorted by Name
	Ports   map[string][]PortBinding // by owner, each sorted; nil if none
}

// maxComment is the longest comment nft accepts (NFTNL_UDATA_COMMENT_MAXLEN).
const maxComment = 128

// normalize validates b and returns a deep copy with masked, sorted,
// de-duplicated subnets, so equal states compare and render equally.
func normalize(b Bridge) (Bridge, error) {
	if err := validName(b.Name); err != nil {
		return Bridge{}, err
	}
	if len(b.Owner) > maxComment || strings.ContainsRune(b.Owner, 0) {
		return Bridge{}, fmt.Errorf("invalid owner %q: at most %d bytes, no NUL", b.Owner, maxComment)
	}
	var err4, err6 error
	b.Subnets4, err4 = normalizePrefixes(b.Subnets4, true)
	b.Subnets6, err6 = normalizePrefixes(b.Subnets6, false)
	if err := errors.Join(err4, err6); err != nil {
		return Bridge{}, err
	}
	return b, nil
}

// validName checks an interface name the way the kernel does (dev_valid_name).
func validName(name string) error {
	if name == "" || len(name) >= ifnameLen || name == "." || name == ".." ||
		strings.ContainsAny(name, "/: \t\n\x00") {
		return fmt.Errorf("invalid bridge name %q: want 1-%d bytes, no '/', ':' or whitespace", name, ifnameLen-1)
	}
	return nil
}

func normalizePrefixes(in []netip.Prefix, v4 bool) ([]netip.Prefix, error) {
	family := "IPv6"
	if v4 {
		family = "IPv4"
	}
	out := make([]netip.Prefix, 0, len(in))
	for _, p := range in {
		if !p.IsValid() || p.Addr().Is4() != v4 || p.Addr().Is4In6() {
			return nil, fmt.Errorf("invalid %s subnet %q", family, p)
		}
		out = append(out, p.Masked())
	}
	slices.SortFunc(out, netip.Prefix.Compare)
	out = slices.Compact(out)
	if len(out) == 0 {
		return nil, nil
	}
	return out, nil
}

// clone returns a deep copy of b.
func (b Bridge) clone() Bridge {
	b.Subnets4 = slices.Clone(b.Subnets4)
	b.Subnets6 = slices.Clone(b.Subnets6)
	return b
}
