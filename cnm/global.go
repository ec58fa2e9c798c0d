package cnm

import (
	"context"
	"errors"
	"net/netip"
	"strings"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/ipam"
)

// createGlobalNetwork creates a global-scope network: pools from the global IPAM and
// the record in the cluster store, both outside opMu; then the local driver setup
// under it. Every other node adopts the network from its watch.
func (c *Controller) createGlobalNetwork(ctx context.Context, n *Network, drv driver.Driver, specs []PoolSpec) (Network, error) {
	if c.cluster == nil {
		return Network{}, errNoCluster(n.Driver)
	}
	var u undo.Stack
	if err := c.allocatePools(ctx, n, specs, &u); err != nil {
		return Network{}, u.Rollback(err)
	}
	if err := c.allocateVNIs(ctx, n, drv, &u); err != nil {
		return Network{}, u.Rollback(err)
	}
	if err := c.cluster.CreateNetwork(ctx, *n); err != nil {
		return Network{}, u.Rollback(err)
	}
	u.Push(func() error { return c.cluster.DeleteNetwork(context.WithoutCancel(ctx), n.ID) })
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if got := c.networkByID(n.ID); got != nil { // the watch was quicker
		u.Release()
		return *got, nil
	}
	if err := c.adoptNetwork(ctx, n); err != nil {
		return Network{}, u.Rollback(err)
	}
	c.mu.Lock()
	c.networks[n.ID] = n
	c.mu.Unlock()
	u.Release()
	c.log.InfoContext(ctx, "global network created", "name", n.Name, "id", n.ID[:12], "driver", drv.Name())
	return *n, nil
}

// allocateVNIs reserves the cluster-unique IDs a VNIRequester driver needs for n.
func (c *Controller) allocateVNIs(ctx context.Context, n *Network, drv driver.Driver, u *undo.Stack) error {
	r, ok := drv.(driver.VNIRequester)
	if !ok {
		return nil
	}
	want, count, err := r.VNIRequest(n.Options, max(len(n.IPv4), 1))
	if err != nil {
		return err
	}
	if n.VNIs, err = c.cluster.AllocateVNIs(ctx, n.ID, want, count); err != nil {
		return err
	}
	u.Push(func() error { return c.cluster.ReleaseVNIs(context.WithoutCancel(ctx), n.ID) })
	return nil
}

