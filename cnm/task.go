package cnm

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/piernet/pier/errdefs"
)

// taskService resolves the service a new sandbox is to serve (nil: none).
func (c *Controller) taskService(spec SandboxSpec) (*Service, error) {
	if spec.Service == "" {
		return nil, nil
	}
	if spec.HostNetwork {
		return nil, errdefs.InvalidArgument("a task cannot use the host's network namespace")
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	svc, err := lookup(c.services, "service", spec.Service)
	if err != nil {
		return nil, err
	}
	return svc, nil
}

// joinServiceNetworks makes a new sandbox a task: it joins each of the service's
// networks (through Connect: a global network's cluster record is written outside
// opMu). On failure the sandbox is removed again.
func (c *Controller) joinServiceNetworks(ctx context.Context, sb Sandbox, svc *Service) (Sandbox, error) {
	for _, v := range svc.VIPs {
		if _, err := c.Connect(ctx, v.NetworkID, sb.ID, EndpointSpec{}); err != nil {
			derr := c.DeleteSandbox(context.WithoutCancel(ctx), sb.ID, true)
			return Sandbox{}, errors.Join(fmt.Errorf("joining the networks of service %s: %w", svc.Name, err), derr)
		}
	}
	return c.Sandbox(ctx, sb.ID)
}

// drainTask begins the removal of a task: it leaves every selection (the VIP backends
// of every sandbox, the DNS answers of its service), then keeps serving the
// connections it has until they end or the service's grace period runs out. A
// sandbox that is not a serving task returns at once. Without force, a task whose
// removal would be refused anyway (it has endpoints) is not drained.
func (c *Controller) drainTask(ctx context.Context, ref string, force bool) error {
	sb, svc, global, err := c.withdrawTask(ctx, ref, force)
	if err != nil || svc == nil {
		return err
	}
	start := time.Now()
	for _, eid := range global {
		missing, err := c.cluster.WaitWithdrawn(ctx, eid, withdrawTimeout)
		if err != nil {
			return err
		}
		if len(missing) > 0 {
			c.log.WarnContext(ctx, "nodes did not confirm a task's withdrawal in time", "sandbox", sb.Name, "nodes", missing)
		}
	}
	c.log.DebugContext(ctx, "task withdrawn everywhere", "sandbox", sb.Name, "after", time.Since(start))
	deadline := time.NewTimer(svc.StopGrace)
	defer deadline.Stop()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := c.lb.Established(ctx, sb.Key)
		if err != nil || n == 0 {
			c.log.InfoContext(ctx, "task drained", "sandbox", sb.Name, "service", svc.Name, "after", time.Since(start), "err", err)
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			c.log.InfoContext(ctx, "task grace period over", "sandbox", sb.Name, "service", svc.Name, "connections", n)
			return nil
		case <-tick.C:
		}
	}
}

// withdrawTimeout bounds the wait for other nodes to confirm a withdrawal: a node
// that has not within it is about to be declared down (the default node TTL is 3 s).
const withdrawTimeout = 5 * time.Second

// withdrawTask marks a task draining and reprograms every sandbox and name that
// chose it: here at once, on other nodes through its endpoint records (whose IDs it
// returns, to wait for their acknowledgements). It returns the service only when the
// task was serving.
func (c *Controller) withdrawTask(ctx context.Context, ref string, force bool) (Sandbox, *Service, []string, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	sb, err := c.Sandbox(ctx, ref)
	if err != nil {
		return Sandbox{}, nil, nil, err
	}
	svc := c.serviceOf(&sb)
	if svc == nil || sb.Draining || c.lb == nil && svc.Mode == ModeVIP {
		return sb, nil, nil, nil
	}
	if !force && len(c.sandboxEndpoints(sb.ID)) > 0 {
		return sb, nil, nil, nil // refused by DeleteSandbox
	}
	sb.Draining = true
	if err := c.store.Put(ctx, kindSandbox, sb.ID, &sb); err != nil {
		return sb, nil, nil, err
	}
	c.mu.Lock()
	c.sandboxes[sb.ID].Draining = true
	live := c.sandboxes[sb.ID]
	c.mu.Unlock()
	if err := c.syncDNS(ctx, live); err != nil {
		c.log.WarnContext(ctx, "withdrawing a task's names", "sandbox", sb.Name, "err", err)
	}
	for _, v := range svc.VIPs {
		c.syncServiceLB(ctx, svc, v.NetworkID)
	}
	global := c.publishTask(ctx, live, true)
	if c.lb == nil {
		return sb, nil, nil, nil
	}
	return sb, svc, global, nil
}

// publishTask re-publishes a task's endpoints on global networks after its state
// changed (ready, or draining: without the service's names). For a withdrawal it
// acknowledges for this node, whose own tables were just reprogrammed. It returns the
// endpoint IDs.
func (c *Controller) publishTask(ctx context.Context, sb *Sandbox, withdrawal bool) []string {
	if c.cluster == nil {
		return nil
	}
	var ids []string
	for _, ep := range c.sandboxEndpoints(sb.ID) {
		n := c.networkByID(ep.NetworkID)
		if n == nil || !n.global() {
			continue
		}
		if err := c.cluster.PublishEndpoint(ctx, c.remoteView(n, ep)); err != nil {
			c.log.ErrorContext(ctx, "publishing a task", "sandbox", sb.Name, "draining", sb.Draining, "err", err)
			continue
		}
		if !withdrawal {
			continue
		}
		if err := c.cluster.AckWithdrawal(ctx, ep.ID); err != nil {
			c.log.WarnContext(ctx, "acknowledging a withdrawal", "sandbox", sb.Name, "err", err)
		}
		ids = append(ids, ep.ID)
	}
	return ids
}

// restoreServices re-reserves the VIPs on the IPAM and republishes every service
// (names and load balancing) after a restart.
func (c *Controller) restoreServices(ctx context.Context) {
	for _, svc := range c.services {
		for _, v := range svc.VIPs {
			n := c.networkByID(v.NetworkID)
			if n == nil || !v.Addr.IsValid() || !c.needsReplay(ctx, n) {
				continue
			}
			if _, _, err := c.requestAddr(ctx, n, n.IPv4, v.Addr.Addr(), nil); err != nil {
				c.log.ErrorContext(ctx, "restoring a virtual IP", "service", svc.Name, "addr", v.Addr, "err", err)
			}
		}
		c.publishService(ctx, svc)
	}
}
