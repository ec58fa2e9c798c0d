package cnm

import (
	"context"
	"net/netip"

	"github.com/piernet/pier/etcfiles"
)

// refreshNaming updates what names and services depend on after a join or leave: the
// embedded DNS (records and listener), the sandbox's files and the service load
// balancing (the sandbox's VIPs, and its service's backends if it is a task).
func (c *Controller) refreshNaming(ctx context.Context, sb *Sandbox) {
	if err := c.syncDNS(ctx, sb); err != nil {
		c.log.ErrorContext(ctx, "updating embedded DNS", "sandbox", sb.Name, "err", err)
	}
	c.refreshFiles(ctx, sb)
	c.refreshServices(ctx, sb)
}

func (c *Controller) refreshFiles(ctx context.Context, sb *Sandbox) {
	if err := c.writeFiles(sb); err != nil {
		c.log.WarnContext(ctx, "updating sandbox files", "sandbox", sb.Name, "err", err)
	}
}

// writeFiles renders the sandbox's hosts, resolv.conf and hostname files.
func (c *Controller) writeFiles(sb *Sandbox) error {
	cfg := etcfiles.Config{Hostname: sb.Hostname, Names: []string{sb.Hostname, sb.Name},
		ExtraHosts: sb.ExtraHosts, DNS: sb.DNS, DNSSearch: sb.DNSSearch, DNSOptions: sb.DNSOptions,
		EmbeddedDNS: c.dnsActive[sb.ID]}
	for _, ep := range c.sandboxEndpoints(sb.ID) {
		for _, p := range []netip.Prefix{ep.Addr4, ep.Addr6} {
			if p.IsValid() {
				cfg.Addrs = append(cfg.Addrs, p.Addr())
			}
		}
		cfg.ExtraHosts = append(cfg.ExtraHosts, c.legacyLinkHosts(ep)...)
	}
	return etcfiles.Write(c.sandboxDir(sb.ID), c.hostResolv(), cfg)
}

// legacyLinkHosts are the /etc/hosts lines of ep's links on a predefined network
// (the default bridge has no embedded DNS: Docker writes "addr alias name" there).
// A linked sandbox not on that network gets no line.
func (c *Controller) legacyLinkHosts(ep *Endpoint) []etcfiles.HostEntry {
	if len(ep.Links) == 0 {
		return nil
	}
	if n := c.networkByID(ep.NetworkID); n == nil || !n.Predefined {
		return nil
	}
	var out []etcfiles.HostEntry
	for _, l := range ep.Links {
		c.mu.RLock()
		target, err := lookup(c.sandboxes, "sandbox", l.Sandbox)
		c.mu.RUnlock()
		if err != nil {
			continue
		}
		other := c.endpointOf(target.ID, ep.NetworkID)
		if other == nil || !other.Addr4.IsValid() {
			continue
		}
		names := l.Alias
		if l.Alias != target.Name {
			names += " " + target.Name
		}
		out = append(out, etcfiles.HostEntry{Name: names, Addr: other.Addr4.Addr()})
	}
	return out
}
