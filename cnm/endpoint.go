package cnm

import (
	"context"
	"crypto/rand"
	"net"
	"net/netip"
	"sort"
	"strings"
	"time"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/ipam"
)

// EndpointSpec describes an endpoint to create.
type EndpointSpec struct {
	Name    string
	Addr4   netip.Addr // static IPv4; zero = allocate
	Addr6   netip.Addr // static IPv6; zero = allocate (if the network has IPv6)
	Aliases []string
	// Links are Docker's --link values, "sandbox[:alias]": on a user-defined network
	// the alias resolves (for this sandbox only) to the linked sandbox; on the default
	// bridge it is written to this sandbox's /etc/hosts.
	Links    []string
	MAC      net.HardwareAddr
	Priority int // gateway priority: higher wins
	// LinkLocal are extra link-local addresses for the interface (Docker's
	// IPAMConfig.LinkLocalIPs); the API checks they are link-local.
	LinkLocal []netip.Addr

	// reserved is set by a global connect: the cluster store already granted the ID,
	// name and addresses outside opMu (see connectGlobal).
	reserved *reservation
}

// Endpoint is an endpoint record. Values returned by the controller are copies. Its
// parts say who may know what: EndpointFacts are cluster facts (on a global network
// every node learns them, as a RemoteEndpoint); EndpointJoin are this host's facts of
// the join; the rest are this node's own settings. The record's JSON is flat, as before
// the split.
type Endpoint struct {
	EndpointFacts
	// DriverAddr4/6: the address was assigned by the driver (CreateEndpoint filled a
	// family the IPAM gave none of), so it is never released to or replayed on the IPAM.
	DriverAddr4 bool         `json:",omitempty"`
	DriverAddr6 bool         `json:",omitempty"`
	Links       []Link       `json:",omitempty"`
	LinkLocal   []netip.Addr `json:",omitempty"`
	Priority    int          `json:",omitempty"`
	// Transient endpoints live only while joined: Connect creates them, Disconnect
	// deletes them. A restart finding one unjoined finishes the interrupted operation
	// by deleting it.
	Transient bool `json:",omitempty"`
	EndpointJoin

	// Claimed: its cluster record was claimed before the local work (connectGlobal,
	// this run only).
	Claimed bool `json:"-"`
}

// EndpointFacts are what an endpoint is, cluster-wide.
type EndpointFacts struct {
	ID        string
	Name      string
	NetworkID string
	Created   time.Time
	Addr4     netip.Prefix `json:",omitempty"`
	Addr6     netip.Prefix `json:",omitempty"`
	MAC       string       `json:",omitempty"`
	Aliases   []string     `json:",omitempty"`
}

// EndpointJoin are this host's facts of a joined endpoint (all zero when not joined).
type EndpointJoin struct {
	SandboxID      string        `json:",omitempty"`
	IfName         string        `json:",omitempty"`
	Gateway4       netip.Addr    `json:",omitempty"`
	Gateway6       netip.Addr    `json:",omitempty"`
	DisableGateway bool          `json:",omitempty"`
	Moved          bool          `json:",omitempty"` // the interface was moved in by the controller
	SrcName        string        `json:",omitempty"` // its host-side name before the move
	Routes         []StaticRoute `json:",omitempty"`
}

// Link is a resolved --link: the linked sandbox's name (at link time) and the alias.
type Link struct {
	Sandbox string
	Alias   string
}

// StaticRoute is a driver-requested route recorded for restore.
type StaticRoute struct {
	Destination netip.Prefix
	NextHop     netip.Addr `json:",omitempty"`
}

func (e *Endpoint) id() string   { return e.ID }
func (e *Endpoint) name() string { return e.Name }

func (e *Endpoint) hasGateway() bool {
	return !e.DisableGateway && (e.Gateway4.IsValid() || e.Gateway6.IsValid())
}

const kindEndpoint = "endpoints"

// CreateEndpoint creates an endpoint on network ref: addresses, then the driver's endpoint.
func (c *Controller) CreateEndpoint(ctx context.Context, ref string, spec EndpointSpec) (Endpoint, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	n, err := c.Network(ctx, ref)
	if err != nil {
		return Endpoint{}, err
	}
	ep, err := c.createEndpoint(ctx, &n, spec, false)
	if err != nil {
		return Endpoint{}, err
	}
	return *ep, nil
}

