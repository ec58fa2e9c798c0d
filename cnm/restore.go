package cnm

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sort"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/store"
)

// restore loads the records and brings the kernel back in line with them: pools and
// addresses are re-requested, drivers re-create missing bridges and report broken
// endpoints, missing namespaces are re-created and broken joins redone, and leftovers
// of interrupted operations (namespaces, interfaces, files) are removed.
func (c *Controller) restore(ctx context.Context) error {
	if err := c.load(ctx); err != nil {
		return err
	}
	if err := c.dropHalfMade(ctx); err != nil {
		return err
	}
	for _, n := range c.sortedNetworks() {
		c.restoreNetwork(ctx, n)
	}
	recreated := map[string]bool{}
	for _, sb := range c.sandboxes {
		recreated[sb.ID] = c.restoreSandboxOS(ctx, sb)
	}
	broken := c.restoreEndpoints(ctx)
	// Leftovers go first: a half-detached veth may still hold a sandbox interface name.
	cleanupErr := c.cleanup(ctx)
	c.restoreServices(ctx)
	for _, sb := range c.sandboxes {
		c.repairSandbox(ctx, sb, broken, recreated[sb.ID])
	}
	return cleanupErr
}

func (c *Controller) load(ctx context.Context) error {
	nets, err := store.List[Network](ctx, c.store, kindNetwork)
	if err != nil {
		return err
	}
	eps, err := store.List[Endpoint](ctx, c.store, kindEndpoint)
	if err != nil {
		return err
	}
	sbs, err := store.List[Sandbox](ctx, c.store, kindSandbox)
	if err != nil {
		return err
	}
	if err := c.loadRouter(ctx); err != nil {
		return err
	}
	if err := c.loadServices(ctx); err != nil {
		return err
	}
	for i := range nets {
		c.networks[nets[i].ID] = &nets[i]
	}
	for i := range eps {
		c.addEndpointLocked(&eps[i])
	}
	for i := range sbs {
		c.sandboxes[sbs[i].ID] = &sbs[i]
	}
	return nil
}

