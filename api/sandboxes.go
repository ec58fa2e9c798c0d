package api

import (
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/etcfiles"
	"github.com/piernet/pier/ipam"
	"github.com/piernet/pier/portmap"
)

// sandboxPlan is a decoded POST /pier/v1/sandboxes body.
type sandboxPlan struct {
	spec  cnm.SandboxSpec
	conns []connection
}

// connection is one network to connect a new sandbox to.
type connection struct {
	network string
	spec    cnm.EndpointSpec
}

// decodeSandboxCreate decodes and validates a sandbox create body (pure).
func decodeSandboxCreate(data []byte) (sandboxPlan, error) {
	var req types.SandboxCreateRequest
	if err := decodeJSON(data, &req); err != nil {
		return sandboxPlan{}, err
	}
	spec := cnm.SandboxSpec{Name: req.Name, Hostname: req.Hostname, HostNetwork: req.HostNetwork,
		DNSSearch: req.DNSSearch, DNSOptions: req.DNSOptions, Service: req.Service}
	for _, s := range req.DNS {
		a, err := ipam.ParseAddr(s)
		if err != nil {
			return sandboxPlan{}, fmt.Errorf("dns: %w", err)
		}
		spec.DNS = append(spec.DNS, a)
	}
	for _, s := range req.ExtraHosts {
		h, err := parseExtraHost(s)
		if err != nil {
			return sandboxPlan{}, err
		}
		spec.ExtraHosts = append(spec.ExtraHosts, h)
	}
	for _, p := range req.Ports {
		ps, err := portmap.ParseSpec(p)
		if err != nil {
			return sandboxPlan{}, err
		}
		spec.Ports = append(spec.Ports, ps...)
	}
	plan := sandboxPlan{spec: spec}
	for _, n := range req.Networks {
		c, err := decodeConnection(n)
		if err != nil {
			return sandboxPlan{}, err
		}
		plan.conns = append(plan.conns, c)
	}
	return plan, nil
}

func decodeConnection(n types.SandboxNetwork) (connection, error) {
	if n.Network == "" {
		return connection{}, errdefs.InvalidArgument("a network entry needs a Network name or ID")
	}
	a4, a6, err := parseStaticAddrs(n.IPv4Address, n.IPv6Address)
	if err != nil {
		return connection{}, err
	}
	ll, err := parseLinkLocal(n.LinkLocalIPs)
	if err != nil {
		return connection{}, err
	}
	return connection{network: n.Network, spec: cnm.EndpointSpec{Addr4: a4, Addr6: a6, Aliases: n.Aliases, Links: n.Links, LinkLocal: ll}}, nil
}

// parseExtraHost parses docker's --add-host value, "host:ip" (or "host=ip").
func parseExtraHost(s string) (etcfiles.HostEntry, error) {
	i := strings.IndexAny(s, ":=")
	if i <= 0 {
		return etcfiles.HostEntry{}, errdefs.InvalidArgument("invalid extra host %q: want host:ip such as db:10.0.0.5", s)
	}
	name, addr := s[:i], strings.Trim(s[i+1:], "[]")
	if strings.ContainsAny(name, " \t\n") {
		return etcfiles.HostEntry{}, errdefs.InvalidArgument("invalid extra host %q: the host name has spaces", s)
	}
	a, err := ipam.ParseAddr(addr)
	if err != nil {
		return etcfiles.HostEntry{}, fmt.Errorf("extra host %q: %w", s, err)
	}
	return etcfiles.HostEntry{Name: name, Addr: a}, nil
}

// createSandbox creates the sandbox, then connects its networks in order; if any step
// fails the sandbox is removed again and the first error returned.
func (s *Server) createSandbox(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	plan, err := decodeBody(w, r, decodeSandboxCreate)
	if err != nil {
		return err
	}
	if err := s.resolveNetworks(ctx, &plan); err != nil {
		return err
	}
	sb, err := s.c.CreateSandbox(ctx, plan.spec)
	if err != nil {
		return err
	}
	for _, c := range plan.conns {
		if _, err := s.c.Connect(ctx, c.network, sb.ID, c.spec); err != nil {
			return s.undoSandbox(ctx, sb, fmt.Errorf("connecting to network %s: %w", c.network, err))
		}
	}
	info, err := s.sandboxInfo(ctx, sb)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, info)
	return nil
}