func (c *Controller) createEndpoint(ctx context.Context, n *Network, spec EndpointSpec, transient bool) (*Endpoint, error) {
	if err := c.checkEndpointName(n, spec.Name); err != nil {
		return nil, err
	}
	ep := &Endpoint{EndpointFacts: EndpointFacts{ID: NewID(), Name: spec.Name, NetworkID: n.ID, Created: time.Now().UTC(),
		Aliases: spec.Aliases}, Priority: spec.Priority, Transient: transient, LinkLocal: spec.LinkLocal}
	if r := spec.reserved; r != nil {
		ep.ID, ep.Claimed = r.id, true
	}
	if spec.MAC != nil {
		ep.MAC = spec.MAC.String()
	}
	var err error
	if ep.Links, err = c.resolveLinks(n, spec.Links); err != nil {
		return nil, err
	}
	var u undo.Stack
	if err := c.allocateAddrs(ctx, n, ep, spec, &u); err != nil {
		return nil, u.Rollback(err)
	}
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return nil, u.Rollback(err)
	}
	info, err := drv.CreateEndpoint(ctx, ep.driverConfig())
	if err != nil {
		return nil, u.Rollback(err)
	}
	u.Push(func() error { return drv.DeleteEndpoint(context.WithoutCancel(ctx), n.ID, ep.ID) })
	if err := ep.applyDriverInfo(info); err != nil {
		return nil, u.Rollback(err)
	}
	// A transient endpoint is persisted with its join, in the same transaction: a
	// crash before that leaves no record, and restore's cleanup removes kernel leftovers.
	if !transient {
		if err := c.publish(ctx, n, ep, &u); err != nil {
			return nil, u.Rollback(err)
		}
		if err := c.store.Put(ctx, kindEndpoint, ep.ID, ep); err != nil {
			return nil, u.Rollback(err)
		}
	}
	c.mu.Lock()
	c.addEndpointLocked(ep)
	c.mu.Unlock()
	return ep, nil
}

// applyDriverInfo records what the driver filled in at CreateEndpoint. A driver may
// only fill what was empty (Docker's rule); a built-in driver breaking it is a bug.
func (ep *Endpoint) applyDriverInfo(info driver.EndpointInfo) error {
	if info.MAC != nil {
		ep.MAC = info.MAC.String()
	}
	for _, a := range []struct {
		got    netip.Prefix
		v6     bool
		addr   *netip.Prefix
		driver *bool
	}{{info.Addr4, false, &ep.Addr4, &ep.DriverAddr4}, {info.Addr6, true, &ep.Addr6, &ep.DriverAddr6}} {
		if !a.got.IsValid() {
			continue
		}
		if a.got.Addr().Is6() != a.v6 {
			return errdefs.Internal("driver returned %s as the endpoint's address of the other family", a.got)
		}
		if a.addr.IsValid() {
			return errdefs.Internal("driver assigned address %s to endpoint %s, which already has %s", a.got, ep.Name, *a.addr)
		}
		*a.addr, *a.driver = a.got, true
	}
	return nil
}

// ipamAddrs are the endpoint's addresses that came from the network's IPAM, with the
// pools of their family.
func (ep *Endpoint) ipamAddrs(n *Network) []pooledAddr {
	var out []pooledAddr
	if ep.Addr4.IsValid() && !ep.DriverAddr4 {
		out = append(out, pooledAddr{n.IPv4, ep.Addr4})
	}
	if ep.Addr6.IsValid() && !ep.DriverAddr6 {
		out = append(out, pooledAddr{n.IPv6, ep.Addr6})
	}
	return out
}

type pooledAddr struct {
	pools []Pool
	addr  netip.Prefix
}

