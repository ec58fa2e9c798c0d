package cnm

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/store"
)

// The routing mesh (ingress publishing), cluster mode: every node has a router on the
// ingress overlay (an address of that network on the network's bridge in the host
// namespace, published as an endpoint record), accepts the services' ingress ports on its own
// addresses and DNATs them to a serving task — a local one when it has one, else any
// — without SNAT: the task sees the client. Each task on the ingress network sends its
// replies to mesh connections back through the router that forwarded them (Mesh's
// SetReturn), so the client sees one connection.

// IngressNetworkName is the name of the routing mesh's network (Docker's).
const IngressNetworkName = "ingress"

const kindRouter = "routers"

// Mesh programs the routing mesh on this node (stack wires package ingress).
type Mesh interface {
	// Publish makes this node accept a service's ingress ports on its addresses and
	// forward them to backends (addresses on the ingress network); it replaces what
	// was published for s.ID.
	Publish(ctx context.Context, s MeshService) error
	// Unpublish stops publishing service id.
	Unpublish(ctx context.Context, id string) error
	// SetReturn makes the task sandbox at key send replies to mesh connections that
	// arrived on iface back through the router that forwarded them.
	SetReturn(ctx context.Context, key, iface string, routers []MeshRouter) error
	// ForgetReturn drops what SetReturn keeps for a sandbox that is gone.
	ForgetReturn(key string)
	// SetRouter tells the mesh this node's router MAC on the ingress network (nil:
	// none): frames only bridged through that network must not be tracked here.
	SetRouter(ctx context.Context, mac net.HardwareAddr) error
}

// MeshService is what one node publishes for a service.
type MeshService struct {
	ID       string
	Ports    []PublishPort // ingress mode only
	Backends []netip.Addr
	SNAT     bool
}

// MeshRouter is a node's router on the ingress network.
type MeshRouter struct {
	MAC  net.HardwareAddr
	Addr netip.Addr
}

// Router is this node's router record (stored, so its address survives restarts).
type Router struct {
	ID        string // endpoint ID
	NetworkID string
	Addr4     netip.Prefix
	MAC       string
	attached  bool // its interface exists, this run
}

func (r *Router) id() string   { return r.NetworkID }
func (r *Router) name() string { return r.NetworkID }

// ingressNetwork returns the mesh's network, nil when there is none.
func (c *Controller) ingressNetwork() *Network {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, n := range c.networks {
		if n.Ingress {
			return n
		}
	}
	return nil
}

// withIngress adds the ingress network to the networks of a service spec that
// publishes in ingress mode, creating that network on first use. Called without
// opMu (CreateNetwork takes it).
func (c *Controller) withIngress(ctx context.Context, spec ServiceSpec) (ServiceSpec, error) {
	if !slices.ContainsFunc(spec.Publish, func(p PublishPort) bool { return p.Mode == PublishIngress }) {
		return spec, nil
	}
	switch {
	case spec.Mode == ModeDNSRR:
		return spec, errdefs.InvalidArgument("port published with ingress mode can't be used with dnsrr mode")
	case c.cluster == nil:
		return spec, errdefs.InvalidArgument("publishing in ingress mode (the routing mesh) needs cluster mode; on a single host publish with mode=host")
	case c.mesh == nil:
		return spec, errdefs.Unavailable("this controller has no routing mesh: publish with mode=host")
	}
	n := c.ingressNetwork()
	if n == nil {
		created, err := c.CreateNetwork(ctx, NetworkSpec{Name: IngressNetworkName, Driver: "overlay", Ingress: true})
		switch {
		case err == nil:
			n = &created
		case errdefs.Is(err, errdefs.KindConflict):
			// Created by another node (or another request) meanwhile: the watch brings it.
			if n = c.awaitIngressNetwork(ctx); n == nil {
				return spec, fmt.Errorf("the ingress network: %w", err)
			}
		default:
			return spec, fmt.Errorf("creating the ingress network: %w", err)
		}
	}
	spec.Networks = append(slices.Clone(spec.Networks), n.ID)
	return spec, nil
}

