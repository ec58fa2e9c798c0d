package ipam

import (
	"crypto/sha256"
	"fmt"
	"net/netip"
	"strconv"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// PredefinedPool is a range automatically chosen subnets come from: Base split into
// subnets of prefix length Size, used in address order.
type PredefinedPool struct {
	Base netip.Prefix
	Size int
}

// String returns the pool in the syntax ParsePredefinedPool accepts.
func (p PredefinedPool) String() string {
	return fmt.Sprintf("base=%s,size=%d", p.Base, p.Size)
}

// DefaultLocalPools returns Docker's default local-scope pools: 172.17.0.0/16 to
// 172.31.0.0/16 as whole /16s, then 192.168.0.0/16 split into /20s.
func DefaultLocalPools() []PredefinedPool {
	pools := make([]PredefinedPool, 0, 16)
	for i := 17; i <= 31; i++ {
		base := netip.PrefixFrom(netip.AddrFrom4([4]byte{172, byte(i), 0, 0}), 16)
		pools = append(pools, PredefinedPool{Base: base, Size: 16})
	}
	return append(pools, PredefinedPool{Base: netip.MustParsePrefix("192.168.0.0/16"), Size: 20})
}

// DefaultGlobalPools returns Docker's default global-scope pool: 10.0.0.0/8 split
// into /24s.
func DefaultGlobalPools() []PredefinedPool {
	return []PredefinedPool{{Base: netip.MustParsePrefix("10.0.0.0/8"), Size: 24}}
}

// DefaultV6Pool derives a unique local IPv6 /48 from seed the way RFC 4193 derives a
// Global ID: fd00::/8 followed by 40 bits of sha256(seed). The /48 is split into /64s.
// The same seed always gives the same pool.
func DefaultV6Pool(seed string) PredefinedPool {
	sum := sha256.Sum256([]byte(seed))
	var b [16]byte
	b[0] = 0xfd
	copy(b[1:6], sum[:5])
	return PredefinedPool{Base: netip.PrefixFrom(netip.AddrFrom16(b), 48), Size: 64}
}

// ParsePredefinedPool parses Docker's --default-address-pool syntax,
// "base=10.10.0.0/16,size=24". Keys are case-insensitive; both are required.
func ParsePredefinedPool(s string) (PredefinedPool, error) {
	var p PredefinedPool
	seen := map[string]bool{}
	for field := range strings.SplitSeq(s, ",") {
		key, err := p.setField(strings.TrimSpace(field))
		if err == nil && seen[key] {
			err = fmt.Errorf("%s given twice", key)
		}
		if err != nil {
			return PredefinedPool{}, poolSyntaxError(s, err)
		}
		seen[key] = true
	}
	if !seen["base"] || !seen["size"] {
		return PredefinedPool{}, poolSyntaxError(s, fmt.Errorf("both base and size are required"))
	}
	if err := p.validate(); err != nil {
		return PredefinedPool{}, poolSyntaxError(s, err)
	}
	return p, nil
}

func poolSyntaxError(s string, err error) error {
	return errdefs.InvalidArgument(
		"invalid address pool %q: %w; want base=CIDR,size=N such as base=10.10.0.0/16,size=24", s, err)
}

// setField parses one key=value field into p and returns the key.
func (p *PredefinedPool) setField(field string) (string, error) {
	key, val, ok := strings.Cut(field, "=")
	key = strings.ToLower(strings.TrimSpace(key))
	val = strings.TrimSpace(val)
	switch {
	case !ok:
		return "", fmt.Errorf("field %q is not a key=value pair", field)
	case key == "base":
		base, err := ParsePrefix(val)
		if err != nil {
			return key, fmt.Errorf("base %q is not a CIDR prefix", val)
		}
		p.Base = base
		return key, nil
	case key == "size":
		size, err := strconv.Atoi(val)
		if err != nil {
			return key, fmt.Errorf("size %q is not a number", val)
		}
		p.Size = size
		return key, nil
	}
	return "", fmt.Errorf("unknown key %q", key)
}

// validate checks that p can be split into subnets.
func (p PredefinedPool) validate() error {
	if !p.Base.IsValid() || p.Base.Addr().Is4In6() || p.Base != p.Base.Masked() {
		return fmt.Errorf("base %s is not a canonical IPv4 or IPv6 prefix", p.Base)
	}
	if p.Size < p.Base.Bits() || p.Size > p.Base.Addr().BitLen() {
		return fmt.Errorf("size %d must be between the base prefix length %d and %d",
			p.Size, p.Base.Bits(), p.Base.Addr().BitLen())
	}
	return nil
}