// resolveLinks checks --link values ("sandbox[:alias]"). On a user-defined network the
// target need not exist yet (Docker stores the link; DNS resolves it once the target
// is there). On a predefined network (legacy links, written to /etc/hosts) the linked
// sandbox must exist and be on that network already, as Docker requires.
func (c *Controller) resolveLinks(n *Network, links []string) ([]Link, error) {
	var out []Link
	for _, l := range links {
		target, alias, _ := strings.Cut(l, ":")
		if alias == "" {
			alias = target
		}
		if target == "" || strings.ContainsAny(alias, " \t/") {
			return nil, errdefs.InvalidArgument("invalid link %q: want sandbox[:alias]", l)
		}
		c.mu.RLock()
		sb, err := lookup(c.sandboxes, "sandbox", target)
		c.mu.RUnlock()
		if err != nil && !n.Predefined {
			// As Docker on user-defined networks: the link is stored and the embedded DNS
			// answers it whenever a sandbox of that name is on a shared network.
			if err := validName("sandbox", target); err != nil {
				return nil, errdefs.InvalidArgument("invalid link %q: %v", l, err)
			}
			out = append(out, Link{Sandbox: target, Alias: alias})
			continue
		}
		if err != nil {
			return nil, errdefs.NotFound("could not find sandbox for link %s: %v", target, err)
		}
		if n.Predefined && c.endpointOf(sb.ID, n.ID) == nil {
			return nil, errdefs.InvalidArgument("cannot link to %s: it is not connected to network %s", sb.Name, n.Name)
		}
		out = append(out, Link{Sandbox: sb.Name, Alias: alias})
	}
	return out, nil
}

func (c *Controller) checkEndpointName(n *Network, name string) error {
	if err := validName("endpoint", name); err != nil {
		return err
	}
	for _, ep := range c.networkEndpoints(n.ID) {
		if ep.Name == name {
			return errdefs.Forbidden("endpoint with name %s already exists in network %s", name, n.Name)
		}
	}
	if n.global() && c.remoteNameTaken(n.ID, name) {
		return errdefs.Forbidden("endpoint with name %s already exists in network %s (on another node)", name, n.Name)
	}
	return nil
}

func (c *Controller) allocateAddrs(ctx context.Context, n *Network, ep *Endpoint, spec EndpointSpec, u *undo.Stack) error {
	if err := c.ensureMACForIPAM(ctx, n, ep); err != nil {
		return err
	}
	if r := spec.reserved; r != nil {
		ep.Addr4, ep.Addr6 = r.addr4, r.addr6 // granted, and released, by connectGlobal
		return nil
	}
	mac, _ := net.ParseMAC(ep.MAC)
	for _, a := range []struct {
		addr  *netip.Prefix
		pools []Pool
		want  netip.Addr
	}{{&ep.Addr4, n.IPv4, spec.Addr4}, {&ep.Addr6, n.IPv6, spec.Addr6}} {
		addr, release, err := c.requestAddr(ctx, n, a.pools, a.want, mac)
		if err != nil {
			return err
		}
		*a.addr = addr
		u.Push(release)
	}
	return nil
}

// ensureMACForIPAM gives the endpoint a random MAC when its network's IPAM driver
// needs one with address requests and the user chose none (Docker does the same).
func (c *Controller) ensureMACForIPAM(ctx context.Context, n *Network, ep *Endpoint) error {
	if ep.MAC != "" || len(n.IPv4)+len(n.IPv6) == 0 {
		return nil
	}
	alloc, err := c.allocator(ctx, n.IPAMDriver)
	if err != nil {
		return err
	}
	if r, ok := alloc.(ipam.MACRequirer); ok && r.RequiresMACAddress() {
		ep.MAC = randomMAC().String()
	}
	return nil
}

// randomMAC returns a random locally administered unicast MAC.
func randomMAC() net.HardwareAddr {
	m := make(net.HardwareAddr, 6)
	_, _ = rand.Read(m)
	m[0] = m[0]&^0x01 | 0x02
	return m
}

// requestAddr asks the network's IPAM for want (zero: any address) in pools and
// returns it with the function that releases it. No pools: no address.
func (c *Controller) requestAddr(ctx context.Context, n *Network, pools []Pool, want netip.Addr, mac net.HardwareAddr) (netip.Prefix, func() error, error) {
	none := func() error { return nil }
	if len(pools) == 0 {
		if want.IsValid() {
			return netip.Prefix{}, none, errdefs.InvalidArgument("network %s has no subnet for address %s", n.Name, want)
		}
		return netip.Prefix{}, none, nil
	}
	p, ok := poolFor(pools, want)
	if !ok {
		return netip.Prefix{}, none, errdefs.InvalidArgument("address %s is not in any subnet of network %s", want, n.Name)
	}
	alloc, err := c.allocator(ctx, n.IPAMDriver)
	if err != nil {
		return netip.Prefix{}, none, err
	}
	addr, err := alloc.RequestAddress(ctx, ipam.AddressRequest{PoolID: p.PoolID, Addr: want, MAC: mac})
	if err != nil {
		return netip.Prefix{}, none, err
	}
	return addr, func() error { return alloc.ReleaseAddress(context.WithoutCancel(ctx), p.PoolID, addr.Addr()) }, nil
}

