package cnm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
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
	return c.join(ctx, &sb, &n, ep)
}

// Connect creates an endpoint on network netRef and joins it to sandbox sbRef, as
// `docker network connect` does. The endpoint is named after the sandbox unless
// spec.Name is set.
func (c *Controller) Connect(ctx context.Context, netRef, sbRef string, spec EndpointSpec) (Endpoint, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
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
	c.mu.RLock()
	defer c.mu.RUnlock()
	return *ep, nil
}

// Disconnect makes sandbox sbRef leave network netRef and deletes its endpoint.
func (c *Controller) Disconnect(ctx context.Context, netRef, sbRef string) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	sb, n, err := c.sandboxAndNetwork(ctx, sbRef, netRef)
	if err != nil {
		return err
	}
	ep := c.endpointOf(sb.ID, n.ID)
	if ep == nil {
		return errdefs.Forbidden("sandbox %s is not connected to network %s", sb.Name, n.Name)
	}
	return c.disconnect(ctx, &sb, ep)
}

func (c *Controller) disconnect(ctx context.Context, sb *Sandbox, ep *Endpoint) error {
	n, err := c.Network(ctx, ep.NetworkID)
	if err != nil {
		return err
	}
	// The leave is not persisted on its own: the delete below is the one durable write.
	// A crash in between restores the endpoint as joined and re-creates its interface.
	if err := c.leave(ctx, sb, &n, ep, false); err != nil {
		return err
	}
	return c.deleteEndpoint(ctx, &n, ep)
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
	c.mu.Lock()
	ep.Transient = false // left explicitly: the caller manages its lifetime now
	c.mu.Unlock()
	return c.leave(ctx, &sb, &n, ep, true)
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
	hostNet := n.Driver == "host"
	if hostNet != sb.HostNetwork {
		return errdefs.InvalidArgument("sandbox %s: a sandbox sharing the host network stack cannot be connected to other networks, and other sandboxes cannot join network %s", sb.Name, n.Name)
	}
	if n.Driver == "null" && len(c.sandboxEndpoints(sb.ID)) > 0 || c.hasNullEndpoint(sb.ID) {
		return errdefs.InvalidArgument("sandbox %s: network none cannot be combined with other networks", sb.Name)
	}
	return nil
}

func (c *Controller) hasNullEndpoint(sid string) bool {
	for _, ep := range c.sandboxEndpoints(sid) {
		if n := c.networkByID(ep.NetworkID); n != nil && n.Driver == "null" {
			return true
		}
	}
	return false
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
	eps := append(c.sandboxEndpoints(sb.ID), &joined)
	if err := c.commitJoin(ctx, sb, eps, &joined, &u); err != nil {
		return u.Rollback(err)
	}
	c.mu.Lock()
	c.replaceEndpointLocked(ep, joined)
	c.sandboxes[sb.ID].GatewayEndpoint, c.sandboxes[sb.ID].Published = sb.GatewayEndpoint, sb.Published
	c.mu.Unlock()
	c.refreshNaming(ctx, sb)
	return nil
}

// refreshNaming updates what names depend on after a join or leave: the embedded DNS
// (records and listener) and the sandbox's files.
func (c *Controller) refreshNaming(ctx context.Context, sb *Sandbox) {
	if err := c.syncDNS(ctx, sb); err != nil {
		c.log.ErrorContext(ctx, "updating embedded DNS", "sandbox", sb.Name, "err", err)
	}
	c.refreshFiles(ctx, sb)
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
		u.Push(func() error { return c.releaseInterface(context.WithoutCancel(ctx), sb, ep) })
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
	return ifc
}

// commitJoin moves the default gateway if needed and persists the endpoint and sandbox.
func (c *Controller) commitJoin(ctx context.Context, sb *Sandbox, eps []*Endpoint, ep *Endpoint, u *undo.Stack) error {
	old := sb.GatewayEndpoint
	if err := c.switchGateway(ctx, sb, eps); err != nil {
		return err
	}
	before := c.sandboxEndpoints(sb.ID)
	u.Push(func() error { return c.restoreGateway(context.WithoutCancel(ctx), sb, old, before) })
	return c.store.Update(ctx, func(tx *store.Tx) error {
		if err := tx.Put(kindEndpoint, ep.ID, ep); err != nil {
			return err
		}
		return tx.Put(kindSandbox, sb.ID, sb)
	})
}

