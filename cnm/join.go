package cnm

import (
	"context"
	"net"
	"net/netip"
	"strings"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/store"
)

// Join connects endpoint epRef of network netRef to sandbox sbRef.
func (c *Controller) Join(ctx context.Context, sbRef, netRef, epRef string) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	sb, n, err := c.sandboxAndNetwork(ctx, sbRef, netRef)
	if err != nil {
		return err
	}
	ep, err := c.findEndpoint(n.ID, epRef)
	if err != nil {
		return err
	}
	if err := c.join(ctx, &sb, &n, ep); err != nil {
		return err
	}
	c.syncGatewayBridge(ctx, sb.ID)
	return nil
}

// Connect creates an endpoint on network netRef and joins it to sandbox sbRef, as
// `docker network connect` does. The endpoint is named after the sandbox unless
// spec.Name is set.
func (c *Controller) Connect(ctx context.Context, netRef, sbRef string, spec EndpointSpec) (Endpoint, error) {
	if n, err := c.Network(ctx, netRef); err == nil && n.global() && c.cluster != nil {
		return c.connectGlobal(ctx, n, sbRef, spec)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	return c.connectLocked(ctx, netRef, sbRef, spec)
}

func (c *Controller) connectLocked(ctx context.Context, netRef, sbRef string, spec EndpointSpec) (Endpoint, error) {
	sb, n, err := c.sandboxAndNetwork(ctx, sbRef, netRef)
	if err != nil {
		return Endpoint{}, err
	}
	if err := c.checkCanJoin(&sb, &n); err != nil {
		return Endpoint{}, err
	}
	if spec.Name == "" {
		spec.Name = sb.Name
	}
	ep, err := c.createEndpoint(ctx, &n, spec, true)
	if err != nil {
		return Endpoint{}, err
	}
	if err := c.join(ctx, &sb, &n, ep); err != nil {
		c.forgetEndpoint(context.WithoutCancel(ctx), &n, ep)
		return Endpoint{}, err
	}
	c.syncGatewayBridge(ctx, sb.ID)
	c.mu.RLock()
	defer c.mu.RUnlock()
	return *ep, nil
}

// Disconnect makes sandbox sbRef leave network netRef and deletes its endpoint.
func (c *Controller) Disconnect(ctx context.Context, netRef, sbRef string) error {
	if n, err := c.Network(ctx, netRef); err == nil && n.global() && c.cluster != nil {
		return c.disconnectGlobal(ctx, n, sbRef)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	return c.disconnectLocked(ctx, netRef, sbRef)
}

func (c *Controller) disconnectLocked(ctx context.Context, netRef, sbRef string) error {
	sb, n, err := c.sandboxAndNetwork(ctx, sbRef, netRef)
	if err != nil {
		return err
	}
	ep := c.endpointOf(sb.ID, n.ID)
	if ep == nil {
		return errdefs.Forbidden("sandbox %s is not connected to network %s", sb.Name, n.Name)
	}
	if err := c.disconnect(ctx, &sb, ep); err != nil {
		return err
	}
	c.syncGatewayBridge(ctx, sb.ID)
	return nil
}

func (c *Controller) disconnect(ctx context.Context, sb *Sandbox, ep *Endpoint) error {
	n, err := c.Network(ctx, ep.NetworkID)
	if err != nil {
		return err
	}
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return err
	}
	var u undo.Stack
	// A global endpoint's record goes first: with the cluster store unreachable the
	// disconnect fails before anything changed.
	if err := c.withdraw(ctx, &n, ep); err != nil {
		return err
	}
	u.Push(func() error { c.republish(ctx, &n, ep); return nil })
	if err := c.unjoin(ctx, sb, &n, ep, &u); err != nil {
		return u.Rollback(err)
	}
	if err := drv.DeleteEndpoint(ctx, n.ID, ep.ID); err != nil {
		return u.Rollback(err)
	}
	u.Push(func() error {
		_, err := drv.CreateEndpoint(context.WithoutCancel(ctx), ep.driverConfig())
		return err
	})
	// The deletion is the one durable write: a crash before it restores the endpoint
	// as joined and re-creates its interface.
	if err := c.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Delete(kindEndpoint, ep.ID); err != nil {
			return err
		}
		return tx.Put(kindSandbox, sb.ID, sb)
	}); err != nil {
		return u.Rollback(err)
	}
	c.commitLeave(ctx, sb, ep, nil)
	c.releaseAddrs(ctx, &n, ep)
	return nil
}