func (ep *Endpoint) driverConfig() driver.EndpointConfig {
	mac, _ := net.ParseMAC(ep.MAC)
	return driver.EndpointConfig{NetworkID: ep.NetworkID, EndpointID: ep.ID, Addr4: ep.Addr4, Addr6: ep.Addr6, MAC: mac}
}

// Endpoint returns an endpoint of network netRef by ID, name or unique ID prefix.
func (c *Controller) Endpoint(ctx context.Context, netRef, ref string) (Endpoint, error) {
	n, err := c.Network(ctx, netRef)
	if err != nil {
		return Endpoint{}, err
	}
	ep, err := c.findEndpoint(n.ID, ref)
	if err != nil {
		return Endpoint{}, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return *ep, nil
}

func (c *Controller) findEndpoint(nid, ref string) (*Endpoint, error) {
	m := map[string]*Endpoint{}
	for _, ep := range c.networkEndpoints(nid) {
		m[ep.ID] = ep
	}
	return lookup(m, "endpoint", ref)
}

// Endpoints lists the endpoints of network ref, sorted by name.
func (c *Controller) Endpoints(ctx context.Context, ref string) ([]Endpoint, error) {
	n, err := c.Network(ctx, ref)
	if err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Endpoint, 0, len(c.epIndex.byNetwork[n.ID]))
	for ep := range c.epIndex.byNetwork[n.ID] {
		out = append(out, *ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// DeleteEndpoint deletes an endpoint that is not joined to a sandbox.
func (c *Controller) DeleteEndpoint(ctx context.Context, netRef, ref string) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	n, err := c.Network(ctx, netRef)
	if err != nil {
		return err
	}
	ep, err := c.findEndpoint(n.ID, ref)
	if err != nil {
		return err
	}
	if ep.SandboxID != "" {
		return errdefs.Forbidden("endpoint %s is joined to sandbox %s: leave first", ep.Name, ep.SandboxID[:12])
	}
	if err := c.withdraw(ctx, &n, ep); err != nil {
		return err
	}
	if err := c.deleteEndpoint(ctx, &n, ep); err != nil {
		c.republish(ctx, &n, ep)
		return err
	}
	return nil
}

func (c *Controller) deleteEndpoint(ctx context.Context, n *Network, ep *Endpoint) error {
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return err
	}
	if err := drv.DeleteEndpoint(ctx, n.ID, ep.ID); err != nil {
		return err
	}
	if err := c.store.Delete(ctx, kindEndpoint, ep.ID); err != nil {
		return err
	}
	c.mu.Lock()
	c.removeEndpointLocked(ep)
	c.mu.Unlock()
	c.releaseAddrs(ctx, n, ep)
	return nil
}

// forgetEndpoint undoes a Connect whose join failed: the endpoint was never stored, so
// it leaves memory and IPAM even when the driver cannot delete it (logged: the driver's
// state is then unknown, e.g. a dead plugin).
func (c *Controller) forgetEndpoint(ctx context.Context, n *Network, ep *Endpoint) {
	if drv, err := c.driver(ctx, n.Driver); err == nil {
		if err := drv.DeleteEndpoint(ctx, n.ID, ep.ID); err != nil {
			c.log.WarnContext(ctx, "driver could not delete a failed endpoint", "endpoint", ep.Name, "err", err)
		}
	}
	c.mu.Lock()
	c.removeEndpointLocked(ep)
	c.mu.Unlock()
	if !ep.Claimed { // a global connect's reservation releases its own addresses
		c.releaseAddrs(ctx, n, ep)
	}
}

func (c *Controller) releaseAddrs(ctx context.Context, n *Network, ep *Endpoint) {
	alloc, err := c.allocator(ctx, n.IPAMDriver)
	if err != nil {
		c.log.WarnContext(ctx, "releasing addresses", "endpoint", ep.Name, "err", err)
		return
	}
	for _, a := range ep.ipamAddrs(n) {
		if p, ok := poolFor(a.pools, a.addr.Addr()); ok {
			if err := alloc.ReleaseAddress(ctx, p.PoolID, a.addr.Addr()); err != nil {
				c.log.WarnContext(ctx, "releasing address", "addr", a.addr, "err", err)
			}
		}
	}
}
