package bridge

import (
	"errors"
	"fmt"
	"os"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/driver/internal/subif"
	"github.com/piernet/pier/netns"
)

// Kernel is the seam between the bridge driver and the kernel. ns names a namespace:
// "" is the host, anything else a sandbox key (the path of its namespace). A link
// argument is identified by its index, or by its name when the index is 0.
type Kernel interface {
	LinkByName(ns, name string) (netlink.Link, error)
	// LinkList lists the host's links.
	LinkList() ([]netlink.Link, error)
	// LinkAdd creates l in the host; a veth's PeerNamespace (from OpenSandbox) puts
	// its peer in a sandbox. It fills in l's index.
	LinkAdd(l netlink.Link) error
	// LinkDel deletes l; a veth takes its peer with it, a bridge its addresses.
	LinkDel(ns string, l netlink.Link) error
	// LinkSet applies the changes c names to l, in Change's field order.
	LinkSet(ns string, l netlink.Link, c Change) error
	AddrReplace(l netlink.Link, a *netlink.Addr) error
	SetSysctl(key, value string) error
	// OpenSandbox returns a namespace handle for a veth's PeerNamespace.
	OpenSandbox(key string) (netlink.NsFd, func(), error)
	// DeleteGroup deletes every host link of an interface group in one request.
	DeleteGroup(group uint32) error
}

// Change lists attribute changes of one link; zero fields change nothing. They are
// applied in field order, one request each, and the first failure stops the rest.
type Change struct {
	Alias        string
	Isolated     bool // the bridge port forwards nothing to other isolated ports
	Hairpin      bool // the bridge port may send a frame back where it came from
	NoIP6AddrGen bool // no IPv6 link-local address
	Down         bool
	Name         string
	Group        uint32
	Up           bool
}

// HostKernel is Kernel on real namespaces.
type HostKernel struct{ subif.HostKernel }

// NewHostKernel returns the Kernel of host, the namespace pier treats as the host.
func NewHostKernel(host *netns.Namespace) HostKernel {
	return HostKernel{subif.HostKernel{Host: host}}
}

var _ Kernel = HostKernel{}

// LinkSet implements Kernel.
func (k HostKernel) LinkSet(ns string, l netlink.Link, c Change) error {
	return k.In(ns, func(h *netlink.Handle) error {
		for _, s := range c.steps(h, l) {
			if err := s.do(); err != nil {
				return fmt.Errorf("%s: %w", s.name, err)
			}
		}
		return nil
	})
}

type step struct {
	name string
	do   func() error
}

func (c Change) steps(h *netlink.Handle, l netlink.Link) []step {
	var s []step
	add := func(on bool, name string, do func() error) {
		if on {
			s = append(s, step{name, do})
		}
	}
	add(c.Alias != "", "alias", func() error { return h.LinkSetAlias(l, c.Alias) })
	add(c.Isolated, "isolated", func() error { return h.LinkSetIsolated(l, true) })
	add(c.Hairpin, "hairpin", func() error { return h.LinkSetHairpin(l, true) })
	add(c.NoIP6AddrGen, "addrgenmode", func() error { return h.LinkSetIP6AddrGenMode(l, 1) }) // IN6_ADDR_GEN_MODE_NONE
	add(c.Down, "down", func() error { return h.LinkSetDown(l) })
	add(c.Name != "", "rename", func() error { return h.LinkSetName(l, c.Name) })
	add(c.Group != 0, "group", func() error { return h.LinkSetGroup(l, int(c.Group)) })
	add(c.Up, "up", func() error { return h.LinkSetUp(l) })
	return s
}

// AddrReplace implements Kernel.
func (k HostKernel) AddrReplace(l netlink.Link, a *netlink.Addr) error {
	return k.Host.NL.AddrReplace(l, a)
}

// DeleteGroup implements Kernel.
func (k HostKernel) DeleteGroup(group uint32) error {
	return k.Host.Do(func() error {
		req := nl.NewNetlinkRequest(unix.RTM_DELLINK, unix.NLM_F_ACK)
		req.AddData(nl.NewIfInfomsg(unix.AF_UNSPEC))
		req.AddData(nl.NewRtAttr(unix.IFLA_GROUP, nl.Uint32Attr(group)))
		_, err := req.Execute(unix.NETLINK_ROUTE, 0)
		return err
	})
}

// isGone reports whether err says a link or its namespace does not exist.
func isGone(err error) bool {
	var nf netlink.LinkNotFoundError
	return errors.As(err, &nf) || errors.Is(err, unix.ENODEV) || errors.Is(err, os.ErrNotExist)
}