// Leave disconnects endpoint epRef of network netRef from sandbox sbRef.
func (c *Controller) Leave(ctx context.Context, sbRef, netRef, epRef string) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	sb, n, err := c.sandboxAndNetwork(ctx, sbRef, netRef)
	if err != nil {
		return err
	}
	ep, err := c.findEndpoint(n.ID, epRef)
	if err != nil {
		return err
	}
	if ep.SandboxID != sb.ID {
		return errdefs.Forbidden("endpoint %s is not joined to sandbox %s", ep.Name, sb.Name)
	}
	if err := c.leave(ctx, &sb, &n, ep); err != nil {
		return err
	}
	c.republish(ctx, &n, ep) // no longer in a sandbox: no names
	c.syncGatewayBridge(ctx, sb.ID)
	return nil
}

func (c *Controller) sandboxAndNetwork(ctx context.Context, sbRef, netRef string) (Sandbox, Network, error) {
	sb, err := c.Sandbox(ctx, sbRef)
	if err != nil {
		return Sandbox{}, Network{}, err
	}
	n, err := c.Network(ctx, netRef)
	return sb, n, err
}

func (c *Controller) endpointOf(sid, nid string) *Endpoint {
	for _, ep := range c.sandboxEndpoints(sid) {
		if ep.NetworkID == nid {
			return ep
		}
	}
	return nil
}

func (c *Controller) checkCanJoin(sb *Sandbox, n *Network) error {
	if c.endpointOf(sb.ID, n.ID) != nil {
		return errdefs.Forbidden("endpoint with name %s already exists in network %s", sb.Name, n.Name)
	}
	if err := checkAttachable(sb, c.serviceOf(sb), n); err != nil {
		return err
	}
	capa := c.capability(n)
	if capa.HostNamespace != sb.HostNetwork {
		return errdefs.InvalidArgument("sandbox %s: a sandbox sharing the host network stack cannot be connected to other networks, and other sandboxes cannot join network %s", sb.Name, n.Name)
	}
	if capa.NoInterface && len(c.sandboxEndpoints(sb.ID)) > 0 || c.hasNoInterfaceEndpoint(sb.ID) {
		return errdefs.InvalidArgument("sandbox %s: network %s cannot be combined with other networks", sb.Name, c.noInterfaceName(n, sb.ID))
	}
	return nil
}

func (c *Controller) hasNoInterfaceEndpoint(sid string) bool { return c.noInterfaceNetwork(sid) != nil }

// noInterfaceNetwork returns the network without interfaces sandbox sid is on, or nil.
func (c *Controller) noInterfaceNetwork(sid string) *Network {
	for _, ep := range c.sandboxEndpoints(sid) {
		if n := c.networkByID(ep.NetworkID); n != nil && c.capability(n).NoInterface {
			return n
		}
	}
	return nil
}

// noInterfaceName names the network of the no-interface rule: the one sid is on, else n.
func (c *Controller) noInterfaceName(n *Network, sid string) string {
	if o := c.noInterfaceNetwork(sid); o != nil {
		return o.Name
	}
	return n.Name
}