// resolveNetworks checks every requested network exists (so nothing is created for a
// request that must fail), makes the sandbox a host-network one when a network uses the
// host driver, and picks the default network when none is given.
func (s *Server) resolveNetworks(ctx context.Context, plan *sandboxPlan) error {
	for i, c := range plan.conns {
		n, err := s.c.Network(ctx, c.network)
		if err != nil {
			return err
		}
		plan.conns[i].network = n.ID
		if s.c.UsesHostNamespace(n) {
			plan.spec.HostNetwork = true
		}
	}
	if len(plan.conns) > 0 || plan.spec.Service != "" {
		return nil // a task joins its service's networks
	}
	def := "bridge"
	if plan.spec.HostNetwork {
		def = "host"
	}
	if n, err := s.c.Network(ctx, def); err == nil {
		plan.conns = []connection{{network: n.ID}}
	}
	return nil
}

func (s *Server) undoSandbox(ctx context.Context, sb cnm.Sandbox, cause error) error {
	if err := s.c.DeleteSandbox(context.WithoutCancel(ctx), sb.ID, true); err != nil {
		return fmt.Errorf("%w (and removing sandbox %s failed: %v)", cause, sb.Name, err)
	}
	return cause
}

func (s *Server) listSandboxes(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	out := []types.SandboxInfo{}
	for _, sb := range s.c.Sandboxes(ctx) {
		info, err := s.sandboxInfo(ctx, sb)
		if errdefs.Is(err, errdefs.KindNotFound) {
			continue // deleted meanwhile
		}
		if err != nil {
			return err
		}
		out = append(out, info)
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) inspectSandbox(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	sb, err := s.c.Sandbox(ctx, r.PathValue("ref"))
	if err != nil {
		return err
	}
	info, err := s.sandboxInfo(ctx, sb)
	if err != nil {
		return err
	}
	n, err := s.c.Processes(ctx, sb)
	if err != nil {
		return err
	}
	info.Processes = &n
	writeJSON(w, http.StatusOK, info)
	return nil
}

func (s *Server) deleteSandbox(w http.ResponseWriter, r *http.Request) error {
	force, err := queryBool(r, "force")
	if err != nil {
		return err
	}
	if err := s.c.DeleteSandbox(r.Context(), r.PathValue("ref"), force); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func queryBool(r *http.Request, name string) (bool, error) {
	v := r.URL.Query().Get(name)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, errdefs.InvalidArgument("invalid %s=%q: want true or false", name, v)
	}
	return b, nil
}

func (s *Server) sandboxInfo(ctx context.Context, sb cnm.Sandbox) (types.SandboxInfo, error) {
	sb, err := s.c.Sandbox(ctx, sb.ID) // fresh: connects may have published ports since
	if err != nil {
		return types.SandboxInfo{}, err
	}
	eps, err := s.c.SandboxEndpoints(ctx, sb.ID)
	if err != nil {
		return types.SandboxInfo{}, err
	}
	info := types.SandboxInfo{ID: sb.ID, Name: sb.Name, Hostname: sb.Hostname, Key: sb.Key,
		Dir: s.c.Dir(sb), HostNetwork: sb.HostNetwork, Created: sb.Created, Endpoints: []types.SandboxEndpoint{}}
	for _, ep := range eps {
		name := ep.NetworkID
		if n, err := s.c.Network(ctx, ep.NetworkID); err == nil {
			name = n.Name
		}
		info.Endpoints = append(info.Endpoints, sandboxEndpoint(ep, name))
	}
	info.Ports = portBindings(sb.Published)
	if sb.Service != "" {
		info.Service, info.Starting, info.Draining = sb.Service, sb.Starting, sb.Draining
		if svc, err := s.c.Service(ctx, sb.Service); err == nil {
			info.Service = svc.Name
		}
	}
	return info, nil
}

func portBindings(bs []portmap.Binding) []types.PortBinding {
	out := make([]types.PortBinding, 0, len(bs))
	for _, b := range bs {
		out = append(out, types.PortBinding{HostIP: b.HostIP.String(), HostPort: b.HostPort,
			ContainerPort: b.ContainerPort, Proto: string(b.Proto)})
	}
	return out
}