func (c *Controller) awaitIngressNetwork(ctx context.Context) *Network {
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if n := c.ingressNetwork(); n != nil {
			return n
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

// meshNeeded: some service publishes on the mesh and this node can take part.
func (c *Controller) meshNeeded() bool {
	if c.mesh == nil || c.cluster == nil {
		return false
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, s := range c.services {
		if len(s.ingressPorts()) > 0 {
			return true
		}
	}
	return false
}

// ensureRouter gives this node its router on the ingress network (opMu held): an
// address from the network's (global) IPAM, an interface in the host namespace on
// the network's local bridge, and an endpoint record that makes other nodes forward
// its MAC here. Idempotent; a restart re-attaches the stored router.
func (c *Controller) ensureRouter(ctx context.Context, n *Network) (*Router, error) {
	if r := c.router; r != nil && r.NetworkID == n.ID && r.attached {
		return r, nil
	}
	d, err := c.driver(ctx, n.Driver)
	if err != nil {
		return nil, err
	}
	var u undo.Stack
	r := c.router
	if r == nil || r.NetworkID != n.ID {
		addr, release, err := c.requestAddr(ctx, n, n.IPv4, netip.Addr{}, nil)
		if err != nil {
			return nil, fmt.Errorf("an address for this node's ingress router: %w", err)
		}
		u.Push(release)
		r = &Router{ID: NewID(), NetworkID: n.ID, Addr4: addr}
	} else if _, _, err := c.requestAddr(ctx, n, n.IPv4, r.Addr4.Addr(), nil); err != nil && !errdefs.Is(err, errdefs.KindConflict) {
		c.log.WarnContext(ctx, "re-reserving the ingress router's address", "addr", r.Addr4, "err", err)
	}
	rd, ok := d.(driver.Router)
	if !ok {
		return nil, u.Rollback(errdefs.NotImplemented("driver %s cannot make this host a router on network %s", n.Driver, n.Name))
	}
	mac, err := rd.AttachRouter(ctx, n.ID, r.ID, r.Addr4)
	if err != nil {
		return nil, u.Rollback(fmt.Errorf("attaching the ingress router: %w", err))
	}
	u.Push(func() error { return rd.DetachRouter(context.WithoutCancel(ctx), n.ID, r.ID) })
	r.MAC = mac.String()
	if err := c.mesh.SetRouter(ctx, mac); err != nil {
		return nil, u.Rollback(fmt.Errorf("the ingress router's conntrack exemption: %w", err))
	}
	if err := c.store.Put(ctx, kindRouter, r.NetworkID, r); err != nil {
		return nil, u.Rollback(err)
	}
	if err := c.cluster.PublishEndpoint(ctx, c.routerView(r)); err != nil {
		return nil, u.Rollback(fmt.Errorf("publishing the ingress router: %w", err))
	}
	r.attached = true
	c.router = r
	c.log.InfoContext(ctx, "ingress router attached", "network", n.Name, "addr", r.Addr4, "mac", r.MAC)
	c.syncReturns(ctx)
	return r, nil
}

func (c *Controller) routerView(r *Router) RemoteEndpoint {
	return RemoteEndpoint{ID: r.ID, Name: "ingress-endpoint-" + c.self.Name, NetworkID: r.NetworkID, Node: c.self,
		Addr4: r.Addr4, MAC: r.MAC, Router: true}
}

// loadRouter restores this node's router record (re-attached by syncMesh).
func (c *Controller) loadRouter(ctx context.Context) error {
	rs, err := store.List[Router](ctx, c.store, kindRouter)
	if err != nil || len(rs) == 0 {
		return err
	}
	c.router = &rs[0]
	return nil
}

// syncMesh brings this node's part of the mesh in line (opMu held): its router when
// any service publishes on the mesh, and each such service's published ports.
func (c *Controller) syncMesh(ctx context.Context) {
	if !c.meshNeeded() {
		c.dropRouter(ctx)
		return
	}
	n := c.ingressNetwork()
	if n == nil {
		return // the ingress network's record comes with the watch
	}
	if _, err := c.ensureRouter(ctx, n); err != nil {
		c.log.ErrorContext(ctx, "the ingress router", "err", err)
		return
	}
	c.mu.RLock()
	svcs := make([]*Service, 0, len(c.services))
	for _, s := range c.services {
		svcs = append(svcs, s)
	}
	c.mu.RUnlock()
	for _, s := range svcs {
		c.publishMesh(ctx, s)
	}
}

// publishMesh programs one service's ingress ports on this node with its current
// backends: the serving tasks here if there are any (no extra hop), else those of
// every node.
func (c *Controller) publishMesh(ctx context.Context, svc *Service) {
	ports := svc.ingressPorts()
	n := c.ingressNetwork()
	if c.mesh == nil || n == nil || c.router == nil || !c.router.attached {
		return
	}
	if len(ports) == 0 {
		if svc.vipOn(n.ID).NetworkID != "" { // it published on the mesh before an update
			if err := c.mesh.Unpublish(ctx, svc.ID); err != nil {
				c.log.WarnContext(ctx, "unpublishing a service from the routing mesh", "service", svc.Name, "err", err)
			}
		}
		return
	}
	local, all := c.meshBackends(svc.ID, n.ID)
	backends := local
	if len(backends) == 0 {
		backends = all
	}
	if err := c.mesh.Publish(ctx, MeshService{ID: svc.ID, Ports: ports, Backends: backends, SNAT: svc.IngressSNAT}); err != nil {
		c.log.ErrorContext(ctx, "publishing a service on the routing mesh", "service", svc.Name, "err", err)
	}
}

// meshBackends are the ingress-network addresses of service id's serving tasks on
// this node and on every node.
func (c *Controller) meshBackends(id, nid string) (local, all []netip.Addr) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for ep := range c.epIndex.byNetwork[nid] {
		if sb := c.sandboxes[ep.SandboxID]; sb != nil && sb.Service == id && sb.serving() && ep.Addr4.IsValid() {
			local = append(local, ep.Addr4.Addr())
		}
	}
	all = slices.Clone(local)
	for _, ep := range c.remote[nid] {
		if ep.Service == id && !ep.Starting && !ep.Draining && ep.SandboxID != "" && ep.Addr4.IsValid() {
			all = append(all, ep.Addr4.Addr())
		}
	}
	slices.SortFunc(local, netip.Addr.Compare)
	slices.SortFunc(all, netip.Addr.Compare)
	return local, all
}

// meshRouters are the routers of every node on network nid, this node's included.
func (c *Controller) meshRouters(nid string) []MeshRouter {
	var out []MeshRouter
	if r := c.router; r != nil && r.attached && r.NetworkID == nid {
		if mac, err := net.ParseMAC(r.MAC); err == nil {
			out = append(out, MeshRouter{MAC: mac, Addr: r.Addr4.Addr()})
		}
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, ep := range c.remote[nid] {
		if !ep.Router || !ep.Addr4.IsValid() {
			continue
		}
		if mac, err := net.ParseMAC(ep.MAC); err == nil {
			out = append(out, MeshRouter{MAC: mac, Addr: ep.Addr4.Addr()})
		}
	}
	slices.SortFunc(out, func(a, b MeshRouter) int { return a.Addr.Compare(b.Addr) })
	return out
}

// syncReturns gives every local sandbox on the ingress network the current routers.
func (c *Controller) syncReturns(ctx context.Context) {
	n := c.ingressNetwork()
	if c.mesh == nil || n == nil {
		return
	}
	routers := c.meshRouters(n.ID)
	for _, sb := range c.joinedSandboxes(n.ID) {
		c.setReturn(ctx, sb, n.ID, routers)
	}
}

// setReturn programs one sandbox's return routes for its endpoint on network nid.
func (c *Controller) setReturn(ctx context.Context, sb *Sandbox, nid string, routers []MeshRouter) {
	for _, ep := range c.sandboxEndpoints(sb.ID) {
		if ep.NetworkID != nid || ep.IfName == "" {
			continue
		}
		if err := c.mesh.SetReturn(ctx, sb.Key, ep.IfName, routers); err != nil {
			c.log.ErrorContext(ctx, "routing a task's mesh replies back", "sandbox", sb.Name, "err", err)
		}
	}
}

// meshJoined follows a join or leave of sb: a sandbox on the ingress network gets its
// return routes.
func (c *Controller) meshJoined(ctx context.Context, sb *Sandbox) {
	n := c.ingressNetwork()
	if c.mesh == nil || n == nil || sb.HostNetwork {
		return
	}
	c.setReturn(ctx, sb, n.ID, c.meshRouters(n.ID))
}

// remoteRouterChanged follows another node's router coming or going.
func (c *Controller) remoteRouterChanged(ctx context.Context, ep RemoteEndpoint) {
	if !ep.Router {
		return
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	c.syncReturns(ctx)
}

// dropRouter withdraws this node's router once no service publishes on the mesh
// (opMu held): its record everywhere, its interface, its address. Then the ingress
// network can be removed.
func (c *Controller) dropRouter(ctx context.Context) {
	r := c.router
	if r == nil || c.cluster == nil || c.mesh == nil {
		return
	}
	if err := c.cluster.WithdrawEndpoint(ctx, r.NetworkID, r.ID); err != nil {
		c.log.WarnContext(ctx, "withdrawing the ingress router's record", "err", err)
	}
	if n := c.networkByID(r.NetworkID); n != nil {
		if d, err := c.driver(ctx, n.Driver); err == nil {
			if rd, ok := d.(driver.Router); ok {
				if err := rd.DetachRouter(ctx, n.ID, r.ID); err != nil {
					c.log.WarnContext(ctx, "removing the ingress router's address", "err", err)
				}
			}
		}
		c.releaseVIP(ctx, n, r.Addr4)
	}
	if err := c.store.Delete(ctx, kindRouter, r.NetworkID); err != nil {
		c.log.WarnContext(ctx, "forgetting the ingress router", "err", err)
	}
	c.router = nil
	if err := c.mesh.SetRouter(ctx, nil); err != nil {
		c.log.WarnContext(ctx, "removing the ingress router's conntrack exemption", "err", err)
	}
	c.log.InfoContext(ctx, "ingress router removed: no service publishes on the mesh")
}
