package overlay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"

	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/netns"
)

// Kernel is the overlay driver's seam to the kernel of one host namespace.
type Kernel interface {
	// EnsureNetwork creates (or re-creates when its settings differ) a network's bridge
	// and VXLAN device, the VXLAN device enslaved to the bridge, both up.
	EnsureNetwork(ctx context.Context, d Devices) error
	// DeleteNetwork removes them; missing devices are not an error.
	DeleteNetwork(ctx context.Context, d Devices) error
	// AddPort creates a veth whose peer is born inside the sandbox namespace, enslaved
	// to the network's bridge, up.
	AddPort(ctx context.Context, p Port) error
	// DeletePort removes a host-side veth; a missing one is not an error.
	DeletePort(ctx context.Context, name string) error
	// PortAttached reports whether the host-side veth exists on bridge.
	PortAttached(ctx context.Context, name, bridge string) bool
	// SetPeer adds (or removes) the static forwarding entry (MAC → remote VTEP) and the
	// neighbour entries (IP → MAC, answered by the VXLAN device's ARP/ND proxy).
	SetPeer(ctx context.Context, vxlan string, p PeerEntry, add bool) error
	// SetBridgeAddr gives the bridge addr and mac (or, add false, removes addr): the
	// host becomes a router on the network. Routed packets then leave through the
	// bridge itself — one conntrack pass, where a veth into the bridge would be seen
	// twice with br_netfilter (and the second pass remaps the source port).
	SetBridgeAddr(ctx context.Context, bridge string, addr netip.Prefix, mac net.HardwareAddr, add bool) error
	// Owned lists the devices this driver made (by their owner alias).
	Owned(ctx context.Context) ([]OwnedLink, error)
	// UnderlayMTU is the MTU of the interface holding addr.
	UnderlayMTU(ctx context.Context, addr netip.Addr) (int, error)
	// UnderlayIface names the host's interface that packets to addr leave through.
	UnderlayIface(ctx context.Context, addr netip.Addr) (string, error)
	// Reach sends one probe from inside the sandbox namespace to dst, an ICMP echo or
	// (tcp) a TCP SYN, and returns nil once anything answers (echo reply, SYN-ACK or
	// RST), an error when nothing does before ctx ends.
	Reach(ctx context.Context, sandboxKey string, dst netip.Addr, tcp bool) error
}

// Devices are a network's devices on one host.
type Devices struct {
	NetworkID string
	Bridge    string
	VXLAN     string
	VNI       uint32
	Local     netip.Addr // the VTEP's source address (this host's advertise address)
	Port      int        // VXLAN UDP port
	MTU       int
	// Encrypted: the VXLAN device's socket lives in the WireGuard tunnel namespace,
	// whose only way out is the tunnel (see HostKernel.Tunnel).
	Encrypted bool
}

// Port is one endpoint's veth.
type Port struct {
	Name       string // host side
	Bridge     string
	SandboxKey string
	IfName     string // inside the sandbox
	MAC        net.HardwareAddr
	MTU        int
	NetworkID  string
}

// PeerEntry is what is programmed for an endpoint on another host.
type PeerEntry struct {
	MAC   net.HardwareAddr
	VTEP  netip.Addr
	Addrs []netip.Addr
}

// OwnedLink is a device the driver made, with the network it belongs to.
type OwnedLink struct {
	Name      string
	NetworkID string
}

// ownerAlias marks the driver's devices: "pier-overlay <network ID>".
const ownerAlias = "pier-overlay "

// HostKernel implements Kernel over netlink in a host namespace.
type HostKernel struct {
	Host *netns.Namespace
	// Tunnel is the WireGuard tunnel namespace (nil: none, TunnelErr says why). An
	// encrypted network's VXLAN device is created from inside it and placed in Host:
	// the device sits on the bridge, its UDP socket stays in Tunnel, where the only
	// route to other hosts is the WireGuard device — so its traffic can leave only
	// encrypted, and nothing arriving in cleartext on the underlay reaches it.
	Tunnel    *netns.Namespace
	TunnelErr string
}

func alias(nid string) string { return ownerAlias + nid }

