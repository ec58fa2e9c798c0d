package firewall

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// conntracker is the seam around the conntrack table.
type conntracker interface {
	// DeleteUDP deletes the entries of UDP flows whose original
	// destination is the host port of one of bindings (any address of the
	// family for 0.0.0.0 and ::) and returns how many it deleted.
	DeleteUDP(bindings []PortBinding) (uint, error)
	Close() error
}

// netlinkConntrack deletes conntrack entries over ctnetlink in one
// namespace. The kernel has no filtered delete: it dumps the table (of each
// family involved) and deletes the matching entries one by one, so the cost
// grows with the conntrack table, not with the number of published ports.
type netlinkConntrack struct{ h *netlink.Handle }

func openConntrack(ns netns.NsHandle) (conntracker, error) {
	h, err := netlink.NewHandleAt(ns, unix.NETLINK_NETFILTER)
	if err != nil {
		return nil, fmt.Errorf("opening conntrack netlink: %w", err)
	}
	return netlinkConntrack{h}, nil
}

func (c netlinkConntrack) Close() error {
	c.h.Close()
	return nil
}

func (c netlinkConntrack) DeleteUDP(bindings []PortBinding) (uint, error) {
	var total uint
	for family, f := range udpFilters(bindings) {
		n, err := c.h.ConntrackDeleteFilters(netlink.ConntrackTable, family, f)
		total += n
		if err != nil {
			return total, fmt.Errorf("deleting conntrack entries: %w", err)
		}
	}
	return total, nil
}

// udpFilter matches UDP flows to published host ports of one family.
type udpFilter map[portKey]bool

func udpFilters(bindings []PortBinding) map[netlink.InetFamily]udpFilter {
	out := map[netlink.InetFamily]udpFilter{}
	for _, b := range bindings {
		fam := netlink.InetFamily(unix.AF_INET)
		if b.HostIP.Is6() {
			fam = unix.AF_INET6
		}
		if out[fam] == nil {
			out[fam] = udpFilter{}
		}
		out[fam][portKey{b.HostIP, "udp", b.HostPort}] = true
	}
	return out
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f udpFilter) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	t := flow.Forward
	if t.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst, ok := netip.AddrFromSlice(t.DstIP)
	if !ok {
		return false
	}
	dst = dst.Unmap()
	wild := netip.IPv4Unspecified()
	if dst.Is6() {
		wild = netip.IPv6Unspecified()
	}
	return f[portKey{dst, "udp", t.DstPort}] || f[portKey{wild, "udp", t.DstPort}]
}
