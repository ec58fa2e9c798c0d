package lb

import (
	"fmt"
	"net/netip"
	"slices"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
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
	return c.delete(staleFlows{vip: vip, backends: backends})
}

// DeleteStale deletes what DeleteUDP does and also the entries of DNATed TCP flows to
// backends that never answered (SYN_SENT): a dead backend's. Such an entry keeps its
// DNAT for two minutes, so a SYN retransmitted on it, or a new connection that
// happens to get the same source port, would go to the dead backend again; without
// the entry it is balanced anew. Answered TCP flows are left alone: deleting their
// entries would only have the next segment balanced elsewhere and reset.
func (c *Conntrack) DeleteStale(vip netip.Addr, backends []netip.Addr) (uint, error) {
	return c.delete(staleFlows{vip: vip, backends: backends, tcp: true})
}

func (c *Conntrack) delete(f staleFlows) (uint, error) {
	if c.h == nil {
		h, err := c.open()
		if err != nil {
			return 0, fmt.Errorf("opening conntrack netlink: %w", err)
		}
		c.h = h
	}
	n, err := c.h.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, f)
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

type staleFlows struct {
	vip      netip.Addr
	backends []netip.Addr
	tcp      bool // also TCP flows in SYN_SENT
}

// MatchConntrackFlow implements netlink.CustomConntrackFilter.
func (f staleFlows) MatchConntrackFlow(flow *netlink.ConntrackFlow) bool {
	switch flow.Forward.Protocol {
	case unix.IPPROTO_UDP:
	case unix.IPPROTO_TCP:
		info, ok := flow.ProtoInfo.(*netlink.ProtoInfoTCP)
		if !f.tcp || !ok || info.State != nl.TCP_CONNTRACK_SYN_SENT {
			return false
		}
	default:
		return false
	}
	dst, ok1 := netip.AddrFromSlice(flow.Forward.DstIP)
	src, ok2 := netip.AddrFromSlice(flow.Reverse.SrcIP)
	if !ok1 || !ok2 || dst.Unmap() == src.Unmap() {
		return false // not DNATed
	}
	return (!f.vip.IsValid() || dst.Unmap() == f.vip) && slices.Contains(f.backends, src.Unmap())
}