// dropHalfMade finishes operations a crash interrupted: transient endpoints that are
// not joined (Connect before its join, Disconnect after its leave) are deleted, their
// kernel leftovers go in cleanup; endpoints recorded as joined to a sandbox that no
// longer exists are marked as not joined.
func (c *Controller) dropHalfMade(ctx context.Context) error {
	return c.store.Update(ctx, func(tx store.Tx) error {
		for id, ep := range c.endpoints {
			switch {
			case ep.Transient && (ep.SandboxID == "" || c.sandboxes[ep.SandboxID] == nil):
				c.log.InfoContext(ctx, "removing half-connected endpoint", "endpoint", ep.Name)
				c.removeEndpointLocked(ep)
				if err := tx.Delete(kindEndpoint, id); err != nil {
					return err
				}
			case ep.SandboxID != "" && c.sandboxes[ep.SandboxID] == nil:
				c.replaceEndpointLocked(ep, ep.unjoined())
				if err := tx.Put(kindEndpoint, id, ep); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func (c *Controller) sortedNetworks() []*Network {
	out := make([]*Network, 0, len(c.networks))
	for _, n := range c.networks {
		out = append(out, n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Created.Before(out[j].Created) })
	return out
}

func (c *Controller) restoreNetwork(ctx context.Context, n *Network) {
	if err := c.restorePools(ctx, n); err != nil {
		c.log.ErrorContext(ctx, "restoring network pools", "network", n.Name, "err", err)
	}
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		c.log.ErrorContext(ctx, "restoring network", "network", n.Name, "err", err)
		return
	}
	if n.IfacePrefix == "" { // a record from before the driver decoded it
		decoded, _ := decodeOptions(drv, n.Options)
		n.IfacePrefix = decoded.IfacePrefix
	}
	if r, ok := drv.(driver.Restorer); ok {
		err = r.RestoreNetwork(ctx, n.driverConfig())
	}
	if err != nil {
		c.log.ErrorContext(ctx, "restoring network", "network", n.Name, "err", err)
	}
}

// restoreSandboxOS re-creates a sandbox namespace that vanished (e.g. after a reboot)
// and reports whether it did.
func (c *Controller) restoreSandboxOS(ctx context.Context, sb *Sandbox) bool {
	if sb.HostNetwork {
		sb.Key = c.os.HostKey()
		return false
	}
	if c.os.Exists(sb.Key) {
		return false
	}
	key, err := c.os.Create(ctx, sb.ID)
	if err != nil {
		c.log.ErrorContext(ctx, "re-creating sandbox namespace", "sandbox", sb.Name, "err", err)
		return false
	}
	sb.Key = key
	return true
}

// restoreEndpoints re-requests addresses and lets drivers re-register endpoints. It
// returns the joined endpoints whose interfaces must be re-created.
func (c *Controller) restoreEndpoints(ctx context.Context) map[string]bool {
	broken := map[string]bool{}
	for _, ep := range c.endpoints {
		n, ok := c.networks[ep.NetworkID]
		if !ok {
			c.log.ErrorContext(ctx, "endpoint of unknown network", "endpoint", ep.ID)
			continue
		}
		if !c.restoreEndpoint(ctx, n, ep) {
			broken[ep.ID] = true
		}
	}
	return broken
}

func (c *Controller) restoreEndpoint(ctx context.Context, n *Network, ep *Endpoint) bool {
	if err := c.reserveAddrs(ctx, n, ep); err != nil {
		c.log.ErrorContext(ctx, "restoring endpoint addresses", "endpoint", ep.Name, "err", err)
	}
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return ep.SandboxID == ""
	}
	r, ok := drv.(driver.Restorer)
	if !ok {
		return true
	}
	var join *driver.JoinRequest
	if sb := c.sandboxes[ep.SandboxID]; sb != nil {
		join = &driver.JoinRequest{NetworkID: n.ID, EndpointID: ep.ID, SandboxID: sb.ID, SandboxKey: sb.Key,
			IfName: ep.IfName, Addr4: ep.Addr4, Addr6: ep.Addr6, Ports: sb.Ports, Published: sb.Published}
	}
	intact, err := r.RestoreEndpoint(ctx, ep.driverConfig(), join)
	if err != nil {
		c.log.ErrorContext(ctx, "restoring endpoint", "endpoint", ep.Name, "err", err)
	}
	return intact && err == nil
}

// reserveAddrs replays the endpoint's recorded addresses on an IPAM that forgot them.
// What it reserved stays reserved when another address fails: the record holds all
// of them, so none may go to another endpoint.
func (c *Controller) reserveAddrs(ctx context.Context, n *Network, ep *Endpoint) error {
	if !c.needsReplay(ctx, n) {
		return nil
	}
	var errs []error
	mac, _ := net.ParseMAC(ep.MAC)
	for _, a := range ep.ipamAddrs(n) {
		_, _, err := c.requestAddr(ctx, n, a.pools, a.addr.Addr(), mac)
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// repairSandbox re-joins broken endpoints of sb and re-applies its gateway and files.
// A re-created namespace has lost all its interfaces, whatever the host side shows
// (the old namespace's teardown is asynchronous in the kernel).
func (c *Controller) repairSandbox(ctx context.Context, sb *Sandbox, broken map[string]bool, recreated bool) {
	eps := c.sandboxEndpointsLocked(sb.ID)
	for _, ep := range eps {
		if broken[ep.ID] || recreated {
			c.rejoin(ctx, sb, ep)
		}
	}
	sb.GatewayEndpoint = ""
	if _, err := c.applyGateway(ctx, sb, c.planGateway(sb, eps)); err != nil {
		c.log.ErrorContext(ctx, "restoring default route", "sandbox", sb.Name, "err", err)
	}
	c.refreshNaming(ctx, sb)
}

func (c *Controller) rejoin(ctx context.Context, sb *Sandbox, ep *Endpoint) {
	n := c.networks[ep.NetworkID]
	if n == nil {
		return
	}
	if drv, err := c.driver(ctx, n.Driver); err == nil {
		_ = drv.Leave(ctx, n.ID, ep.ID) // clear half-made interfaces
	}
	if ep.Moved {
		c.releaseInterface(ctx, sb, ep)
	} else if ep.IfName != "" {
		_ = c.os.RemoveInterface(ctx, sb.Key, ep.IfName)
	}
	c.log.InfoContext(ctx, "re-creating endpoint interface", "sandbox", sb.Name, "endpoint", ep.Name)
	var u undo.Stack
	if err := c.attach(ctx, sb, n, ep, &u); err != nil {
		c.log.ErrorContext(ctx, "re-joining endpoint", "sandbox", sb.Name, "endpoint", ep.Name, "err", u.Rollback(err))
	}
}

// cleanup removes what no record accounts for: driver leftovers, pinned namespaces and
// sandbox directories.
func (c *Controller) cleanup(ctx context.Context) error {
	var errs []error
	for _, name := range c.drivers.Names() {
		errs = append(errs, c.cleanupDriver(ctx, name))
	}
	errs = append(errs, c.cleanupNamespaces(ctx), c.cleanupDirs())
	return errors.Join(errs...)
}

func (c *Controller) cleanupDriver(ctx context.Context, name string) error {
	drv, err := c.driver(ctx, name)
	if err != nil {
		return err
	}
	r, ok := drv.(driver.Restorer)
	if !ok {
		return nil
	}
	live := driver.Live{Networks: map[string]bool{}, Endpoints: map[string]bool{}}
	for _, n := range c.networks {
		if n.Driver == name {
			live.Networks[n.ID] = true
		}
	}
	for _, ep := range c.endpoints {
		if live.Networks[ep.NetworkID] && ep.SandboxID != "" {
			live.Endpoints[ep.ID] = true
		}
	}
	return r.Cleanup(ctx, live)
}

func (c *Controller) cleanupNamespaces(ctx context.Context) error {
	keys, err := c.os.Pinned()
	if err != nil {
		return err
	}
	known := map[string]bool{}
	for _, sb := range c.sandboxes {
		known[sb.Key] = true
	}
	var errs []error
	for _, k := range keys {
		if !known[k] {
			c.log.InfoContext(ctx, "removing leftover namespace", "path", k)
			errs = append(errs, c.os.Destroy(ctx, k))
		}
	}
	return errors.Join(errs...)
}

func (c *Controller) cleanupDirs() error {
	dir := filepath.Join(c.execRoot, "sandboxes")
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil
	}
	var errs []error
	for _, e := range entries {
		if c.sandboxes[e.Name()] == nil {
			errs = append(errs, os.RemoveAll(filepath.Join(dir, e.Name())))
		}
	}
	return errors.Join(errs...)
}
