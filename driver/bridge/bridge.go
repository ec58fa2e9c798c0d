// Package bridge is pier's bridge driver: one Linux bridge per network, a veth pair per
// endpoint whose sandbox end is created directly inside the sandbox namespace, the
// gateway address on the bridge, and the network's firewall state (isolation, ICC,
// masquerade) handed to the firewall package. It owns nothing outside the host
// namespace it was given, and never configures addresses inside sandboxes (the
// controller does). Every kernel call goes through Kernel (kernel.go); the unit tests
// drive the driver through a fake of it that prints `ip link`-like text.
//
// Lock order: Driver.mu only; kernel I/O happens outside it where possible.
package bridge

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/firewall"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/portmap"
)

// Name is the driver name.
const Name = "bridge"

// ownerAlias marks kernel objects pier owns (bridges carry "pier:<network id>").
const ownerAlias = "pier:"

// OwnerGroup is the interface group ("pibr" in ASCII) bridges pier creates are born
// in. Unlike the alias, the kernel applies a group in the creating request itself, so
// a bridge whose creator died before its alias was set is still known to be pier's.
const OwnerGroup = 0x70696272

// hostVethPrefix names host-side veths: "pv" + 12 hex of the endpoint ID.
const hostVethPrefix = "pv"

// Firewall is what the driver needs from the firewall.
type Firewall interface {
	SetBridge(ctx context.Context, b firewall.Bridge) error
	RemoveBridge(ctx context.Context, name string) error
	SetPorts(ctx context.Context, owner string, bindings []firewall.PortBinding) error
	RemovePorts(ctx context.Context, owner string) error
}

// Driver is the bridge driver.
type Driver struct {
	k   Kernel
	fw  Firewall
	pub Publisher
	log *slog.Logger

	reaper    *reaper
	mu        sync.Mutex // guards the fields below
	networks  map[string]*network
	endpoints map[string]*endpoint
}

type network struct {
	id       string
	cfg      Config
	subnet4  netip.Prefix
	subnet6  netip.Prefix
	gateway4 netip.Prefix
	gateway6 netip.Prefix
}

type endpoint struct {
	nid, id string
	addr4   netip.Prefix
	addr6   netip.Prefix
	mac     net.HardwareAddr

	// Set while joined (guarded by Driver.mu).
	sandboxKey, ifName string
	ports              []portmap.Spec    // the sandbox's -p
	restored           []portmap.Binding // bindings of a previous run, to keep
	bindings           []portmap.Binding // published now (this endpoint is the gateway)
}

// New returns a bridge driver programming the kernel k (NewHostKernel) and firewall fw,
// publishing ports through pub.
func New(k Kernel, fw Firewall, pub Publisher, log *slog.Logger) *Driver {
	log = log.With("component", "bridge")
	return &Driver{k: k, fw: fw, pub: pub, log: log, reaper: &reaper{k: k, log: log},
		networks: map[string]*network{}, endpoints: map[string]*endpoint{}}
}

// Start launches the background deletion of detached veths (see reaper). Without it
// Leave deletes synchronously.
func (d *Driver) Start() { d.reaper.start() }

// Close finishes pending deletions and stops the background work. Idempotent.
func (d *Driver) Close() error {
	d.reaper.stop()
	return nil
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return Name }

// Capability implements driver.Driver.
func (d *Driver) Capability() driver.Capability {
	return driver.Capability{DataScope: driver.ScopeLocal, ConnectivityScope: driver.ScopeLocal}
}

// CreateNetwork creates the bridge, its gateway addresses and firewall state.
func (d *Driver) CreateNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	n, err := d.validate(nc)
	if err != nil {
		return err
	}
	var u undo.Stack
	if err := d.setup(ctx, n, &u); err != nil {
		return u.Rollback(err)
	}
	u.Release()
	d.mu.Lock()
	d.networks[n.id] = n
	d.mu.Unlock()
	return nil
}

