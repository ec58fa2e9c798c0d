package subif

import (
	"fmt"
	"net"
	"strings"

	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
)

// Names of pier-created internal parents: a veth pair in the host namespace whose
// first end is the parent. (Docker uses a dummy link; this kernel has no dummy driver,
// and a veth pair with both ends up gives the sub-interfaces carrier everywhere.)
const (
	internalPrefix = "dm-"
	peerPrefix     = "dp-"
)

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// ownerAlias marks parents pier created for network nid of this driver kind.
func (d *Driver) ownerAlias(nid string) string { return "pier:" + d.kind.Name + ":" + nid }

// ensureParent returns the network's parent, creating it when it is pier's to create
// (the internal parent, or a VLAN sub-interface), and reports whether pier owns it.
func (d *Driver) ensureParent(n *network, u *undo.Stack) (netlink.Link, error) {
	if l, err := d.k.LinkByName("", n.parent); err == nil {
		n.owned = l.Attrs().Alias == d.ownerAlias(n.id)
		return l, nil
	}
	switch {
	case n.cfg.Parent == "":
		return d.createOwned(n, u, d.internalParent)
	case n.cfg.VLAN != nil:
		return d.createOwned(n, u, d.vlanParent)
	}
	return nil, errdefs.NotFound("parent interface %q not found", n.parent)
}

func (d *Driver) createOwned(n *network, u *undo.Stack, create func(*network) (netlink.Link, error)) (netlink.Link, error) {
	l, err := create(n)
	if err != nil {
		return nil, err
	}
	n.owned = true
	u.Push(func() error { return d.k.LinkDel("", l) })
	if err := d.k.LinkSetAlias(l, d.ownerAlias(n.id)); err != nil {
		return nil, fmt.Errorf("marking %s as pier's: %w", n.parent, err)
	}
	if err := d.k.LinkSetUp(l); err != nil {
		return nil, fmt.Errorf("setting %s up: %w", n.parent, err)
	}
	return l, nil
}

// internalParent creates the veth pair; the peer end is made inert (no IPv6, no ARP
// replies, strict reverse-path filter) so sandboxes cannot reach the host through it.
func (d *Driver) internalParent(n *network) (netlink.Link, error) {
	peer := peerPrefix + short(n.id)
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.Flags = n.parent, net.FlagUp
	v := &netlink.Veth{LinkAttrs: attrs, PeerName: peer}
	if err := d.k.LinkAdd(v); err != nil {
		return nil, fmt.Errorf("creating internal parent %s: %w", n.parent, err)
	}
	for _, s := range [][2]string{{"net/ipv6/conf/" + n.parent + "/disable_ipv6", "1"},
		{"net/ipv6/conf/" + peer + "/disable_ipv6", "1"}, {"net/ipv4/conf/" + peer + "/arp_ignore", "8"},
		{"net/ipv4/conf/" + peer + "/rp_filter", "1"}} {
		if err := d.k.SetSysctl(s[0], s[1]); err != nil {
			_ = d.k.LinkDel("", v)
			return nil, err
		}
	}
	p, err := d.k.LinkByName("", peer)
	if err == nil {
		err = d.k.LinkSetUp(p)
	}
	if err != nil {
		_ = d.k.LinkDel("", v)
		return nil, fmt.Errorf("setting %s up: %w", peer, err)
	}
	return v, nil
}

// vlanParent creates the 802.1q sub-interface named by the parent option.
func (d *Driver) vlanParent(n *network) (netlink.Link, error) {
	vl := n.cfg.VLAN
	lower, err := d.k.LinkByName("", vl.Lower)
	if err != nil {
		return nil, errdefs.NotFound("parent interface %q of VLAN sub-interface %s not found", vl.Lower, n.parent)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.ParentIndex = n.parent, lower.Attrs().Index
	v := &netlink.Vlan{LinkAttrs: attrs, VlanId: vl.ID}
	if err := d.k.LinkAdd(v); err != nil {
		if isUnsupported(err) {
			return nil, errdefs.NotImplemented("creating VLAN sub-interface %s: kernel does not support 802.1q VLAN (module 8021q)", n.parent)
		}
		return nil, fmt.Errorf("creating VLAN sub-interface %s: %w", n.parent, err)
	}
	return v, nil
}

// deleteParent removes the parent if pier created it for this network.
func (d *Driver) deleteParent(n *network) error {
	l, err := d.k.LinkByName("", n.parent)
	if err != nil || l.Attrs().Alias != d.ownerAlias(n.id) {
		return nil // gone, or not ours
	}
	if err := d.k.LinkDel("", l); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting parent %s: %w", n.parent, err)
	}
	return nil
}

// probe creates and deletes a sub-interface on parent once, so a kernel without the
// link kind fails network creation with a clear message.
func (d *Driver) probe(parent netlink.Link, nid string) error {
	if d.supported.Load() {
		return nil
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.ParentIndex = probePrefix+short(nid), parent.Attrs().Index
	l := d.kind.NewLink(attrs, d.kind.Modes[0])
	if err := d.k.LinkAdd(l); err != nil {
		if isUnsupported(err) {
			return errdefs.NotImplemented("kernel does not support %s (module %s)", d.kind.Name, d.kind.Name)
		}
		return fmt.Errorf("creating a %s interface on %s: %w", d.kind.Name, parent.Attrs().Name, err)
	}
	d.supported.Store(true)
	return d.k.LinkDel("", l)
}

const probePrefix = "pp-"

// isOwnedStale reports whether host link l is a pier-made parent or probe of this driver
// kind that no live network accounts for.
func (d *Driver) isOwnedStale(l netlink.Link, live map[string]bool) bool {
	a := l.Attrs()
	if l.Type() == d.kind.Name && strings.HasPrefix(a.Name, probePrefix) {
		return true
	}
	prefix := "pier:" + d.kind.Name + ":"
	return strings.HasPrefix(a.Alias, prefix) && !live[strings.TrimPrefix(a.Alias, prefix)]
}