// deleteGlobalNetwork deletes a global network cluster-wide (the cluster store refuses
// while any node has endpoints on it), releases its pools and removes it locally.
func (c *Controller) deleteGlobalNetwork(ctx context.Context, n Network) error {
	if eps := c.networkEndpoints(n.ID); len(eps) > 0 {
		return errdefs.Forbidden("error while removing network: network %s id %s has active endpoints", n.Name, n.ID)
	}
	if err := c.cluster.DeleteNetwork(ctx, n.ID); err != nil {
		return err
	}
	c.releasePools(ctx, &n)
	if len(n.VNIs) > 0 {
		if err := c.cluster.ReleaseVNIs(ctx, n.ID); err != nil {
			c.log.WarnContext(ctx, "releasing VNIs", "network", n.Name, "err", err)
		}
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if c.networkByID(n.ID) == nil { // the watch removed it already
		return nil
	}
	c.mu.Lock()
	delete(c.networks, n.ID)
	c.mu.Unlock()
	c.dropGlobalNetwork(ctx, n)
	return nil
}

// checkAttachable refuses plain sandboxes on a global network created without
// --attachable: as in Docker, only service tasks (of a service on n) may join those.
func checkAttachable(sb *Sandbox, svc *Service, n *Network) error {
	if n.global() && !n.Attachable && (svc == nil || svc.vipOn(n.ID).NetworkID == "") {
		return errdefs.Forbidden("network %s is not manually attachable: create it with --attachable to connect sandboxes to it", n.Name)
	}
	return nil
}

// publish records a local endpoint of a global network in the cluster store and pushes
// its withdrawal onto u.
func (c *Controller) publish(ctx context.Context, n *Network, ep *Endpoint, u *undo.Stack) error {
	if !n.global() || ep.Claimed {
		return nil // a claimed endpoint is published by connectGlobal, outside opMu
	}
	if err := c.cluster.PublishEndpoint(ctx, c.remoteView(n, ep)); err != nil {
		return err
	}
	u.Push(func() error { return c.cluster.WithdrawEndpoint(context.WithoutCancel(ctx), n.ID, ep.ID) })
	return nil
}

// withdraw removes a local endpoint's cluster record (before its local removal, so an
// unreachable cluster store fails the operation before anything changed).
func (c *Controller) withdraw(ctx context.Context, n *Network, ep *Endpoint) error {
	if !n.global() || withdrawnBefore(ctx, ep.ID) {
		return nil
	}
	return c.cluster.WithdrawEndpoint(ctx, n.ID, ep.ID)
}

// withdrawnKey marks, in a disconnect's context, the endpoint whose record
// disconnectGlobal already withdrew outside opMu.
type withdrawnKey struct{}

func withdrawnBefore(ctx context.Context, eid string) bool {
	id, _ := ctx.Value(withdrawnKey{}).(string)
	return id != "" && id == eid
}

// disconnectGlobal is Disconnect for a global network: the endpoint's record is
// withdrawn outside opMu (an unreachable store fails the disconnect before anything
// changed, and a slow one stalls no local work), then the local part runs under the
// lock; if that fails the record is published again.
func (c *Controller) disconnectGlobal(ctx context.Context, n Network, sbRef string) error {
	sb, err := c.Sandbox(ctx, sbRef)
	if err != nil {
		return err
	}
	ep := c.endpointOf(sb.ID, n.ID)
	if ep == nil {
		return errdefs.Forbidden("sandbox %s is not connected to network %s", sb.Name, n.Name)
	}
	c.mu.RLock()
	snapshot := *ep
	c.mu.RUnlock()
	if err := c.cluster.WithdrawEndpoint(ctx, n.ID, snapshot.ID); err != nil {
		return err
	}
	c.opMu.Lock()
	err = c.disconnectLocked(context.WithValue(ctx, withdrawnKey{}, snapshot.ID), n.ID, sbRef)
	var again RemoteEndpoint
	if err != nil {
		again = c.remoteView(&n, &snapshot)
	}
	c.opMu.Unlock()
	if err != nil {
		if perr := c.cluster.PublishEndpoint(context.WithoutCancel(ctx), again); perr != nil {
			c.log.ErrorContext(ctx, "re-publishing endpoint after a failed disconnect", "endpoint", snapshot.Name, "err", perr)
		}
	}
	return err
}

// republish restores a withdrawn record after the local removal failed.
func (c *Controller) republish(ctx context.Context, n *Network, ep *Endpoint) {
	if !n.global() {
		return
	}
	if err := c.cluster.PublishEndpoint(context.WithoutCancel(ctx), c.remoteView(n, ep)); err != nil {
		c.log.ErrorContext(ctx, "re-publishing endpoint after a failed removal", "endpoint", ep.Name, "err", err)
	}
}

// spaces routes the default IPAM's requests by address space: the global space goes to
// the cluster's allocator, whose pool IDs carry globalPoolPrefix.
type spaces struct {
	local, global ipam.Allocator
}

const globalPoolPrefix = "global/"

func (s spaces) RequestPool(ctx context.Context, req ipam.PoolRequest) (ipam.Pool, error) {
	if req.AddressSpace != ipam.SpaceGlobal {
		return s.local.RequestPool(ctx, req)
	}
	p, err := s.global.RequestPool(ctx, req)
	p.ID = globalPoolPrefix + p.ID
	return p, err
}

func (s spaces) pick(poolID string) (ipam.Allocator, string) {
	if id, ok := strings.CutPrefix(poolID, globalPoolPrefix); ok {
		return s.global, id
	}
	return s.local, poolID
}

func (s spaces) ReleasePool(ctx context.Context, poolID string) error {
	a, id := s.pick(poolID)
	return a.ReleasePool(ctx, id)
}

func (s spaces) RequestAddress(ctx context.Context, req ipam.AddressRequest) (netip.Prefix, error) {
	a, id := s.pick(req.PoolID)
	req.PoolID = id
	return a.RequestAddress(ctx, req)
}

func (s spaces) ReleaseAddress(ctx context.Context, poolID string, addr netip.Addr) error {
	a, id := s.pick(poolID)
	return a.ReleaseAddress(ctx, id, addr)
}

// reservation is what a global connect obtained from the cluster store before taking
// opMu: an endpoint ID whose record (and so its name) is claimed, and its addresses.
type reservation struct {
	id           string
	addr4, addr6 netip.Prefix
}

// connectGlobal is Connect for a global network. The cluster store's round trips run
// outside opMu, so a slow or unreachable store never stalls local operations:
//  1. outside: the addresses come from the global IPAM and the endpoint's record is
//     claimed (a name taken anywhere in the cluster, or a network deleted meanwhile,
//     fails here, before anything local happens);
//  2. under opMu: the local endpoint and join, with the reserved addresses;
//  3. outside: the record is completed (MAC, sandbox, DNS names) — what other nodes
//     resolve and program. Should that fail the local connect is undone.
func (c *Controller) connectGlobal(ctx context.Context, n Network, sbRef string, spec EndpointSpec) (Endpoint, error) {
	sb, err := c.Sandbox(ctx, sbRef)
	if err != nil {
		return Endpoint{}, err
	}
	if err := c.checkCanJoin(&sb, &n); err != nil {
		return Endpoint{}, err
	}
	if spec.Name == "" {
		spec.Name = sb.Name
	}
	if err := c.checkEndpointName(&n, spec.Name); err != nil {
		return Endpoint{}, err
	}
	// The addresses belong to the reservation until the local endpoint holds them.
	var addrs, claimed undo.Stack
	r := &reservation{id: NewID()}
	var rel func() error
	if r.addr4, rel, err = c.requestAddr(ctx, &n, n.IPv4, spec.Addr4, spec.MAC); err != nil {
		return Endpoint{}, err
	}
	addrs.Push(rel)
	if r.addr6, rel, err = c.requestAddr(ctx, &n, n.IPv6, spec.Addr6, spec.MAC); err != nil {
		return Endpoint{}, addrs.Rollback(err)
	}
	addrs.Push(rel)
	claim := RemoteEndpoint{ID: r.id, Name: spec.Name, NetworkID: n.ID, Node: c.self, Addr4: r.addr4, Addr6: r.addr6}
	if err := c.cluster.PublishEndpoint(ctx, claim); err != nil {
		return Endpoint{}, addrs.Rollback(err)
	}
	claimed.Push(func() error { return c.cluster.WithdrawEndpoint(context.WithoutCancel(ctx), n.ID, r.id) })
	spec.reserved = r
	ep, full, err := c.connectLocal(ctx, n.ID, sbRef, spec)
	if err != nil {
		return Endpoint{}, claimed.Rollback(addrs.Rollback(err))
	}
	addrs.Release() // the endpoint holds them now: its disconnect releases them
	if err := c.cluster.PublishEndpoint(ctx, full); err != nil {
		c.opMu.Lock()
		derr := c.disconnectLocked(context.WithoutCancel(ctx), n.ID, sbRef)
		c.opMu.Unlock()
		return Endpoint{}, claimed.Rollback(errors.Join(err, derr))
	}
	return ep, nil
}

// connectLocal is the local half of a global connect, under opMu; it returns the
// endpoint and its full cluster record.
func (c *Controller) connectLocal(ctx context.Context, nid, sbRef string, spec EndpointSpec) (Endpoint, RemoteEndpoint, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	sb, n, err := c.sandboxAndNetwork(ctx, sbRef, nid)
	if err != nil {
		return Endpoint{}, RemoteEndpoint{}, err
	}
	if err := c.checkCanJoin(&sb, &n); err != nil { // again, now serialised
		return Endpoint{}, RemoteEndpoint{}, err
	}
	ep, err := c.createEndpoint(ctx, &n, spec, true)
	if err != nil {
		return Endpoint{}, RemoteEndpoint{}, err
	}
	if err := c.join(ctx, &sb, &n, ep); err != nil {
		c.forgetEndpoint(context.WithoutCancel(ctx), &n, ep)
		return Endpoint{}, RemoteEndpoint{}, err
	}
	c.syncGatewayBridge(ctx, sb.ID)
	full := c.remoteView(&n, ep) // reads sandboxes: safe under opMu
	c.mu.RLock()
	defer c.mu.RUnlock()
	return *ep, full, nil
}