// RestoreNetwork implements driver.Restorer: like CreateNetwork, reusing what exists.
func (d *Driver) RestoreNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	return d.CreateNetwork(ctx, nc)
}

func (d *Driver) validate(nc driver.NetworkConfig) (*network, error) {
	cfg, err := ParseOptions(nc.ID, nc.Internal, nc.Options)
	if err != nil {
		return nil, err
	}
	if len(nc.IPv4) > 1 || len(nc.IPv6) > 1 {
		return nil, errdefs.InvalidArgument("bridge network %q: only one IPv4 and one IPv6 subnet are supported", nc.Name)
	}
	n := &network{id: nc.ID, cfg: cfg}
	if len(nc.IPv4) == 1 {
		n.subnet4, n.gateway4 = nc.IPv4[0].Pool, nc.IPv4[0].Gateway
	}
	if len(nc.IPv6) == 1 {
		n.subnet6, n.gateway6 = nc.IPv6[0].Pool, nc.IPv6[0].Gateway
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return n, d.conflictsLocked(n, nc.Name)
}

func (d *Driver) conflictsLocked(n *network, name string) error {
	for _, o := range d.networks {
		if o.id == n.id {
			continue
		}
		if o.cfg.BridgeName == n.cfg.BridgeName {
			return errdefs.Conflict("bridge name %q is already used by network %s", n.cfg.BridgeName, o.id[:12])
		}
		for _, p := range [][2]netip.Prefix{{o.subnet4, n.subnet4}, {o.subnet6, n.subnet6}} {
			if p[0].IsValid() && p[1].IsValid() && p[0].Overlaps(p[1]) {
				return errdefs.Forbidden("subnet %s of network %q overlaps %s of bridge network %s", p[1], name, p[0], o.id[:12])
			}
		}
	}
	return nil
}

func (d *Driver) setup(ctx context.Context, n *network, u *undo.Stack) error {
	br, created, err := d.ensureBridge(n)
	if err != nil {
		return err
	}
	if created {
		u.Push(func() error { return d.k.LinkDel("", br) })
	}
	if err := d.addGateways(br, n); err != nil {
		return err
	}
	if err := d.k.LinkSet("", br, Change{Up: true}); err != nil {
		return fmt.Errorf("setting bridge %s up: %w", n.cfg.BridgeName, err)
	}
	if err := d.enableForwarding(n); err != nil {
		return err
	}
	if err := d.fw.SetBridge(ctx, n.firewallState()); err != nil {
		return err
	}
	u.Push(func() error { return d.fw.RemoveBridge(context.WithoutCancel(ctx), n.cfg.BridgeName) })
	return nil
}

// ensureBridge returns the network's bridge, creating it if needed. An existing device
// is reused only if it is a bridge.
func (d *Driver) ensureBridge(n *network) (netlink.Link, bool, error) {
	name := n.cfg.BridgeName
	if l, err := d.k.LinkByName("", name); err == nil {
		if l.Type() != "bridge" {
			return nil, false, errdefs.Conflict("interface %q exists and is not a bridge", name)
		}
		return l, false, nil
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU, attrs.Group = name, n.cfg.MTU, OwnerGroup
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := d.k.LinkAdd(br); err != nil {
		return nil, false, fmt.Errorf("creating bridge %s: %w", name, err)
	}
	// The kernel ignores IFLA_IFALIAS on creation: the owner mark needs its own request.
	if err := d.k.LinkSet("", br, Change{Alias: ownerAlias + n.id}); err != nil {
		_ = d.k.LinkDel("", br)
		return nil, false, fmt.Errorf("marking bridge %s as pier's: %w", name, err)
	}
	return br, true, nil
}

func (d *Driver) addGateways(br netlink.Link, n *network) error {
	for _, gw := range []netip.Prefix{n.gateway4, n.gateway6} {
		if !gw.IsValid() {
			continue
		}
		a := &netlink.Addr{IPNet: netns.PrefixToIPNet(gw)}
		if gw.Addr().Is6() {
			a.Flags = unix.IFA_F_NODAD
		}
		if err := d.k.AddrReplace(br, a); err != nil {
			return fmt.Errorf("adding gateway %s to %s: %w", gw, n.cfg.BridgeName, err)
		}
	}
	return nil
}

func (d *Driver) enableForwarding(n *network) error {
	if err := d.k.SetSysctl("net/ipv4/ip_forward", "1"); err != nil {
		return err
	}
	if !n.subnet6.IsValid() {
		return nil
	}
	if err := d.k.SetSysctl("net/ipv6/conf/"+n.cfg.BridgeName+"/disable_ipv6", "0"); err != nil {
		return err
	}
	return d.k.SetSysctl("net/ipv6/conf/all/forwarding", "1")
}

func (n *network) firewallState() firewall.Bridge {
	b := firewall.Bridge{Name: n.cfg.BridgeName, Owner: n.id, ICC: n.cfg.ICC,
		Masquerade: n.cfg.Masquerade, Internal: n.cfg.Internal}
	if n.subnet4.IsValid() {
		b.Subnets4 = []netip.Prefix{n.subnet4}
	}
	if n.subnet6.IsValid() {
		b.Subnets6 = []netip.Prefix{n.subnet6}
	}
	return b
}

// DeleteNetwork removes the firewall state and the bridge (if pier created it).
func (d *Driver) DeleteNetwork(ctx context.Context, nid string) error {
	n, err := d.network(nid)
	if errdefs.Is(err, errdefs.KindNotFound) {
		return nil // already gone (the contract: deletes are idempotent)
	}
	if err != nil {
		return err
	}
	if err := d.fw.RemoveBridge(ctx, n.cfg.BridgeName); err != nil {
		return err
	}
	if err := d.deleteOwnedBridge(n.cfg.BridgeName, nid); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.networks, nid)
	d.mu.Unlock()
	return nil
}

func (d *Driver) deleteOwnedBridge(name, nid string) error {
	l, err := d.k.LinkByName("", name)
	if err != nil {
		return nil // already gone
	}
	if l.Attrs().Alias != ownerAlias+nid {
		return nil // a user-provided bridge: not ours to delete
	}
	// Like veths, the bridge is taken down, renamed away and deleted in the background:
	// a synchronous delete costs ~35 ms of kernel RCU work.
	if err := d.reaper.remove(l, "", ""); err != nil {
		return fmt.Errorf("deleting bridge %s: %w", name, err)
	}
	return nil
}

func (d *Driver) network(nid string) (*network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[nid]
	if !ok {
		return nil, errdefs.NotFound("bridge network %s not found", nid)
	}
	return n, nil
}

// CreateEndpoint records the endpoint and derives its MAC address.
func (d *Driver) CreateEndpoint(ctx context.Context, ec driver.EndpointConfig) (driver.EndpointInfo, error) {
	if _, err := d.network(ec.NetworkID); err != nil {
		return driver.EndpointInfo{}, err
	}
	mac := ec.MAC
	if mac == nil {
		mac = DeriveMAC(ec.Addr4.Addr(), ec.EndpointID)
	}
	ep := &endpoint{nid: ec.NetworkID, id: ec.EndpointID, addr4: ec.Addr4, addr6: ec.Addr6, mac: mac}
	d.mu.Lock()
	d.endpoints[ec.EndpointID] = ep
	d.mu.Unlock()
	return driver.EndpointInfo{MAC: mac}, nil
}

// DeriveMAC returns Docker's static MAC (02:42 + the IPv4 address), or, without an
// IPv4 address, a locally administered MAC derived from the endpoint ID.
func DeriveMAC(ip netip.Addr, endpointID string) net.HardwareAddr {
	if ip.Is4() {
		a := ip.As4()
		return net.HardwareAddr{0x02, 0x42, a[0], a[1], a[2], a[3]}
	}
	h := sha256.Sum256([]byte(endpointID))
	return net.HardwareAddr{0x02, 0x42, h[0], h[1], h[2], h[3]}
}

// DeleteEndpoint forgets the endpoint.
func (d *Driver) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	d.mu.Lock()
	delete(d.endpoints, eid)
	d.mu.Unlock()
	return nil
}