func (c *Controller) join(ctx context.Context, sb *Sandbox, n *Network, ep *Endpoint) error {
	if ep.SandboxID != "" {
		return errdefs.Conflict("endpoint %s is already joined to sandbox %s", ep.Name, ep.SandboxID[:12])
	}
	if err := c.checkCanJoin(sb, n); err != nil {
		return err
	}
	if err := c.checkPorts(ctx, sb, n); err != nil {
		return err
	}
	joined := *ep
	joined.SandboxID, joined.IfName = sb.ID, c.nextIfName(sb.ID, n)
	var u undo.Stack
	if err := c.attach(ctx, sb, n, &joined, &u); err != nil {
		return u.Rollback(err)
	}
	if err := c.publish(ctx, n, &joined, &u); err != nil {
		return u.Rollback(err)
	}
	if err := c.commitJoin(ctx, sb, &joined, &u); err != nil {
		return u.Rollback(err)
	}
	c.mu.Lock()
	c.replaceEndpointLocked(ep, joined)
	c.sandboxes[sb.ID].GatewayEndpoint, c.sandboxes[sb.ID].Published = sb.GatewayEndpoint, sb.Published
	c.mu.Unlock()
	c.refreshNaming(ctx, sb)
	return nil
}

// attach runs the driver's Join and configures the interface inside the sandbox.
func (c *Controller) attach(ctx context.Context, sb *Sandbox, n *Network, ep *Endpoint, u *undo.Stack) error {
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return err
	}
	cfg := ep.driverConfig()
	res, err := drv.Join(ctx, driver.JoinRequest{NetworkID: n.ID, EndpointID: ep.ID, SandboxID: sb.ID,
		SandboxKey: sb.Key, IfName: ep.IfName, Addr4: ep.Addr4, Addr6: ep.Addr6, MAC: cfg.MAC,
		Ports: sb.Ports, Published: sb.Published})
	if err != nil {
		return err
	}
	u.Push(func() error { return drv.Leave(context.WithoutCancel(ctx), n.ID, ep.ID) })
	ep.Gateway4, ep.Gateway6, ep.DisableGateway = res.Gateway4, res.Gateway6, res.DisableGateway || n.Internal
	ep.Moved, ep.SrcName, ep.Routes = res.SrcName != "", res.SrcName, nil
	for _, r := range res.StaticRoutes {
		ep.Routes = append(ep.Routes, StaticRoute{Destination: r.Destination, NextHop: r.NextHop})
	}
	if res.NoInterface {
		ep.IfName = ""
		return nil
	}
	if ep.Moved && res.DstPrefix != "" && !strings.HasPrefix(ep.IfName, res.DstPrefix) {
		ep.IfName = c.nextIfNameWithPrefix(sb.ID, res.DstPrefix)
	}
	if ep.Moved {
		u.Push(func() error { c.releaseInterface(context.WithoutCancel(ctx), sb, ep); return nil })
	}
	return c.os.ConfigureInterface(ctx, sb.Key, ep.iface(res.SrcName))
}

func (ep *Endpoint) iface(src string) netns.Interface {
	mac, _ := net.ParseMAC(ep.MAC)
	ifc := netns.Interface{Name: ep.IfName, SrcName: src, MAC: mac, Addr4: ep.Addr4, Addr6: ep.Addr6,
		NoLinkLocal6: !ep.Addr6.IsValid()}
	for _, r := range ep.Routes {
		ifc.Routes = append(ifc.Routes, netns.Route{Dst: r.Destination, Via: r.NextHop})
	}
	for _, a := range ep.LinkLocal {
		bits := 16 // as Docker: 169.254.0.0/16, fe80::/64
		if a.Is6() {
			bits = 64
		}
		ifc.LinkLocal = append(ifc.LinkLocal, netip.PrefixFrom(a, bits))
	}
	return ifc
}

// commitJoin moves the default gateway if needed and persists the endpoint and sandbox.
func (c *Controller) commitJoin(ctx context.Context, sb *Sandbox, ep *Endpoint, u *undo.Stack) error {
	eps := append(c.sandboxEndpoints(sb.ID), ep)
	undoGateway, err := c.applyGateway(ctx, sb, c.planGateway(sb, eps))
	if err != nil {
		return err
	}
	u.Push(undoGateway)
	return c.persist(ctx, ep, sb)
}

func (c *Controller) persist(ctx context.Context, ep *Endpoint, sb *Sandbox) error {
	return c.store.Update(ctx, func(tx store.Tx) error {
		if err := tx.Put(kindEndpoint, ep.ID, ep); err != nil {
			return err
		}
		return tx.Put(kindSandbox, sb.ID, sb)
	})
}

