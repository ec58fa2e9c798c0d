package cnm

import (
	"context"
	"net/netip"

	"github.com/piernet/pier/dns"
	"github.com/piernet/pier/etcfiles"
)

// Resolver is the embedded DNS seam (implemented by dns.Server). Sandboxes attached to
// at least one user-defined network get it, as in Docker; sandboxes only on the
// predefined networks keep the host's resolv.conf.
type Resolver interface {
	AddSandbox(ctx context.Context, cfg dns.SandboxConfig) error
	UpdateSandbox(cfg dns.SandboxConfig) error
	RemoveSandbox(id string) error
	Upsert(r dns.Record)
	Remove(endpointID string)
}

// usesEmbeddedDNS reports whether sandbox endpoints eps include a user-defined network.
func (c *Controller) usesEmbeddedDNS(eps []*Endpoint) bool {
	if c.dns == nil {
		return false
	}
	for _, ep := range eps {
		if n := c.networkByID(ep.NetworkID); n != nil && !n.Predefined {
			return true
		}
	}
	return false
}

// syncDNS brings the resolver in line with sb's endpoints: records for every endpoint
// on a user-defined network, and a listener inside the sandbox while it needs one.
// Called with opMu held.
func (c *Controller) syncDNS(ctx context.Context, sb *Sandbox) error {
	if c.dns == nil {
		return nil
	}
	eps := c.sandboxEndpoints(sb.ID)
	for _, ep := range eps {
		if r, ok := c.dnsRecord(sb, ep); ok {
			c.dns.Upsert(r)
		}
	}
	want := c.usesEmbeddedDNS(eps)
	switch active := c.dnsActive[sb.ID]; {
	case want && !active:
		if err := c.dns.AddSandbox(ctx, c.dnsConfig(sb, eps)); err != nil {
			return err
		}
		c.dnsActive[sb.ID] = true
	case want && active:
		return c.dns.UpdateSandbox(c.dnsConfig(sb, eps))
	case !want && active:
		delete(c.dnsActive, sb.ID)
		return c.dns.RemoveSandbox(sb.ID)
	}
	return nil
}

// dropDNS removes everything the resolver holds for sb.
func (c *Controller) dropDNS(sb *Sandbox) {
	if c.dns == nil || !c.dnsActive[sb.ID] {
		return
	}
	delete(c.dnsActive, sb.ID)
	if err := c.dns.RemoveSandbox(sb.ID); err != nil {
		c.log.Warn("stopping sandbox DNS", "sandbox", sb.Name, "err", err)
	}
}

func (c *Controller) dnsRecord(sb *Sandbox, ep *Endpoint) (dns.Record, bool) {
	n := c.networkByID(ep.NetworkID)
	if n == nil || n.Predefined {
		return dns.Record{}, false
	}
	names := append([]string{sb.Name}, ep.Aliases...)
	names = append(names, sb.ID[:12])
	names = append(names, c.taskNames(sb, n.ID)...)
	return dns.Record{NetworkID: n.ID, NetworkName: n.Name, EndpointID: ep.ID, SandboxID: sb.ID,
		Names: names, Addr4: validAddr(ep.Addr4), Addr6: validAddr(ep.Addr6)}, true
}

func (c *Controller) dnsConfig(sb *Sandbox, eps []*Endpoint) dns.SandboxConfig {
	internal := true
	for _, ep := range eps {
		if n := c.networkByID(ep.NetworkID); n != nil && !n.Internal {
			internal = false
		}
	}
	host := c.hostResolv()
	servers := sb.DNS
	if len(servers) == 0 {
		servers = etcfiles.Upstreams(host)
	}
	ups := make([]netip.AddrPort, 0, len(servers))
	for _, a := range servers {
		ups = append(ups, netip.AddrPortFrom(a, 53))
	}
	search := sb.DNSSearch
	if len(search) == 0 {
		search = host.Search
	}
	var links map[string]string
	for _, ep := range eps {
		for _, l := range ep.Links {
			if links == nil {
				links = map[string]string{}
			}
			links[l.Alias] = l.Sandbox
		}
	}
	return dns.SandboxConfig{ID: sb.ID, Key: sb.Key, Upstreams: ups, Internal: internal, Search: search, Links: links}
}