// HostVethName is the host-side veth name of endpoint eid.
func HostVethName(eid string) string {
	if len(eid) > 12 {
		eid = eid[:12]
	}
	return hostVethPrefix + eid
}

// Join creates the veth pair with its peer directly inside the sandbox namespace.
func (d *Driver) Join(ctx context.Context, req driver.JoinRequest) (driver.JoinResult, error) {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return driver.JoinResult{}, err
	}
	ep, err := d.endpoint(req.EndpointID)
	if err != nil {
		return driver.JoinResult{}, err
	}
	if err := d.createVeth(n, ep, req); err != nil {
		return driver.JoinResult{}, err
	}
	d.setJoined(ep, req)
	res := driver.JoinResult{DisableGateway: n.cfg.Internal}
	if !n.cfg.Internal {
		res.Gateway4, res.Gateway6 = n.gateway4.Addr(), n.gateway6.Addr()
	}
	return res, nil
}

func (d *Driver) createVeth(n *network, ep *endpoint, req driver.JoinRequest) error {
	sb, closeSB, err := d.k.OpenSandbox(req.SandboxKey)
	if err != nil {
		return err
	}
	defer closeSB()
	br, err := d.k.LinkByName("", n.cfg.BridgeName)
	if err != nil {
		return fmt.Errorf("finding bridge %s: %w", n.cfg.BridgeName, err)
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MTU = HostVethName(ep.id), n.cfg.MTU
	attrs.MasterIndex = br.Attrs().Index
	veth := &netlink.Veth{LinkAttrs: attrs, PeerName: req.IfName, PeerHardwareAddr: ep.mac,
		PeerNamespace: sb}
	err = d.k.LinkAdd(veth)
	if errors.Is(err, unix.EEXIST) && d.removeHostVeth(ep.id) == nil {
		err = d.k.LinkAdd(veth) // a leftover of an interrupted operation
	}
	if err != nil {
		_ = d.removeHostVeth(ep.id)
		return fmt.Errorf("creating veth %s for endpoint %s: %w", attrs.Name, ep.id[:12], err)
	}
	if err := d.isolate(n, veth); err != nil {
		return err
	}
	if err := d.hairpin(veth, req); err != nil {
		return err
	}
	return d.upQuietly(veth)
}

// upQuietly sets the host side up without an IPv6 link-local address: a bridge port
// needs none, and each one's DAD and MLD packets are flooded to every other port of
// the bridge (quadratic work for the kernel with hundreds of endpoints).
func (d *Driver) upQuietly(veth netlink.Link) error {
	if err := d.k.LinkSet("", veth, Change{NoIP6AddrGen: true, Up: true}); err != nil {
		_ = d.k.LinkDel("", veth)
		return fmt.Errorf("setting %s up: %w", veth.Attrs().Name, err)
	}
	return nil
}

// hairpin lets a sandbox with published ports reach its own ports through the host's
// address: with br_netfilter the DNAT'd frame goes back out of the port it came in on.
func (d *Driver) hairpin(veth netlink.Link, req driver.JoinRequest) error {
	if len(req.Ports) == 0 {
		return nil
	}
	if err := d.k.LinkSet("", veth, Change{Hairpin: true}); err != nil {
		_ = d.k.LinkDel("", veth)
		return fmt.Errorf("setting hairpin mode on %s: %w", veth.Attrs().Name, err)
	}
	return nil
}

// isolate marks the port isolated on ICC-off bridges: the bridge then forwards nothing
// between two isolated ports, with or without br_netfilter (the firewall's intra-bridge
// drop only sees bridged frames when bridge-nf-call-iptables is on).
func (d *Driver) isolate(n *network, veth netlink.Link) error {
	if n.cfg.ICC {
		return nil
	}
	if err := d.k.LinkSet("", veth, Change{Isolated: true}); err != nil {
		_ = d.k.LinkDel("", veth)
		return fmt.Errorf("isolating port %s (enable_icc=false): %w", veth.Attrs().Name, err)
	}
	return nil
}

func (d *Driver) endpoint(eid string) (*endpoint, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ep, ok := d.endpoints[eid]
	if !ok {
		return nil, errdefs.NotFound("bridge endpoint %s not found", eid)
	}
	return ep, nil
}

func (d *Driver) setJoined(ep *endpoint, req driver.JoinRequest) {
	d.mu.Lock()
	ep.sandboxKey, ep.ifName, ep.ports, ep.restored = req.SandboxKey, req.IfName, req.Ports, req.Published
	d.mu.Unlock()
}

// Leave removes the veth pair (both ends go with the host side); the kernel's slow
// part happens in the background (see reaper).
func (d *Driver) Leave(ctx context.Context, nid, eid string) error {
	l, err := d.k.LinkByName("", HostVethName(eid))
	if err != nil {
		return nil // already gone
	}
	var key, ifName string
	d.mu.Lock()
	if ep := d.endpoints[eid]; ep != nil {
		key, ifName = ep.sandboxKey, ep.ifName
		ep.sandboxKey, ep.ifName = "", ""
	}
	d.mu.Unlock()
	return d.reaper.remove(l, key, ifName)
}

func (d *Driver) removeHostVeth(eid string) error {
	l, err := d.k.LinkByName("", HostVethName(eid))
	if err != nil {
		return nil // already gone
	}
	if err := d.k.LinkDel("", l); err != nil {
		return fmt.Errorf("deleting veth %s: %w", l.Attrs().Name, err)
	}
	return nil
}

// RestoreEndpoint implements driver.Restorer.
func (d *Driver) RestoreEndpoint(ctx context.Context, ec driver.EndpointConfig, join *driver.JoinRequest) (bool, error) {
	if _, err := d.CreateEndpoint(ctx, ec); err != nil {
		return false, err
	}
	if join == nil {
		return true, nil
	}
	ep, err := d.endpoint(ec.EndpointID)
	if err != nil {
		return false, err
	}
	d.setJoined(ep, *join)
	return d.vethIntact(ec.NetworkID, ec.EndpointID), nil
}

func (d *Driver) vethIntact(nid, eid string) bool {
	n, err := d.network(nid)
	if err != nil {
		return false
	}
	l, err := d.k.LinkByName("", HostVethName(eid))
	if err != nil {
		return false
	}
	br, err := d.k.LinkByName("", n.cfg.BridgeName)
	return err == nil && l.Attrs().MasterIndex == br.Attrs().Index
}

// Cleanup implements driver.Restorer: it deletes bridges and veths pier created for
// networks and endpoints that no longer exist (leftovers of interrupted operations).
func (d *Driver) Cleanup(ctx context.Context, live driver.Live) error {
	links, err := d.k.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	liveVeths := map[string]bool{}
	for eid := range live.Endpoints {
		liveVeths[HostVethName(eid)] = true
	}
	var errs []error
	for _, l := range links {
		if !d.isStale(l, live, liveVeths) {
			continue
		}
		d.log.InfoContext(ctx, "removing leftover interface", "name", l.Attrs().Name)
		// ENODEV: a deletion still running in the kernel got there first.
		if err := d.k.LinkDel("", l); err != nil && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("removing leftover %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}

func (d *Driver) isStale(l netlink.Link, live driver.Live, liveVeths map[string]bool) bool {
	a := l.Attrs()
	switch {
	case l.Type() == "bridge" && strings.HasPrefix(a.Alias, ownerAlias):
		return !live.Networks[strings.TrimPrefix(a.Alias, ownerAlias)]
	case l.Type() == "bridge" && a.Group == OwnerGroup:
		return true // created by pier, which died before marking it with its network
	case l.Type() == "veth" && strings.HasPrefix(a.Name, hostVethPrefix) && len(a.Name) == len(hostVethPrefix)+12:
		return !liveVeths[a.Name]
	}
	return false
}