// leave makes ep leave sb and records it as not joined; on failure nothing changed.
func (c *Controller) leave(ctx context.Context, sb *Sandbox, n *Network, ep *Endpoint) error {
	var u undo.Stack
	if err := c.unjoin(ctx, sb, n, ep, &u); err != nil {
		return u.Rollback(err)
	}
	left := ep.unjoined()
	left.Transient = false // left explicitly: the caller manages its lifetime now
	if err := c.persist(ctx, &left, sb); err != nil {
		return u.Rollback(err)
	}
	c.commitLeave(ctx, sb, ep, &left)
	return nil
}

// unjoin does a leave's kernel work, pushing each step's undo on u: the gateway moves
// to the best of sb's other endpoints (sb follows), then the driver's Leave.
func (c *Controller) unjoin(ctx context.Context, sb *Sandbox, n *Network, ep *Endpoint, u *undo.Stack) error {
	before := *sb
	var rest []*Endpoint
	for _, o := range c.sandboxEndpoints(sb.ID) {
		if o.ID != ep.ID {
			rest = append(rest, o)
		}
	}
	undoGateway, err := c.applyGateway(ctx, sb, c.planGateway(sb, rest))
	if err != nil {
		return err
	}
	u.Push(undoGateway)
	return c.detach(ctx, &before, n, ep, u)
}

// commitLeave puts a done leave in memory: ep becomes left (nil: it is deleted) and
// the sandbox takes sb's gateway; then names are refreshed.
func (c *Controller) commitLeave(ctx context.Context, sb *Sandbox, ep *Endpoint, left *Endpoint) {
	c.mu.Lock()
	if left != nil {
		c.replaceEndpointLocked(ep, *left)
	} else {
		c.removeEndpointLocked(ep)
	}
	c.sandboxes[sb.ID].GatewayEndpoint, c.sandboxes[sb.ID].Published = sb.GatewayEndpoint, sb.Published
	c.mu.Unlock()
	if c.dns != nil {
		c.dns.Remove(ep.ID)
	}
	c.refreshNaming(ctx, sb)
}

// unjoined returns a copy of ep with the join state cleared.
func (ep *Endpoint) unjoined() Endpoint {
	e := *ep
	e.EndpointJoin = EndpointJoin{}
	return e
}

// detach runs the driver's Leave and gives a moved-in interface back. Its undo joins
// the endpoint again into before, the sandbox as it was before the leave (so the
// driver is offered the port bindings it had).
func (c *Controller) detach(ctx context.Context, before *Sandbox, n *Network, ep *Endpoint, u *undo.Stack) error {
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return err
	}
	if err := drv.Leave(ctx, n.ID, ep.ID); err != nil {
		return err
	}
	u.Push(func() error { return c.reattach(context.WithoutCancel(ctx), before, n, ep) })
	if ep.Moved {
		c.releaseInterface(ctx, before, ep)
	}
	return nil
}

// reattach joins ep to sb again after a leave that is being undone.
func (c *Controller) reattach(ctx context.Context, sb *Sandbox, n *Network, ep *Endpoint) error {
	again := *ep
	var u undo.Stack
	if err := c.attach(ctx, sb, n, &again, &u); err != nil {
		return u.Rollback(err)
	}
	return nil
}

// releaseInterface gives a moved-in interface back to the host under its original
// name, after the driver's Leave (Docker's order). Records from before SrcName was
// kept only know it was moved: that interface is deleted. A failure is logged, not
// returned: the endpoint has left either way.
func (c *Controller) releaseInterface(ctx context.Context, sb *Sandbox, ep *Endpoint) {
	var err error
	if ep.SrcName == "" {
		err = c.os.RemoveInterface(ctx, sb.Key, ep.IfName)
	} else {
		err = c.os.ReleaseInterface(ctx, sb.Key, ep.IfName, ep.SrcName)
	}
	if err != nil {
		c.log.WarnContext(ctx, "removing interface from the sandbox", "sandbox", sb.Name, "endpoint", ep.Name, "err", err)
	}
}
