package ipam

import "net/netip"

// bounds is an inclusive address interval. It is empty when first > last.
type bounds struct{ first, last netip.Addr }

func (b bounds) contains(a netip.Addr) bool {
	return b.first.Compare(a) <= 0 && a.Compare(b.last) <= 0
}

// intersect returns the overlap of b and o; the result may be empty.
func (b bounds) intersect(o bounds) bounds {
	return bounds{first: maxAddr(b.first, o.first), last: minAddr(b.last, o.last)}
}

// span returns the whole address interval of a canonical prefix.
func span(p netip.Prefix) bounds {
	return bounds{first: p.Addr(), last: lastAddr(p)}
}

// usable returns the addresses of a canonical subnet that may be handed out: all but
// the network address and, for IPv4, the broadcast address. For IPv6 the network
// address is the subnet-router anycast address (RFC 4291). Point-to-point subnets
// (/31, /127: RFC 3021, RFC 6164) and single-address subnets use every address.
func usable(p netip.Prefix) bounds {
	b := span(p)
	if p.Addr().BitLen()-p.Bits() <= 1 {
		return b
	}
	b.first = b.first.Next()
	if p.Addr().Is4() {
		b.last = b.last.Prev()
	}
	return b
}

// lastAddr returns the highest address of prefix p (the IPv4 broadcast address).
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	bits := p.Bits()
	for i := range b {
		switch {
		case (i+1)*8 <= bits:
		case i*8 >= bits:
			b[i] = 0xff
		default:
			b[i] |= 0xff >> (bits - i*8)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

func maxAddr(a, b netip.Addr) netip.Addr {
	if a.Compare(b) >= 0 {
		return a
	}
	return b
}

func minAddr(a, b netip.Addr) netip.Addr {
	if a.Compare(b) <= 0 {
		return a
	}
	return b
}

func family(a netip.Addr) string {
	if a.Is4() {
		return "IPv4"
	}
	return "IPv6"
}
