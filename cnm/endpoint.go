package cnm

import (
	"context"
	"net"
	"net/netip"
	"sort"
	"time"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/ipam"
)

// EndpointSpec describes an endpoint to create.
type EndpointSpec struct {
	Name     string
	Addr4    netip.Addr // static IPv4; zero = allocate
	Addr6    netip.Addr // static IPv6; zero = allocate (if the network has IPv6)
	Aliases  []string
	MAC      net.HardwareAddr
	Priority int // gateway priority: higher wins
}

// Endpoint is an endpoint record. Values returned by the controller are copies.
type Endpoint struct {
	ID        string
	Name      string
	NetworkID string
	Created   time.Time
	Addr4     netip.Prefix `json:",omitempty"`
	Addr6     netip.Prefix `json:",omitempty"`
	MAC       string       `json:",omitempty"`
	Aliases   []string     `json:",omitempty"`
	Priority  int          `json:",omitempty"`
	// Transient endpoints live only while joined: Connect creates them, Disconnect
	// deletes them. A restart finding one unjoined finishes the interrupted operation
	// by deleting it.
	Transient bool `json:",omitempty"`
	// Set while joined to a sandbox.
	SandboxID      string        `json:",omitempty"`
	IfName         string        `json:",omitempty"`
	Gateway4       netip.Addr    `json:",omitempty"`
	Gateway6       netip.Addr    `json:",omitempty"`
	DisableGateway bool          `json:",omitempty"`
	Moved          bool          `json:",omitempty"` // the interface was moved in by the controller
	Routes         []StaticRoute `json:",omitempty"`
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
	ep := &Endpoint{ID: NewID(), Name: spec.Name, NetworkID: n.ID, Created: time.Now().UTC(),
		Aliases: spec.Aliases, Priority: spec.Priority, Transient: transient}
	if spec.MAC != nil {
		ep.MAC = spec.MAC.String()
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
	if info.MAC != nil {
		ep.MAC = info.MAC.String()
	}
	// A transient endpoint is persisted with its join, in the same transaction: a
	// crash before that leaves no record, and restore's cleanup removes kernel leftovers.
	if !transient {
		if err := c.store.Put(ctx, kindEndpoint, ep.ID, ep); err != nil {
			return nil, u.Rollback(err)
		}
	}
	c.mu.Lock()
	c.endpoints[ep.ID] = ep
	c.mu.Unlock()
	return ep, nil
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
	return nil
}

func (c *Controller) allocateAddrs(ctx context.Context, n *Network, ep *Endpoint, spec EndpointSpec, u *undo.Stack) error {
	var err error
	if ep.Addr4, err = c.allocateAddr(ctx, n, n.IPv4, spec.Addr4, u); err != nil {
		return err
	}
	ep.Addr6, err = c.allocateAddr(ctx, n, n.IPv6, spec.Addr6, u)
	return err
}

func (c *Controller) allocateAddr(ctx context.Context, n *Network, pools []Pool, want netip.Addr, u *undo.Stack) (netip.Prefix, error) {
	if len(pools) == 0 {
		if want.IsValid() {
			return netip.Prefix{}, errdefs.InvalidArgument("network %s has no subnet for address %s", n.Name, want)
		}
		return netip.Prefix{}, nil
	}
	p, ok := poolFor(pools, want)
	if !ok {
		return netip.Prefix{}, errdefs.InvalidArgument("address %s is not in any subnet of network %s", want, n.Name)
	}
	alloc, err := c.allocator(ctx, n.IPAMDriver)
	if err != nil {
		return netip.Prefix{}, err
	}
	addr, err := alloc.RequestAddress(ctx, ipam.AddressRequest{PoolID: p.PoolID, Addr: want})
	if err != nil {
		return netip.Prefix{}, err
	}
	u.Push(func() error { return alloc.ReleaseAddress(context.WithoutCancel(ctx), p.PoolID, addr.Addr()) })
	return addr, nil
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
	var out []Endpoint
	for _, ep := range c.endpoints {
		if ep.NetworkID == n.ID {
			out = append(out, *ep)
		}
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
	return c.deleteEndpoint(ctx, &n, ep)
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
	delete(c.endpoints, ep.ID)
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
	delete(c.endpoints, ep.ID)
	c.mu.Unlock()
	c.releaseAddrs(ctx, n, ep)
}

func (c *Controller) releaseAddrs(ctx context.Context, n *Network, ep *Endpoint) {
	alloc, err := c.allocator(ctx, n.IPAMDriver)
	if err != nil {
		c.log.WarnContext(ctx, "releasing addresses", "endpoint", ep.Name, "err", err)
		return
	}
	for _, a := range []struct {
		pools []Pool
		addr  netip.Prefix
	}{{n.IPv4, ep.Addr4}, {n.IPv6, ep.Addr6}} {
		if !a.addr.IsValid() {
			continue
		}
		if p, ok := poolFor(a.pools, a.addr.Addr()); ok {
			if err := alloc.ReleaseAddress(ctx, p.PoolID, a.addr.Addr()); err != nil {
				c.log.WarnContext(ctx, "releasing address", "addr", a.addr, "err", err)
			}
		}
	}
}
