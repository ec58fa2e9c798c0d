package cnm

import (
	"context"
	"net"

	"github.com/piernet/pier/dns"
	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/store"
)

// kindAdopted caches the global networks this node has set up in its drivers, so a
// restart knows which ones are new (the driver must create them) and which were
// deleted while it was away (the driver must remove them).
const kindAdopted = "global-networks"

// watchCluster takes the cluster's snapshot (before restore, which needs the global
// networks of local endpoints) and keeps its event channel for Start.
func (c *Controller) watchCluster(ctx context.Context) (ClusterState, error) {
	wctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	st, ch, err := c.cluster.Watch(wctx)
	if err != nil {
		cancel()
		return ClusterState{}, err
	}
	c.watchCancel, c.events = cancel, ch
	c.self = c.cluster.Self()
	for i := range st.Networks {
		n := st.Networks[i]
		n.Scope = driver.ScopeGlobal
		c.networks[n.ID] = &n
	}
	return st, nil
}

// adoptGlobal finishes the cluster part of a restore: global networks new to this node
// are created in their drivers, adopted ones that vanished are removed, remote
// endpoints are loaded and this node's endpoint records are made to match its local
// endpoints. Called by New after restore, before serving.
func (c *Controller) adoptGlobal(ctx context.Context, st ClusterState) error {
	adopted, err := store.List[Network](ctx, c.store, kindAdopted)
	if err != nil {
		return err
	}
	seen := map[string]bool{}
	for _, old := range adopted {
		seen[old.ID] = true
		if c.networks[old.ID] == nil {
			c.dropGlobalNetwork(ctx, old)
		}
	}
	for _, n := range st.Networks {
		if !seen[n.ID] {
			c.adoptOrLog(ctx, c.networks[n.ID])
		}
	}
	for i := range st.Services {
		c.adoptService(ctx, &st.Services[i])
	}
	mine := map[string]RemoteEndpoint{}
	for _, ep := range st.Endpoints {
		if ep.Node.ID == c.self.ID {
			mine[ep.ID] = ep
			continue
		}
		c.addRemote(ctx, ep)
	}
	c.reconcileOwn(ctx, mine)
	c.syncMesh(ctx)
	c.syncReturns(ctx)
	return nil
}

// reconcileOwn re-publishes local endpoints of global networks that the cluster store
// lacks (a crash between the two stores, or records removed while this node was down)
// and withdraws records of this node that no local endpoint backs.
func (c *Controller) reconcileOwn(ctx context.Context, published map[string]RemoteEndpoint) {
	for _, ep := range c.endpoints {
		n := c.networks[ep.NetworkID]
		if n == nil || !n.global() {
			continue
		}
		delete(published, ep.ID)
		if err := c.cluster.PublishEndpoint(ctx, c.remoteView(n, ep)); err != nil {
			c.log.ErrorContext(ctx, "re-publishing endpoint", "endpoint", ep.Name, "network", n.Name, "err", err)
		}
	}
	if c.router != nil {
		delete(published, c.router.ID) // re-published when the router is re-attached
	}
	for _, stale := range published {
		c.log.InfoContext(ctx, "withdrawing endpoint record without a local endpoint", "endpoint", stale.Name)
		if err := c.cluster.WithdrawEndpoint(ctx, stale.NetworkID, stale.ID); err != nil {
			c.log.ErrorContext(ctx, "withdrawing endpoint", "endpoint", stale.Name, "err", err)
		}
	}
}

// Start runs the controller's background work: in cluster mode, applying what other
// nodes do. It returns at once; Close stops it.
func (c *Controller) Start(ctx context.Context) {
	if c.events == nil {
		return
	}
	c.watchDone = make(chan struct{})
	go func() {
		defer close(c.watchDone)
		for ev := range c.events {
			c.applyEvent(context.WithoutCancel(ctx), ev)
		}
	}()
}

// Close stops what Start started and waits for it. Idempotent.
func (c *Controller) Close() {
	c.bgStop()
	c.bgWG.Wait()
	if c.watchCancel != nil {
		c.watchCancel()
	}
	if c.watchDone != nil {
		<-c.watchDone
	}
}

func (c *Controller) applyEvent(ctx context.Context, ev ClusterEvent) {
	switch ev.Kind {
	case NetworkAdded:
		c.opMu.Lock()
		defer c.opMu.Unlock()
		if c.networkByID(ev.Network.ID) != nil {
			return
		}
		n := ev.Network
		n.Scope = driver.ScopeGlobal
		c.mu.Lock()
		c.networks[n.ID] = &n
		c.mu.Unlock()
		c.adoptOrLog(ctx, &n)
	case NetworkRemoved:
		c.opMu.Lock()
		defer c.opMu.Unlock()
		n := c.networkByID(ev.Network.ID)
		if n == nil {
			return
		}
		if len(c.networkEndpoints(n.ID)) > 0 {
			c.log.ErrorContext(ctx, "global network removed while this node has endpoints on it; keeping it", "network", n.Name)
			return
		}
		c.mu.Lock()
		delete(c.networks, n.ID)
		c.mu.Unlock()
		c.dropGlobalNetwork(ctx, *n)
	case EndpointAdded:
		if ev.Endpoint.Node.ID != c.self.ID {
			old := c.remoteTask(ev.Endpoint)
			c.addRemote(ctx, ev.Endpoint)
			c.remoteTaskChanged(ctx, ev.Endpoint, old)
			c.remoteRouterChanged(ctx, ev.Endpoint)
		}
	case EndpointRemoved:
		old := c.remoteTask(ev.Endpoint)
		c.removeRemote(ctx, ev.Endpoint)
		c.remoteTaskChanged(ctx, ev.Endpoint, old)
		c.remoteRouterChanged(ctx, ev.Endpoint)
	case ServiceAdded, ServiceRemoved:
		c.applyServiceEvent(ctx, ev)
	}
}

