package cnm

import (
	"context"
	"time"
)

// readyPoll is how often a starting task's sockets are looked at.
const readyPoll = 20 * time.Millisecond

// gatesReadiness: a new task of svc starts out of rotation until it listens on one of
// the service's ports. Without ports (every port is balanced) there is nothing to
// wait for, and without a load balancer nothing to look with.
func (c *Controller) gatesReadiness(svc *Service) bool {
	return c.lb != nil && len(svc.Ports) > 0
}

// awaitReady watches a starting task in the background until a socket in it listens
// on one of its service's ports, then puts it into rotation. It ends with the
// controller, or when the task is gone or its removal began.
func (c *Controller) awaitReady(sb Sandbox) {
	c.bgWG.Go(func() {
		ctx := c.bg
		tick := time.NewTicker(readyPoll)
		defer tick.Stop()
		for {
			svc, live := c.startingTask(sb.ID)
			if svc == nil {
				return
			}
			ok, err := c.lb.Listening(ctx, live.Key, svc.Ports)
			if err != nil {
				c.log.DebugContext(ctx, "looking at a starting task's sockets", "sandbox", sb.Name, "err", err)
			}
			if ok {
				c.markReady(ctx, sb.ID)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	})
}

// startingTask returns the service and a copy of sandbox id while it is a starting
// task (nil otherwise).
func (c *Controller) startingTask(id string) (*Service, Sandbox) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	sb := c.sandboxes[id]
	if sb == nil || !sb.Starting || sb.Draining {
		return nil, Sandbox{}
	}
	svc := c.services[sb.Service]
	if svc == nil {
		return nil, Sandbox{}
	}
	return svc, *sb
}

// markReady puts a starting task into rotation: its record, its names, every local
// sandbox's selection, and other nodes through its endpoint records.
func (c *Controller) markReady(ctx context.Context, id string) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	svc, sb := c.startingTask(id)
	if svc == nil {
		return
	}
	sb.Starting = false
	if err := c.store.Put(ctx, kindSandbox, sb.ID, &sb); err != nil {
		c.log.ErrorContext(ctx, "recording a ready task", "sandbox", sb.Name, "err", err)
		return
	}
	c.mu.Lock()
	live := c.sandboxes[sb.ID]
	live.Starting = false
	c.mu.Unlock()
	if err := c.syncDNS(ctx, live); err != nil {
		c.log.WarnContext(ctx, "publishing a ready task's names", "sandbox", sb.Name, "err", err)
	}
	for _, v := range svc.VIPs {
		c.syncServiceLB(ctx, svc, v.NetworkID)
	}
	c.publishTask(ctx, live, false)
	c.log.InfoContext(ctx, "task ready", "sandbox", sb.Name, "service", svc.Name)
}