func (k HostKernel) EnsureNetwork(ctx context.Context, d Devices) error {
	if d.Encrypted && k.Tunnel == nil {
		return errdefs.Unavailable("encrypted overlay: this host has no WireGuard tunnel (%s); the network is not extended here rather than carried in cleartext", k.TunnelErr)
	}
	br, err := k.ensureBridge(d)
	if err != nil {
		return err
	}
	if l, err := k.Host.NL.LinkByName(d.VXLAN); err == nil {
		// NetNsID >= 0: the device's socket is in another namespace (the tunnel's). A
		// device of the wrong kind is replaced, never reused: a cleartext device must
		// not carry an encrypted network.
		if vx, ok := l.(*netlink.Vxlan); ok && vx.VxlanId == int(d.VNI) && vx.Port == d.Port &&
			vx.SrcAddr.Equal(d.Local.AsSlice()) && vx.MTU == d.MTU && vx.MasterIndex == br.Attrs().Index &&
			vx.OperState != netlink.OperDown && (vx.NetNsID >= 0) == d.Encrypted {
			return nil
		}
		if err := k.Host.NL.LinkDel(l); err != nil {
			return fmt.Errorf("replacing VXLAN device %s: %w", d.VXLAN, err)
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.MasterIndex = d.VXLAN, d.MTU, br.Attrs().Index
	vx := &netlink.Vxlan{LinkAttrs: attrs, VxlanId: int(d.VNI), SrcAddr: d.Local.AsSlice(), Port: d.Port,
		Learning: false, Proxy: true, L2miss: false, L3miss: false}
	if d.Encrypted {
		// Made by the tunnel namespace's netlink socket, born in the host namespace.
		vx.MasterIndex = 0
		vx.Namespace = netlink.NsFd(int(k.Host.Handle))
		if err := k.Tunnel.NL.LinkAdd(vx); err != nil {
			return fmt.Errorf("creating encrypted VXLAN device %s (VNI %d) from the tunnel namespace: %w", d.VXLAN, d.VNI, err)
		}
		l, err := k.Host.NL.LinkByName(d.VXLAN)
		if err != nil {
			return err
		}
		if err := k.Host.NL.LinkSetMasterByIndex(l, br.Attrs().Index); err != nil {
			_ = k.Host.NL.LinkDel(l)
			return fmt.Errorf("enslaving %s: %w", d.VXLAN, err)
		}
		return k.markUp(l, d.NetworkID)
	}
	if err := k.Host.NL.LinkAdd(vx); err != nil {
		return fmt.Errorf("creating VXLAN device %s (VNI %d, port %d): %w", d.VXLAN, d.VNI, d.Port, err)
	}
	return k.markUp(vx, d.NetworkID)
}

func (k HostKernel) ensureBridge(d Devices) (netlink.Link, error) {
	if l, err := k.Host.NL.LinkByName(d.Bridge); err == nil {
		if l.Type() == "bridge" && l.Attrs().Alias == alias(d.NetworkID) {
			if l.Attrs().MTU != d.MTU {
				if err := k.Host.NL.LinkSetMTU(l, d.MTU); err != nil {
					return nil, fmt.Errorf("setting MTU of %s: %w", d.Bridge, err)
				}
			}
			return l, k.Host.NL.LinkSetUp(l)
		}
		return nil, fmt.Errorf("interface %s exists and is not this network's bridge", d.Bridge)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = d.Bridge, d.MTU
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := k.Host.NL.LinkAdd(br); err != nil {
		return nil, fmt.Errorf("creating bridge %s: %w", d.Bridge, err)
	}
	// The bridge has no address: the overlay is layer 2 only, nothing on this host
	// routes into it, so overlapping subnets of two overlays cannot meet.
	if err := k.Host.NL.LinkSetIP6AddrGenMode(br, 1); err != nil {
		return nil, fmt.Errorf("disabling IPv6 link-local on %s: %w", d.Bridge, err)
	}
	l, err := k.Host.NL.LinkByName(d.Bridge)
	if err != nil {
		return nil, err
	}
	return l, k.markUp(l, d.NetworkID)
}

func (k HostKernel) markUp(l netlink.Link, nid string) error {
	if err := k.Host.NL.LinkSetAlias(l, alias(nid)); err != nil {
		_ = k.Host.NL.LinkDel(l)
		return fmt.Errorf("marking %s: %w", l.Attrs().Name, err)
	}
	if err := k.Host.NL.LinkSetUp(l); err != nil {
		_ = k.Host.NL.LinkDel(l)
		return fmt.Errorf("setting %s up: %w", l.Attrs().Name, err)
	}
	return nil
}

func (k HostKernel) SetBridgeAddr(ctx context.Context, bridge string, addr netip.Prefix, mac net.HardwareAddr, add bool) error {
	l, err := k.Host.NL.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("the router's bridge %s: %w", bridge, err)
	}
	a := &netlink.Addr{IPNet: netns.PrefixToIPNet(addr)}
	if !add {
		if err := k.Host.NL.AddrDel(l, a); err != nil && !errors.Is(err, unix.EADDRNOTAVAIL) {
			return fmt.Errorf("removing %s from %s: %w", addr, bridge, err)
		}
		return nil
	}
	if mac != nil && !bytes.Equal(l.Attrs().HardwareAddr, mac) {
		if err := k.Host.NL.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("setting the MAC of %s: %w", bridge, err)
		}
	}
	if err := k.Host.NL.AddrReplace(l, a); err != nil {
		return fmt.Errorf("adding %s to %s: %w", addr, bridge, err)
	}
	return nil
}

func (k HostKernel) DeleteNetwork(ctx context.Context, d Devices) error {
	var errs []error
	for _, name := range []string{d.VXLAN, d.Bridge} {
		errs = append(errs, k.DeletePort(ctx, name))
	}
	return errors.Join(errs...)
}

func (k HostKernel) AddPort(ctx context.Context, p Port) error {
	sb, err := vns.GetFromPath(p.SandboxKey)
	if err != nil {
		return fmt.Errorf("opening sandbox namespace %s: %w", p.SandboxKey, err)
	}
	defer sb.Close()
	br, err := k.Host.NL.LinkByName(p.Bridge)
	if err != nil {
		return fmt.Errorf("finding bridge %s: %w", p.Bridge, err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.MasterIndex = p.Name, p.MTU, br.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: p.IfName, PeerHardwareAddr: p.MAC, PeerNamespace: netlink.NsFd(int(sb))}
	err = k.Host.NL.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) && k.DeletePort(ctx, p.Name) == nil {
		err = k.Host.NL.LinkAdd(veth) // a leftover of an interrupted operation
	}
	if err != nil {
		return fmt.Errorf("creating veth %s: %w", p.Name, err)
	}
	if err := k.Host.NL.LinkSetIP6AddrGenMode(veth, 1); err != nil {
		_ = k.Host.NL.LinkDel(veth)
		return fmt.Errorf("disabling IPv6 link-local on %s: %w", p.Name, err)
	}
	return k.markUp(veth, p.NetworkID)
}

func (k HostKernel) DeletePort(ctx context.Context, name string) error {
	l, err := k.Host.NL.LinkByName(name)
	if err != nil {
		return nil
	}
	if err := k.Host.NL.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
		return fmt.Errorf("deleting %s: %w", name, err)
	}
	return nil
}