func (c *Controller) restoreGateway(ctx context.Context, sb *Sandbox, old string, eps []*Endpoint) error {
	err := c.switchGateway(ctx, sb, eps)
	sb.GatewayEndpoint = old
	return err
}

func (c *Controller) leave(ctx context.Context, sb *Sandbox, n *Network, ep *Endpoint, persist bool) error {
	var rest []*Endpoint
	for _, o := range c.sandboxEndpoints(sb.ID) {
		if o.ID != ep.ID {
			rest = append(rest, o)
		}
	}
	if err := c.switchGateway(ctx, sb, rest); err != nil {
		return err
	}
	if err := c.detach(ctx, sb, n, ep); err != nil {
		return err
	}
	left := ep.unjoined()
	if persist {
		if err := c.store.Update(ctx, func(tx *store.Tx) error {
			if err := tx.Put(kindEndpoint, ep.ID, &left); err != nil {
				return err
			}
			return tx.Put(kindSandbox, sb.ID, sb)
		}); err != nil {
			return err
		}
	}
	c.mu.Lock()
	c.replaceEndpointLocked(ep, left)
	c.sandboxes[sb.ID].GatewayEndpoint, c.sandboxes[sb.ID].Published = sb.GatewayEndpoint, sb.Published
	c.mu.Unlock()
	if c.dns != nil {
		c.dns.Remove(ep.ID)
	}
	c.refreshNaming(ctx, sb)
	return nil
}

// unjoined returns a copy of ep with the join state cleared.
func (ep *Endpoint) unjoined() Endpoint {
	e := *ep
	e.SandboxID, e.IfName, e.Moved, e.SrcName, e.Routes = "", "", false, "", nil
	e.Gateway4, e.Gateway6, e.DisableGateway = netip.Addr{}, netip.Addr{}, false
	return e
}

func (c *Controller) detach(ctx context.Context, sb *Sandbox, n *Network, ep *Endpoint) error {
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return err
	}
	if err := drv.Leave(ctx, n.ID, ep.ID); err != nil {
		return err
	}
	if ep.Moved {
		return c.releaseInterface(ctx, sb, ep)
	}
	return nil
}

// releaseInterface gives a moved-in interface back to the host under its original
// name, after the driver's Leave (Docker's order). Records from before SrcName was
// kept only know it was moved: that interface is deleted. A failure is logged, not
// returned: the endpoint has left either way and the interface is gone from the
// sandbox (deleted when it could not be handed back).
func (c *Controller) releaseInterface(ctx context.Context, sb *Sandbox, ep *Endpoint) error {
	if ep.SrcName == "" {
		return c.os.RemoveInterface(ctx, sb.Key, ep.IfName)
	}
	if err := c.os.ReleaseInterface(ctx, sb.Key, ep.IfName, ep.SrcName); err != nil {
		c.log.WarnContext(ctx, "returning interface to the host", "sandbox", sb.Name, "endpoint", ep.Name, "err", err)
	}
	return nil
}

func (c *Controller) refreshFiles(ctx context.Context, sb *Sandbox) {
	if err := c.writeFiles(sb); err != nil {
		c.log.WarnContext(ctx, "updating sandbox files", "sandbox", sb.Name, "err", err)
	}
}

// nextIfName returns <prefix><N> with the lowest N unused in the sandbox.
func (c *Controller) nextIfName(sid string, n *Network) string {
	prefix := n.Options["com.docker.network.container_iface_prefix"]
	if prefix == "" {
		prefix = "eth"
	}
	return c.nextIfNameWithPrefix(sid, prefix)
}

// nextIfNameWithPrefix returns <prefix><N> with the lowest N unused in the sandbox.
func (c *Controller) nextIfNameWithPrefix(sid, prefix string) string {
	used := map[int]bool{}
	for _, ep := range c.sandboxEndpoints(sid) {
		used[ifIndex(ep.IfName)] = ep.IfName != ""
	}
	i := 0
	for used[i] {
		i++
	}
	return fmt.Sprintf("%s%d", prefix, i)
}

