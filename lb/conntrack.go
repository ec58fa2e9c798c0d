package lb

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// conntrack deletes flows over a lasting ctnetlink socket in one namespace (opening
// and closing one per change costs milliseconds).
type conntrack struct {
	ns netns.NsHandle
	h  *netlink.Handle // nil until first use and after an error
}

// deleteUDP deletes the conntrack entries of UDP flows whose original destination
// is vip and whose reply comes from one of backends. The kernel has no filtered
// delete: the table is dumped and matching entries deleted one by one.
func (c *conntrack) deleteUDP(vip netip.Addr, backends []netip.Addr) (uint, error) {
	if c.h == nil {
		h, err := netlink.NewHandleAt(c.ns, unix.NETLINK_NETFILTER)
		if err != nil {
			return 0, fmt.Errorf("opening conntrack netlink: %w", err)
		}
		c.h = h
	}
	n, err := c.h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, udpFlows{vip, backends})
	if err != nil {
		c.close()
		return n, fmt.Errorf("deleting conntrack entries: %w", err)
	}
	return n, nil
}

func (c *conntrack) close() {
	if c.h != nil {
		c.h.Close()
		c.h = nil
	}
}

type udpFlows struct {
	vip      netip.Addr
	backends []netip.Addr
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f udpFlows) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	if flow.Forward.Protocol != unix.IPPROTO_UDP {
		return false
	}
	dst, ok1 := netip.AddrFromSlice(flow.Forward.DstIP)
	src, ok2 := netip.AddrFromSlice(flow.Reverse.SrcIP)
	return ok1 && ok2 && dst.Unmap() == f.vip && slices.Contains(f.backends, src.Unmap())
}