func (k HostKernel) PortAttached(ctx context.Context, name, bridge string) bool {
	l, err := k.Host.NL.LinkByName(name)
	if err != nil {
		return false
	}
	br, err := k.Host.NL.LinkByName(bridge)
	return err == nil && l.Attrs().MasterIndex == br.Attrs().Index
}

func (k HostKernel) SetPeer(ctx context.Context, vxlan string, p PeerEntry, add bool) error {
	l, err := k.Host.NL.LinkByName(vxlan)
	if err != nil {
		return fmt.Errorf("finding VXLAN device %s: %w", vxlan, err)
	}
	idx := l.Attrs().Index
	entries := []*netlink.Neigh{
		// The VXLAN device's own table: where to send frames for MAC.
		{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT | netlink.NUD_NOARP, Flags: netlink.NTF_SELF,
			HardwareAddr: p.MAC, IP: p.VTEP.AsSlice()},
		// The bridge's table: MAC is behind the VXLAN port (no flooding to find it).
		{LinkIndex: idx, Family: unix.AF_BRIDGE, State: netlink.NUD_NOARP, Flags: netlink.NTF_MASTER, HardwareAddr: p.MAC},
	}
	for _, a := range p.Addrs {
		fam := unix.AF_INET
		if a.Is6() {
			fam = unix.AF_INET6
		}
		entries = append(entries, &netlink.Neigh{LinkIndex: idx, Family: fam, State: netlink.NUD_PERMANENT, IP: a.AsSlice(), HardwareAddr: p.MAC})
	}
	var errs []error
	for _, e := range entries {
		if add {
			err = k.Host.NL.NeighSet(e)
		} else if err = k.Host.NL.NeighDel(e); errors.Is(err, unix.ENOENT) {
			err = nil
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("%s %s on %s: %w", map[bool]string{true: "adding", false: "removing"}[add], describe(e), vxlan, err))
		}
	}
	return errors.Join(errs...)
}

func describe(n *netlink.Neigh) string {
	if n.IP == nil {
		return "forwarding entry " + n.HardwareAddr.String()
	}
	return "neighbour " + n.IP.String()
}

func (k HostKernel) Owned(ctx context.Context) ([]OwnedLink, error) {
	links, err := netns.Dump(k.Host.NL.LinkList)
	if err != nil {
		return nil, fmt.Errorf("listing links: %w", err)
	}
	var out []OwnedLink
	for _, l := range links {
		if nid, ok := strings.CutPrefix(l.Attrs().Alias, ownerAlias); ok {
			out = append(out, OwnedLink{Name: l.Attrs().Name, NetworkID: nid})
		}
	}
	return out, nil
}

func (k HostKernel) UnderlayMTU(ctx context.Context, addr netip.Addr) (int, error) {
	links, err := netns.Dump(k.Host.NL.LinkList)
	if err != nil {
		return 0, fmt.Errorf("listing links: %w", err)
	}
	for _, l := range links {
		addrs, err := k.Host.NL.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok && ip.Unmap() == addr {
				return l.Attrs().MTU, nil
			}
		}
	}
	return 0, fmt.Errorf("no interface of this host has the advertise address %s", addr)
}