// gatewayCandidate is what the gateway order looks at.
type gatewayCandidate struct {
	ep       *Endpoint
	internal bool
	netName  string
}

// orderGateway sorts candidates: explicit priority (higher first), then non-internal,
// then has-gateway, then network name.
func orderGateway(cs []gatewayCandidate) {
	sort.SliceStable(cs, func(i, j int) bool {
		a, b := cs[i], cs[j]
		if a.ep.Priority != b.ep.Priority {
			return a.ep.Priority > b.ep.Priority
		}
		if a.internal != b.internal {
			return !a.internal
		}
		if a.ep.hasGateway() != b.ep.hasGateway() {
			return a.ep.hasGateway()
		}
		return a.netName < b.netName
	})
}

// selectGateway returns the endpoint that should provide the default route, or nil.
func (c *Controller) selectGateway(eps []*Endpoint) *Endpoint {
	var cs []gatewayCandidate
	for _, ep := range eps {
		n := c.networkByID(ep.NetworkID)
		if n == nil {
			continue
		}
		cs = append(cs, gatewayCandidate{ep: ep, internal: n.Internal, netName: n.Name})
	}
	orderGateway(cs)
	if len(cs) == 0 || !cs[0].ep.hasGateway() {
		return nil
	}
	return cs[0].ep
}

// switchGateway points the sandbox's default route at the best of eps and moves
// external connectivity along with it. It updates sb.GatewayEndpoint.
func (c *Controller) switchGateway(ctx context.Context, sb *Sandbox, eps []*Endpoint) error {
	best := c.selectGateway(eps)
	bestID := ""
	if best != nil {
		bestID = best.ID
	}
	if bestID == sb.GatewayEndpoint {
		return nil
	}
	route := netns.DefaultRoute{}
	if best != nil {
		route = netns.DefaultRoute{IfName: best.IfName, GW4: best.Gateway4, GW6: best.Gateway6}
	}
	if !sb.HostNetwork {
		if err := c.os.SetDefaultRoute(ctx, sb.Key, route); err != nil {
			return err
		}
	}
	if err := c.externalConnectivity(ctx, sb.GatewayEndpoint, false); err != nil {
		return err
	}
	sb.Published = nil
	if err := c.externalConnectivity(ctx, bestID, true); err != nil {
		return err
	}
	sb.GatewayEndpoint = bestID
	c.recordPublished(ctx, sb, best)
	return nil
}

// recordPublished keeps the port bindings the gateway endpoint's driver made.
func (c *Controller) recordPublished(ctx context.Context, sb *Sandbox, gw *Endpoint) {
	if gw == nil || len(sb.Ports) == 0 {
		return
	}
	n := c.networkByID(gw.NetworkID)
	if n == nil {
		return
	}
	if drv, err := c.driver(ctx, n.Driver); err == nil {
		if pp, ok := drv.(driver.PortPublisher); ok {
			sb.Published = pp.PublishedPorts(gw.ID)
		}
	}
}

// checkPorts refuses to join a sandbox with published ports to a network whose driver
// cannot publish them (macvlan, ipvlan, plugins); host and none ignore ports, as in Docker.
func (c *Controller) checkPorts(ctx context.Context, sb *Sandbox, n *Network) error {
	if len(sb.Ports) == 0 || n.Internal || n.Driver == "host" || n.Driver == "null" {
		return nil
	}
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return err
	}
	if _, ok := drv.(driver.PortPublisher); !ok {
		return errdefs.Forbidden("network %s (driver %s) does not publish ports: reach sandbox %s at its own address, or publish on a bridge network", n.Name, n.Driver, sb.Name)
	}
	return nil
}

func (c *Controller) externalConnectivity(ctx context.Context, eid string, program bool) error {
	if eid == "" {
		return nil
	}
	c.mu.RLock()
	ep, ok := c.endpoints[eid]
	c.mu.RUnlock()
	if !ok {
		return nil
	}
	n, err := c.Network(ctx, ep.NetworkID)
	if err != nil {
		return err
	}
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return err
	}
	if program {
		return drv.ProgramExternalConnectivity(ctx, n.ID, eid)
	}
	return drv.RevokeExternalConnectivity(ctx, n.ID, eid)
}