// adoptNetwork sets a global network up in its driver on this node and remembers it.
func (c *Controller) adoptNetwork(ctx context.Context, n *Network) error {
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return err
	}
	if r, ok := drv.(driver.Restorer); ok {
		err = r.RestoreNetwork(ctx, n.driverConfig())
	} else {
		err = drv.CreateNetwork(ctx, n.driverConfig())
	}
	if err != nil {
		return err
	}
	return c.store.Put(ctx, kindAdopted, n.ID, n)
}

// adoptOrLog adopts a network another node created; a failure is logged (the network
// stays listed; a join on it will fail in the driver and say why).
func (c *Controller) adoptOrLog(ctx context.Context, n *Network) {
	if err := c.adoptNetwork(ctx, n); err != nil {
		c.log.ErrorContext(ctx, "setting up global network", "network", n.Name, "driver", n.Driver, "err", err)
	}
}

// dropGlobalNetwork removes a global network that was deleted cluster-wide from its
// driver on this node.
func (c *Controller) dropGlobalNetwork(ctx context.Context, n Network) {
	if drv, err := c.driver(ctx, n.Driver); err == nil {
		if err := drv.DeleteNetwork(ctx, n.ID); err != nil {
			c.log.WarnContext(ctx, "removing global network from its driver", "network", n.Name, "err", err)
		}
	}
	if err := c.store.Delete(ctx, kindAdopted, n.ID); err != nil {
		c.log.WarnContext(ctx, "forgetting global network", "network", n.Name, "err", err)
	}
	c.log.InfoContext(ctx, "global network removed", "name", n.Name, "id", n.ID[:12])
}

// addRemote records (or updates) another node's endpoint: the embedded DNS answers its
// names and the network's driver learns the peer.
func (c *Controller) addRemote(ctx context.Context, ep RemoteEndpoint) {
	c.mu.Lock()
	n := c.networks[ep.NetworkID]
	if n == nil {
		c.mu.Unlock()
		return
	}
	if c.remote[ep.NetworkID] == nil {
		c.remote[ep.NetworkID] = map[string]*RemoteEndpoint{}
	}
	c.remote[ep.NetworkID][ep.ID] = &ep
	name, drvName := n.Name, n.Driver
	c.mu.Unlock()
	if c.dns != nil && len(ep.Names) > 0 {
		c.dns.Upsert(dns.Record{NetworkID: ep.NetworkID, NetworkName: name, EndpointID: ep.ID,
			SandboxID: ep.SandboxID, Names: ep.Names, Addr4: validAddr(ep.Addr4), Addr6: validAddr(ep.Addr6)})
	}
	// Only a joined endpoint has an interface to reach (a node's ingress router always
	// has); a claim (connectGlobal's first write) or an unjoined endpoint has nothing
	// for the driver to program yet.
	if ep.SandboxID != "" || ep.Router {
		c.notifyPeer(ctx, drvName, ep, true)
	}
}

func (c *Controller) removeRemote(ctx context.Context, ep RemoteEndpoint) {
	c.mu.Lock()
	known := c.remote[ep.NetworkID][ep.ID]
	delete(c.remote[ep.NetworkID], ep.ID)
	if len(c.remote[ep.NetworkID]) == 0 {
		delete(c.remote, ep.NetworkID)
	}
	n := c.networks[ep.NetworkID]
	c.mu.Unlock()
	if known == nil {
		return
	}
	if c.dns != nil {
		c.dns.Remove(ep.ID)
	}
	if n != nil {
		c.notifyPeer(ctx, n.Driver, *known, false)
	}
}

// notifyPeer tells a global-scope driver about an endpoint on another host.
func (c *Controller) notifyPeer(ctx context.Context, drvName string, ep RemoteEndpoint, add bool) {
	drv, err := c.drivers.Get(drvName)
	if err != nil {
		return
	}
	pd, ok := drv.(driver.PeerDriver)
	if !ok {
		return
	}
	mac, _ := net.ParseMAC(ep.MAC)
	p := driver.Peer{NetworkID: ep.NetworkID, EndpointID: ep.ID, Node: ep.Node.Addr, Addr4: ep.Addr4, Addr6: ep.Addr6, MAC: mac}
	if add {
		err = pd.AddPeer(ctx, p)
	} else {
		err = pd.RemovePeer(ctx, p)
	}
	if err != nil {
		c.log.ErrorContext(ctx, "programming remote endpoint", "endpoint", ep.Name, "node", ep.Node.Name, "add", add, "err", err)
	}
}

// remoteView is the cluster record of a local endpoint of global network n.
func (c *Controller) remoteView(n *Network, ep *Endpoint) RemoteEndpoint {
	r := RemoteEndpoint{ID: ep.ID, Name: ep.Name, NetworkID: n.ID, Node: c.self, Addr4: ep.Addr4, Addr6: ep.Addr6, MAC: ep.MAC}
	if sb := c.sandboxes[ep.SandboxID]; sb != nil {
		r.SandboxID, r.SandboxName = sb.ID, sb.Name
		if rec, ok := c.dnsRecord(sb, ep); ok {
			r.Names = rec.Names
		}
		r.Service, r.Starting, r.Draining = sb.Service, sb.Starting, sb.Draining
	}
	return r
}
