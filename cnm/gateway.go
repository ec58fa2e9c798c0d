package cnm

import (
	"context"
	"sort"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/netns"
)

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

// gatewayPlan is a change of a sandbox's default gateway, decided without touching
// anything (planGateway) and carried out by applyGateway.
type gatewayPlan struct {
	oldID, newID string             // gateway endpoint IDs before and after; "" = none
	old, new     *Endpoint          // nil when none (old: or no longer known)
	route        netns.DefaultRoute // the new default route; zero = none
	oldRoute     netns.DefaultRoute // the route old set, put back by the undo
	setRoute     bool               // false in the host's namespace: its routes are not pier's
}

// planGateway decides which of eps should be sb's gateway endpoint now.
func (c *Controller) planGateway(sb *Sandbox, eps []*Endpoint) gatewayPlan {
	p := gatewayPlan{oldID: sb.GatewayEndpoint, new: c.selectGateway(eps), setRoute: !sb.HostNetwork}
	if p.oldID != "" {
		c.mu.RLock()
		p.old = c.endpoints[p.oldID]
		c.mu.RUnlock()
	}
	if p.new != nil {
		p.newID = p.new.ID
	}
	p.route, p.oldRoute = defaultRoute(p.new), defaultRoute(p.old)
	return p
}

func defaultRoute(gw *Endpoint) netns.DefaultRoute {
	if gw == nil {
		return netns.DefaultRoute{}
	}
	return netns.DefaultRoute{IfName: gw.IfName, GW4: gw.Gateway4, GW6: gw.Gateway6}
}

// applyGateway carries out p on sb, the caller's copy of the sandbox: the default
// route, then the old gateway's external connectivity revoked and the new one's
// programmed; sb.GatewayEndpoint and sb.Published follow. On failure what it did is
// undone; on success it returns the undo that puts kernel state and sb back. The old
// gateway's ports are programmed afresh by that undo: fixed host ports come back the
// same, ephemeral ones may not (the driver contract has no way to keep them).
func (c *Controller) applyGateway(ctx context.Context, sb *Sandbox, p gatewayPlan) (func() error, error) {
	if p.newID == p.oldID {
		return func() error { return nil }, nil
	}
	bg := context.WithoutCancel(ctx)
	var u undo.Stack
	if p.setRoute {
		if err := c.os.SetDefaultRoute(ctx, sb.Key, p.route); err != nil {
			return nil, err
		}
		u.Push(func() error { return c.os.SetDefaultRoute(bg, sb.Key, p.oldRoute) })
	}
	if err := c.externalConnectivity(ctx, p.old, false); err != nil {
		return nil, u.Rollback(err)
	}
	oldPublished := sb.Published
	u.Push(func() error {
		err := c.externalConnectivity(bg, p.old, true)
		sb.Published = oldPublished
		c.recordPublished(bg, sb, p.old)
		return err
	})
	sb.Published = nil
	if err := c.externalConnectivity(ctx, p.new, true); err != nil {
		return nil, u.Rollback(err)
	}
	u.Push(func() error { return c.externalConnectivity(bg, p.new, false) })
	u.Push(func() error { sb.GatewayEndpoint = p.oldID; return nil })
	sb.GatewayEndpoint = p.newID
	c.recordPublished(ctx, sb, p.new)
	return u.Undo, nil
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
// cannot publish them (macvlan, ipvlan, plugins); networks without interfaces (host,
// none) ignore ports, as in Docker. Overlays do not publish either, but in cluster
// mode the gateway bridge that gives their sandboxes the way out publishes the ports,
// as docker_gwbridge does.
func (c *Controller) checkPorts(ctx context.Context, sb *Sandbox, n *Network) error {
	if len(sb.Ports) == 0 || n.Internal || c.capability(n).NoInterface || n.global() && c.cluster != nil {
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

// externalConnectivity programs or revokes ep's external connectivity (nil: nothing).
func (c *Controller) externalConnectivity(ctx context.Context, ep *Endpoint, program bool) error {
	if ep == nil {
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
		return drv.ProgramExternalConnectivity(ctx, n.ID, ep.ID)
	}
	return drv.RevokeExternalConnectivity(ctx, n.ID, ep.ID)
}
