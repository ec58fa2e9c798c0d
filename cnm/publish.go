package cnm

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/portmap"
)

// Publish modes of a service's published ports (Docker's --publish mode=).
const (
	// PublishIngress: every node accepts the port on its addresses and forwards to a
	// serving task on any node (the routing mesh), keeping the client's address.
	PublishIngress = "ingress"
	// PublishHost: only nodes with a task publish, to their local tasks.
	PublishHost = "host"
)

// PublishPort is one published port of a service.
type PublishPort struct {
	Mode      string // PublishIngress or PublishHost
	Proto     string // "tcp" or "udp"
	Published uint16 // the port on the nodes' addresses
	Target    uint16 // the port in the task
}

// String is the port in Docker's long syntax, which parses back.
func (p PublishPort) String() string {
	return fmt.Sprintf("mode=%s,published=%d,target=%d,protocol=%s", p.Mode, p.Published, p.Target, p.Proto)
}

// ParsePublish parses one --publish value: Docker's short syntax
// PUBLISHED:TARGET[/PROTO] with ranges (8080-8081:80-81), always ingress, or its long
// syntax mode=ingress|host,published=N,target=N[,protocol=tcp|udp]. A range is
// expanded to one port each.
func ParsePublish(s string) ([]PublishPort, error) {
	if strings.Contains(s, "=") {
		p, err := parsePublishLong(s)
		if err != nil {
			return nil, err
		}
		return []PublishPort{p}, nil
	}
	specs, err := portmap.ParseSpec(s)
	if err != nil {
		return nil, errdefs.InvalidArgument("invalid published port %q: %v", s, err)
	}
	var out []PublishPort
	for _, sp := range specs {
		switch {
		case sp.HostIP.IsValid():
			return nil, errdefs.InvalidArgument("invalid published port %q: a service publishes on every address of every node; no host IP", s)
		case sp.HostPort == 0:
			return nil, errdefs.InvalidArgument("invalid published port %q: give the published port (PUBLISHED:TARGET)", s)
		case sp.Proto != "tcp" && sp.Proto != "udp":
			return nil, errdefs.InvalidArgument("invalid published port %q: protocol %s is not supported (tcp or udp)", s, sp.Proto)
		case sp.HostPortEnd > sp.HostPort:
			return nil, errdefs.InvalidArgument("invalid published port %q: a published range needs a target range as long", s)
		}
		out = append(out, PublishPort{Mode: PublishIngress, Proto: string(sp.Proto), Published: sp.HostPort, Target: sp.ContainerPort})
	}
	return out, nil
}

func parsePublishLong(s string) (PublishPort, error) {
	p := PublishPort{Mode: PublishIngress, Proto: "tcp"}
	bad := func(format string, a ...any) (PublishPort, error) {
		return PublishPort{}, errdefs.InvalidArgument("invalid published port %q: "+format, append([]any{s}, a...)...)
	}
	for field := range strings.SplitSeq(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(field), "=")
		if !ok {
			return bad("%q is not key=value", field)
		}
		switch k {
		case "mode":
			p.Mode = v
		case "protocol":
			p.Proto = v
		case "published", "target":
			n, err := strconv.ParseUint(v, 10, 16)
			if err != nil || n == 0 {
				return bad("%s port %q is not a number from 1 to 65535", k, v)
			}
			if k == "published" {
				p.Published = uint16(n)
			} else {
				p.Target = uint16(n)
			}
		default:
			return bad("unknown key %q (mode, published, target, protocol)", k)
		}
	}
	switch {
	case p.Mode != PublishIngress && p.Mode != PublishHost:
		return bad("mode %q: use ingress or host", p.Mode)
	case p.Proto != "tcp" && p.Proto != "udp":
		return bad("protocol %q: use tcp or udp", p.Proto)
	case p.Target == 0:
		return bad("target is required")
	case p.Published == 0:
		return bad("published is required")
	}
	return p, nil
}

// checkPublish validates a service's published ports among themselves and against
// the other services of this controller: one ingress port per protocol and number
// cluster-wide (the cluster store claims them too), a host-mode port not twice in one
// service, and no ingress publishing in dnsrr mode (Docker's rule: the mesh balances
// over a VIP).
func (c *Controller) checkPublish(svc *Service) error {
	if len(svc.Publish) == 0 {
		return nil
	}
	if svc.Mode == ModeDNSRR && slices.ContainsFunc(svc.Publish, func(p PublishPort) bool { return p.Mode == PublishIngress }) {
		return errdefs.InvalidArgument("port published with ingress mode can't be used with dnsrr mode")
	}
	if svc.IngressSNAT && !slices.ContainsFunc(svc.Publish, func(p PublishPort) bool { return p.Mode == PublishIngress }) {
		return errdefs.InvalidArgument("--ingress-snat needs a port published in ingress mode")
	}
	seen := map[string]bool{}
	for _, p := range svc.Publish {
		key := fmt.Sprintf("%s/%d/%s", p.Mode, p.Published, p.Proto)
		if seen[key] {
			return errdefs.InvalidArgument("port '%d/%s' is published twice", p.Published, p.Proto)
		}
		seen[key] = true
		if p.Mode != PublishIngress {
			continue
		}
		for _, o := range c.services {
			if o.ID != svc.ID && slices.ContainsFunc(o.Publish, func(q PublishPort) bool {
				return q.Mode == PublishIngress && q.Proto == p.Proto && q.Published == p.Published
			}) {
				return errdefs.Conflict("port '%d' is already in use by service '%s' (%s) as an ingress port", p.Published, o.Name, o.ID[:12])
			}
		}
	}
	return nil
}

