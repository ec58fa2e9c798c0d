package netns

import (
	"net"
	"net/netip"
)

// prefixToIPNet converts p to a *net.IPNet keeping the host bits (an interface address).
func prefixToIPNet(p netip.Prefix) *net.IPNet {
	bits := 32
	if p.Addr().Is6() {
		bits = 128
	}
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), bits)}
}

// PrefixToIPNet is prefixToIPNet for other packages.
func PrefixToIPNet(p netip.Prefix) *net.IPNet { return prefixToIPNet(p) }
