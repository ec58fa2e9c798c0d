package lb

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Conntrack deletes flows over a lasting ctnetlink socket in one namespace (opening
// and closing one per change costs milliseconds). It is not safe for concurrent use;
// package ingress shares it.
type Conntrack struct {
	NS netns.NsHandle  // 0: the calling thread's namespace
	h  *netlink.Handle // nil until first use and after an error
}

// DeleteUDP deletes the conntrack entries of DNATed UDP flows whose original
// destination is vip (any destination if vip is the zero Addr) and whose reply comes
// from one of backends. The kernel has no filtered delete: the table is dumped and
// matching entries deleted one by one.
func (c *Conntrack) DeleteUDP(vip netip.Addr, backends []netip.Addr) (uint, error) {
	if c.h == nil {
		h, err := c.open()
		if err != nil {
			return 0, fmt.Errorf("opening conntrack netlink: %w", err)
		}
		c.h = h
	}
	n, err := c.h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, udpFlows{vip, backends})
	if err != nil {
		c.Close()
		return n, fmt.Errorf("deleting conntrack entries: %w", err)
	}
	return n, nil
}

func (c *Conntrack) open() (*netlink.Handle, error) {
	if c.NS <= 0 {
		return netlink.NewHandle(unix.NETLINK_NETFILTER)
	}
	return netlink.NewHandleAt(c.NS, unix.NETLINK_NETFILTER)
}

// Close releases the socket (a later DeleteUDP opens a new one).
func (c *Conntrack) Close() {
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
	if !ok1 || !ok2 || dst.Unmap() == src.Unmap() {
		return false // not DNATed
	}
	return (!f.vip.IsValid() || dst.Unmap() == f.vip) && slices.Contains(f.backends, src.Unmap())
}