// hostPorts are the -p specs a task of svc publishes itself (host mode).
func (svc *Service) hostPorts() []portmap.Spec {
	var out []portmap.Spec
	for _, p := range svc.Publish {
		if p.Mode == PublishHost {
			out = append(out, portmap.Spec{HostPort: p.Published, ContainerPort: p.Target, Proto: portmap.Proto(p.Proto)})
		}
	}
	return out
}

// ingressPorts are svc's ports published on the routing mesh.
func (svc *Service) ingressPorts() []PublishPort {
	var out []PublishPort
	for _, p := range svc.Publish {
		if p.Mode == PublishIngress {
			out = append(out, p)
		}
	}
	return out
}

// ServiceUpdate changes a service's published ports (pier service update).
type ServiceUpdate struct {
	PublishAdd []PublishPort
	// PublishRm are removed by published port and protocol (mode and target ignored).
	PublishRm   []PublishPort
	IngressSNAT *bool
}

// UpdateService changes a service's published ports. Ingress ports take effect on
// every node at once (adding the first one joins the service, and its existing
// tasks, to the ingress network); host-mode ports apply to tasks created afterwards
// (a task's own ports are fixed when it is made, as with sandbox -p).
func (c *Controller) UpdateService(ctx context.Context, ref string, u ServiceUpdate) (Service, error) {
	cur, err := c.Service(ctx, ref)
	if err != nil {
		return Service{}, err
	}
	next := cur
	next.Publish = slices.Clone(cur.Publish)
	for _, rm := range u.PublishRm {
		i := slices.IndexFunc(next.Publish, func(p PublishPort) bool { return p.Published == rm.Published && p.Proto == rm.Proto })
		if i < 0 {
			return Service{}, errdefs.InvalidArgument("port %d/%s is not published by service %s", rm.Published, rm.Proto, cur.Name)
		}
		next.Publish = slices.Delete(next.Publish, i, i+1)
	}
	next.Publish = append(next.Publish, u.PublishAdd...)
	if u.IngressSNAT != nil {
		next.IngressSNAT = *u.IngressSNAT
	}
	needIngress := len(next.ingressPorts()) > 0
	var ingressNet string
	if needIngress {
		spec, err := c.withIngress(ctx, ServiceSpec{Publish: next.Publish})
		if err != nil {
			return Service{}, err
		}
		ingressNet = spec.Networks[0]
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	c.mu.RLock()
	live := c.services[cur.ID]
	err = c.checkPublish(&next)
	c.mu.RUnlock()
	switch {
	case live == nil:
		return Service{}, errdefs.NotFound("service %s not found", ref)
	case err != nil:
		return Service{}, err
	}
	var u2 undo.Stack
	if needIngress && next.vipOn(ingressNet).NetworkID == "" {
		n := c.networkByID(ingressNet)
		addr, release, err := c.requestAddr(ctx, n, n.IPv4, netip.Addr{}, nil)
		if err != nil {
			return Service{}, fmt.Errorf("allocating the virtual IP on network %s: %w", n.Name, err)
		}
		u2.Push(release)
		next.VIPs = append(slices.Clone(next.VIPs), ServiceVIP{NetworkID: n.ID, Addr: addr})
	}
	if n := c.networkByID(next.VIPs[0].NetworkID); n != nil && n.global() {
		err = c.cluster.UpdateService(ctx, next)
	} else {
		err = c.store.Put(ctx, kindService, next.ID, &next)
	}
	if err != nil {
		return Service{}, u2.Rollback(err)
	}
	c.applyServiceUpdate(ctx, &next)
	return next, nil
}

// applyServiceUpdate makes a changed service (here or from another node) effective
// on this node (opMu held): names, VIPs, the mesh, and local tasks joining networks
// the service gained (in the background: Connect takes opMu).
func (c *Controller) applyServiceUpdate(ctx context.Context, svc *Service) {
	c.mu.Lock()
	c.services[svc.ID] = svc
	c.mu.Unlock()
	c.publishService(ctx, svc)
	c.syncMesh(ctx)
	for _, v := range svc.VIPs {
		for _, sb := range c.localTasks(svc.ID) {
			if c.endpointOn(sb.ID, v.NetworkID) {
				continue
			}
			id, nid := sb.ID, v.NetworkID
			c.bgWG.Go(func() {
				if _, err := c.Connect(c.bg, nid, id, EndpointSpec{}); err != nil {
					c.log.ErrorContext(c.bg, "joining a task to its service's new network", "sandbox", id, "err", err)
				}
			})
		}
	}
}

// localTasks are this node's tasks of service id.
func (c *Controller) localTasks(id string) []Sandbox {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []Sandbox
	for _, sb := range c.sandboxes {
		if sb.Service == id {
			out = append(out, *sb)
		}
	}
	return out
}

// endpointOn reports whether sandbox sid has an endpoint on network nid.
func (c *Controller) endpointOn(sid, nid string) bool {
	return slices.ContainsFunc(c.sandboxEndpoints(sid), func(ep *Endpoint) bool { return ep.NetworkID == nid })
}
