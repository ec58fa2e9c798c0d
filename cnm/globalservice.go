package cnm

import (
	"context"
	"slices"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// Services on global networks: the service record lives in the cluster store (every
// node adopts it from the watch, none keeps it in its own store); tasks on any node
// publish their endpoints with the service's ID and draining flag, and every node
// balances over the serving ones. A removal is acknowledged by every node through the
// store (AckWithdrawal) before the task's grace period starts.

// remoteTask returns what this node knew of a remote endpoint before an event.
func (c *Controller) remoteTask(ep RemoteEndpoint) *RemoteEndpoint {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if old := c.remote[ep.NetworkID][ep.ID]; old != nil {
		cp := *old
		return &cp
	}
	return nil
}

// remoteTaskChanged reprograms this node's sandboxes on the network when a remote
// endpoint that is (or was) a task changed, and acknowledges a withdrawal.
func (c *Controller) remoteTaskChanged(ctx context.Context, ep RemoteEndpoint, old *RemoteEndpoint) {
	if ep.Service == "" && (old == nil || old.Service == "") {
		return
	}
	c.opMu.Lock()
	for _, id := range []string{ep.Service, oldService(old)} {
		c.mu.RLock()
		svc := c.services[id]
		c.mu.RUnlock()
		if svc != nil {
			c.syncServiceLB(ctx, svc, ep.NetworkID)
		}
	}
	c.opMu.Unlock()
	if ep.Draining && c.remoteTask(ep) != nil {
		if err := c.cluster.AckWithdrawal(ctx, ep.ID); err != nil {
			c.log.WarnContext(ctx, "acknowledging a withdrawal", "endpoint", ep.Name, "node", ep.Node.Name, "err", err)
		}
	}
}

// remoteTasks lists other nodes' endpoints that are tasks of service id.
func (c *Controller) remoteTasks(id string) []RemoteEndpoint {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []RemoteEndpoint
	for _, eps := range c.remote {
		for _, ep := range eps {
			if ep.Service == id {
				out = append(out, *ep)
			}
		}
	}
	slices.SortFunc(out, func(a, b RemoteEndpoint) int { return strings.Compare(a.SandboxName, b.SandboxName) })
	return out
}

// RemoteTasks lists the tasks of svc on other nodes (their endpoint records).
func (c *Controller) RemoteTasks(ctx context.Context, svc Service) []RemoteEndpoint {
	return c.remoteTasks(svc.ID)
}

// applyServiceEvent follows a service created, changed or removed on any node.
func (c *Controller) applyServiceEvent(ctx context.Context, ev ClusterEvent) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if ev.Kind == ServiceAdded {
		c.adoptService(ctx, &ev.Service)
		return
	}
	c.mu.Lock()
	svc := c.services[ev.Service.ID]
	delete(c.services, ev.Service.ID)
	c.mu.Unlock()
	if svc != nil {
		c.unpublishService(ctx, svc)
		c.syncMesh(ctx)
	}
}

// adoptService makes a global service known here (or updates it) and publishes its
// names and VIPs on this node.
func (c *Controller) adoptService(ctx context.Context, s *Service) {
	svc := *s
	c.applyServiceUpdate(ctx, &svc)
}

// unpublishService removes a service's names and VIPs from this node.
func (c *Controller) unpublishService(ctx context.Context, svc *Service) {
	for _, v := range svc.VIPs {
		if c.dns != nil {
			c.dns.Remove(vipRecordID(svc.ID, v.NetworkID))
		}
		c.syncNetworkLB(ctx, v.NetworkID)
	}
	if c.mesh != nil && len(svc.ingressPorts()) > 0 {
		if err := c.mesh.Unpublish(ctx, svc.ID); err != nil {
			c.log.ErrorContext(ctx, "unpublishing a service from the routing mesh", "service", svc.Name, "err", err)
		}
	}
}

// checkServiceScope refuses a service mixing global and local networks, and global
// networks without cluster mode.
func (c *Controller) checkServiceScope(nets []*Network) (global bool, err error) {
	for i, n := range nets {
		if i > 0 && n.global() != global {
			return false, errdefs.InvalidArgument("a service's networks must all be global or all local (%s is not like %s)", n.Name, nets[0].Name)
		}
		global = n.global()
	}
	if global && c.cluster == nil {
		return false, errdefs.InvalidArgument("services on global networks need cluster mode")
	}
	return global, nil
}

func oldService(ep *RemoteEndpoint) string {
	if ep == nil {
		return ""
	}
	return ep.Service
}
