package cnm

import (
	"context"
)

// GatewayBridge is the local network that gives sandboxes whose only networks are
// global (overlays) their way out, as Docker's docker_gwbridge: a bridge with
// inter-sandbox traffic off and outbound masquerading. It exists in cluster mode only
// (EnsurePredefined creates it) and is joined and left automatically.
const GatewayBridge = "pier_gwbridge"

func gatewayBridgeSpec() NetworkSpec {
	return NetworkSpec{Name: GatewayBridge, Driver: "bridge", Predefined: true, Options: map[string]string{
		"com.docker.network.bridge.name":                 GatewayBridge,
		"com.docker.network.bridge.enable_icc":           "false",
		"com.docker.network.bridge.enable_ip_masquerade": "true",
	}}
}

// syncGatewayBridge connects sandbox sid to the gateway bridge when it is on a
// non-internal global network and nothing else gives it a default gateway, and
// disconnects it when that is no longer so. Called with opMu held after a join or
// leave; a failure is logged (the sandbox keeps its overlay connectivity).
func (c *Controller) syncGatewayBridge(ctx context.Context, sid string) {
	if c.cluster == nil {
		return
	}
	c.mu.RLock()
	sbp := c.sandboxes[sid]
	c.mu.RUnlock()
	if sbp == nil || sbp.HostNetwork {
		return
	}
	var gwEP *Endpoint
	needs, hasOther := false, false
	for _, ep := range c.sandboxEndpoints(sid) {
		n := c.networkByID(ep.NetworkID)
		switch {
		case n == nil:
		case n.Predefined && n.Name == GatewayBridge:
			gwEP = ep
		case n.global() && !n.Internal:
			needs = true
		case ep.hasGateway():
			hasOther = true
		}
	}
	c.mu.RLock()
	sb := *sbp
	c.mu.RUnlock()
	var err error
	switch want := needs && !hasOther; {
	case want && gwEP == nil:
		err = c.joinGatewayBridge(ctx, &sb)
	case !want && gwEP != nil:
		err = c.disconnect(ctx, &sb, gwEP)
	}
	if err != nil {
		c.log.ErrorContext(ctx, "updating the sandbox's gateway bridge endpoint", "sandbox", sb.Name, "err", err)
	}
}

func (c *Controller) joinGatewayBridge(ctx context.Context, sb *Sandbox) error {
	n, err := c.Network(ctx, GatewayBridge)
	if err != nil {
		return err
	}
	ep, err := c.createEndpoint(ctx, &n, EndpointSpec{Name: "gateway_" + sb.ID[:12]}, true)
	if err != nil {
		return err
	}
	if err := c.join(ctx, sb, &n, ep); err != nil {
		c.forgetEndpoint(context.WithoutCancel(ctx), &n, ep)
		return err
	}
	return nil
}
