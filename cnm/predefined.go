package cnm

import (
	"context"

	"github.com/piernet/pier/errdefs"
)

// EnsurePredefined creates the predefined networks Docker has — "none" (null), "host"
// (host) and, unless withBridge is false, "bridge" (driver bridge, with
// Config.DefaultBridgeOptions) — when missing.
func (c *Controller) EnsurePredefined(ctx context.Context, withBridge bool) error {
	specs := []NetworkSpec{
		{Name: "none", Driver: "null", Predefined: true},
		{Name: "host", Driver: "host", Predefined: true},
	}
	if withBridge {
		specs = append(specs, NetworkSpec{Name: "bridge", Driver: "bridge", Predefined: true,
			Options: c.bridgeOpts})
	}
	if c.cluster != nil {
		specs = append(specs, gatewayBridgeSpec())
	}
	for _, spec := range specs {
		if _, err := c.Network(ctx, spec.Name); err == nil {
			continue
		}
		if _, err := c.CreateNetwork(ctx, spec); err != nil && !errdefs.Is(err, errdefs.KindConflict) {
			return err
		}
	}
	return nil
}
