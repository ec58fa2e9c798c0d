package netns

import (
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Routed reports whether p overlaps a non-default route of namespace n (the IPAM
// skips such subnets when it picks one). A failed dump reports false.
func (n *Namespace) Routed(p netip.Prefix) bool {
	routes, err := Dump(func() ([]netlink.Route, error) { return n.NL.RouteList(nil, netlink.FAMILY_ALL) })
	if err != nil {
		return false
	}
	for _, r := range routes {
		if r.Dst == nil {
			continue
		}
		dst, ok := netip.AddrFromSlice(r.Dst.IP)
		ones, _ := r.Dst.Mask.Size()
		if ok && ones > 0 && netip.PrefixFrom(dst.Unmap(), ones).Masked().Overlaps(p) {
			return true
		}
	}
	return false
}
