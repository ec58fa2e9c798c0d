package cnm

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/piernet/pier/errdefs"
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
