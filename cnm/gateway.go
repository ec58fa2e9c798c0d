package cnm

import (
	"context"
	"sort"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/netns"
)

func (c *Controller) restoreGateway(ctx context.Context, sb *Sandbox, old string, eps []*Endpoint) error {
	err := c.switchGateway(ctx, sb, eps)
	sb.GatewayEndpoint = old
	return err
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
