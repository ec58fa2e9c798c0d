package cnm

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/piernet/pier/dns"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/lb"
	"github.com/piernet/pier/store"
)

// Service endpoint modes (Docker's --endpoint-mode).
const (
	ModeVIP   = "vip"   // the name resolves to a virtual IP, balanced over the tasks
	ModeDNSRR = "dnsrr" // the name resolves to the tasks' addresses, in rotating order
)

// DefaultServiceStopGrace is how long a removed task keeps serving its established
// connections, at most, after it left every selection.
const DefaultServiceStopGrace = 10 * time.Second

// ServiceSpec describes a service to create.
type ServiceSpec struct {
	Name      string
	Networks  []string // network names or IDs: the VIPs' and the tasks' networks
	Mode      string   // ModeVIP ("" too) or ModeDNSRR
	Ports     []lb.Port
	Sticky    time.Duration
	StopGrace time.Duration // 0: DefaultServiceStopGrace
	// Publish are the service's published ports (ingress: the routing mesh on every
	// node; host: on the nodes of its tasks). IngressSNAT masquerades mesh connections
	// (Docker's behaviour: the task sees the forwarding node, not the client).
	Publish     []PublishPort
	IngressSNAT bool
}

// Service is a service record: a name, a virtual IP per network, and the task
// sandboxes (Sandbox.Service) that serve it. pier is not an orchestrator: tasks are
// sandboxes their owner creates with SandboxSpec.Service.
type Service struct {
	ID          string
	Name        string
	Created     time.Time
	Mode        string
	Ports       []lb.Port     `json:",omitempty"`
	Sticky      time.Duration `json:",omitempty"`
	StopGrace   time.Duration
	VIPs        []ServiceVIP
	Publish     []PublishPort `json:",omitempty"`
	IngressSNAT bool          `json:",omitempty"`
}

// ServiceVIP is a service's address on one network (none in dnsrr mode).
type ServiceVIP struct {
	NetworkID string
	Addr      netip.Prefix `json:",omitempty"`
}

func (s *Service) id() string   { return s.ID }
func (s *Service) name() string { return s.Name }

const kindService = "services"

// LoadBalancer programs service virtual IPs inside sandbox namespaces (implemented by
// lb.Sandboxes).
type LoadBalancer interface {
	// Sync makes svcs the services of the sandbox at key, removing the others.
	Sync(ctx context.Context, key string, svcs []lb.Service) error
	// Set adds or changes one service in the sandbox at key.
	Set(ctx context.Context, key string, s lb.Service) error
	Forget(key string)
	// Established counts the sandbox's established TCP connections (draining).
	Established(ctx context.Context, key string) (int, error)
	// Listening reports whether a socket in the sandbox listens on one of ports
	// (a starting task becomes ready).
	Listening(ctx context.Context, key string, ports []lb.Port) (bool, error)
}

// CreateService creates a service and, in VIP mode, takes a virtual IP on each of its
// networks from the network's IPAM.
func (c *Controller) CreateService(ctx context.Context, spec ServiceSpec) (Service, error) {
	spec, err := c.withIngress(ctx, spec)
	if err != nil {
		return Service{}, err
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	svc, nets, err := c.newService(spec)
	if err != nil {
		return Service{}, err
	}
	global, err := c.checkServiceScope(nets)
	if err != nil {
		return Service{}, err
	}
	var u undo.Stack
	for _, n := range nets {
		v := ServiceVIP{NetworkID: n.ID}
		if svc.Mode == ModeVIP {
			addr, release, err := c.requestAddr(ctx, n, n.IPv4, netip.Addr{}, nil)
			if err != nil {
				return Service{}, u.Rollback(fmt.Errorf("allocating the virtual IP on network %s: %w", n.Name, err))
			}
			u.Push(release)
			v.Addr = addr
		}
		svc.VIPs = append(svc.VIPs, v)
	}
	if global {
		err = c.cluster.CreateService(ctx, *svc)
	} else {
		err = c.store.Put(ctx, kindService, svc.ID, svc)
	}
	if err != nil {
		return Service{}, u.Rollback(err)
	}
	c.mu.Lock()
	c.services[svc.ID] = svc
	c.mu.Unlock()
	c.publishService(ctx, svc)
	c.syncMesh(ctx)
	return *svc, nil
}

func (c *Controller) newService(spec ServiceSpec) (*Service, []*Network, error) {
	if err := validName("service", spec.Name); err != nil {
		return nil, nil, err
	}
	svc := &Service{ID: NewID(), Name: spec.Name, Created: time.Now().UTC(), Mode: spec.Mode,
		Ports: spec.Ports, Sticky: spec.Sticky, StopGrace: spec.StopGrace, Publish: spec.Publish, IngressSNAT: spec.IngressSNAT}
	if svc.Mode == "" {
		svc.Mode = ModeVIP
	}
	if svc.StopGrace == 0 {
		svc.StopGrace = DefaultServiceStopGrace
	}
	switch {
	case svc.Mode != ModeVIP && svc.Mode != ModeDNSRR:
		return nil, nil, errdefs.InvalidArgument("invalid endpoint mode %q: use vip or dnsrr", svc.Mode)
	case svc.Mode == ModeDNSRR && (len(svc.Ports) > 0 || svc.Sticky > 0):
		return nil, nil, errdefs.InvalidArgument("--port and --sticky need endpoint mode vip: in dnsrr mode clients connect to the tasks directly")
	case svc.StopGrace < 0 || svc.Sticky < 0:
		return nil, nil, errdefs.InvalidArgument("durations must not be negative")
	case svc.Sticky > 0 && svc.Sticky < time.Second:
		return nil, nil, errdefs.InvalidArgument("invalid sticky duration %v: at least 1s", svc.Sticky)
	case len(spec.Networks) == 0:
		return nil, nil, errdefs.InvalidArgument("a service needs at least one network")
	}
	if svc.Mode == ModeVIP && c.lb == nil {
		return nil, nil, errdefs.Unavailable("this controller has no load balancer: use --endpoint-mode dnsrr")
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	if err := c.checkPublish(svc); err != nil {
		return nil, nil, err
	}
	if _, err := lookup(c.services, "service", spec.Name); err == nil {
		return nil, nil, errdefs.Conflict("service name %q is already in use", spec.Name)
	}
	for _, sb := range c.sandboxes {
		if sb.Name == spec.Name {
			return nil, nil, errdefs.Conflict("service name %q is a sandbox's name: the name would resolve to both", spec.Name)
		}
	}
	var nets []*Network
	for _, ref := range spec.Networks {
		n, err := lookup(c.networks, "network", ref)
		if err != nil {
			return nil, nil, err
		}
		if err := c.serviceNetworkOK(svc, n, nets); err != nil {
			return nil, nil, err
		}
		nets = append(nets, n)
	}
	return svc, nets, nil
}

func (c *Controller) serviceNetworkOK(svc *Service, n *Network, seen []*Network) error {
	switch {
	case slices.Contains(seen, n):
		return errdefs.InvalidArgument("network %s is listed twice", n.Name)
	case n.Predefined:
		return errdefs.InvalidArgument("network %s is predefined: services need a user-defined network (no embedded DNS on %s)", n.Name, n.Name)
	case svc.Mode == ModeVIP && len(n.IPv4) == 0:
		return errdefs.InvalidArgument("network %s has no IPv4 subnet for the virtual IP", n.Name)
	}
	return nil
}

// Services lists the services, sorted by name.
func (c *Controller) Services(ctx context.Context) []Service {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Service, 0, len(c.services))
	for _, s := range c.services {
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Service) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Service returns a service by ID, name or unique ID prefix.
func (c *Controller) Service(ctx context.Context, ref string) (Service, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	s, err := lookup(c.services, "service", ref)
	if err != nil {
		return Service{}, err
	}
	return *s, nil
}

// ServiceTasks returns the sandboxes that are tasks of the service, sorted by name.
func (c *Controller) ServiceTasks(ctx context.Context, svc Service) []Sandbox {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []Sandbox
	for _, sb := range c.sandboxes {
		if sb.Service == svc.ID {
			out = append(out, *sb)
		}
	}
	slices.SortFunc(out, func(a, b Sandbox) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// DeleteService removes a service without tasks: its names, its VIPs in every
// sandbox, its addresses.
func (c *Controller) DeleteService(ctx context.Context, ref string) error {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	svc, err := c.Service(ctx, ref)
	if err != nil {
		return err
	}
	if tasks := c.ServiceTasks(ctx, svc); len(tasks) > 0 {
		return errdefs.Conflict("service %s has %d task(s) (%s): remove them first", svc.Name, len(tasks), tasks[0].Name)
	}
	if remote := c.remoteTasks(svc.ID); len(remote) > 0 {
		return errdefs.Conflict("service %s has %d task(s) on other nodes (%s on %s): remove them first", svc.Name, len(remote), remote[0].SandboxName, remote[0].Node.Name)
	}
	if err := c.deleteServiceRecord(ctx, &svc); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.services, svc.ID)
	c.mu.Unlock()
	c.unpublishService(ctx, &svc)
	c.syncMesh(ctx)
	for _, v := range svc.VIPs {
		if n := c.networkByID(v.NetworkID); n != nil && v.Addr.IsValid() {
			c.releaseVIP(ctx, n, v.Addr)
		}
	}
	return nil
}

func (c *Controller) deleteServiceRecord(ctx context.Context, svc *Service) error {
	if n := c.networkByID(svc.VIPs[0].NetworkID); n != nil && n.global() {
		return c.cluster.DeleteService(ctx, svc.ID)
	}
	return c.store.Delete(ctx, kindService, svc.ID)
}

func (c *Controller) releaseVIP(ctx context.Context, n *Network, addr netip.Prefix) {
	alloc, err := c.allocator(ctx, n.IPAMDriver)
	if err == nil {
		if p, ok := poolFor(n.IPv4, addr.Addr()); ok {
			err = alloc.ReleaseAddress(ctx, p.PoolID, addr.Addr())
		}
	}
	if err != nil {
		c.log.WarnContext(ctx, "releasing a virtual IP", "addr", addr, "err", err)
	}
}

// serviceOf returns the service a sandbox is a task of, if any.
func (c *Controller) serviceOf(sb *Sandbox) *Service {
	if sb == nil || sb.Service == "" {
		return nil
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.services[sb.Service]
}

// servicesOn returns the services with a VIP on network nid.
func (c *Controller) servicesOn(nid string) []*Service {
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []*Service
	for _, s := range c.services {
		if s.vipOn(nid).NetworkID != "" {
			out = append(out, s)
		}
	}
	return out
}

func (s *Service) vipOn(nid string) ServiceVIP {
	for _, v := range s.VIPs {
		if v.NetworkID == nid {
			return v
		}
	}
	return ServiceVIP{}
}

func vipRecordID(svcID, nid string) string { return "vip-" + svcID + "-" + nid }

// publishService makes a new (or restored) service visible: the VIP names, and the
// VIPs in every sandbox on its networks.
func (c *Controller) publishService(ctx context.Context, svc *Service) {
	for _, v := range svc.VIPs {
		n := c.networkByID(v.NetworkID)
		if n == nil {
			continue
		}
		if c.dns != nil && v.Addr.IsValid() {
			c.dns.Upsert(dns.Record{NetworkID: n.ID, NetworkName: n.Name, EndpointID: vipRecordID(svc.ID, n.ID),
				Names: []string{svc.Name}, Addr4: v.Addr.Addr()})
		}
		c.syncNetworkLB(ctx, n.ID)
	}
	c.publishMesh(ctx, svc)
}

// taskNames are the extra DNS names of a task's endpoint on network nid: tasks.NAME,
// and NAME itself in dnsrr mode. A task that is starting or draining has none.
func (c *Controller) taskNames(sb *Sandbox, nid string) []string {
	svc := c.serviceOf(sb)
	if svc == nil || !sb.serving() || svc.vipOn(nid).NetworkID == "" {
		return nil
	}
	if svc.Mode == ModeDNSRR {
		return []string{svc.Name, "tasks." + svc.Name}
	}
	return []string{"tasks." + svc.Name}
}

// lbService is what sandboxes on network nid program for svc: its VIP there and
// backends, the addresses there of its serving tasks (from serviceBackends).
func (c *Controller) lbService(svc *Service, nid string, backends map[string][]netip.Addr) (lb.Service, bool) {
	v := svc.vipOn(nid)
	if svc.Mode != ModeVIP || !v.Addr.IsValid() {
		return lb.Service{}, false
	}
	return lb.Service{ID: lbID(svc.ID, nid), VIP: v.Addr.Addr(), Ports: svc.Ports, Sticky: svc.Sticky,
		Backends: backends[svc.ID]}, true
}

// serviceBackends returns, by service ID, the IPv4 addresses on network nid of the
// serving tasks of every node: one pass over the network's endpoints, whatever the
// number of services.
func (c *Controller) serviceBackends(nid string) map[string][]netip.Addr {
	out := map[string][]netip.Addr{}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for ep := range c.epIndex.byNetwork[nid] {
		sb := c.sandboxes[ep.SandboxID]
		if sb != nil && sb.serving() && ep.Addr4.IsValid() {
			out[sb.Service] = append(out[sb.Service], ep.Addr4.Addr())
		}
	}
	for _, ep := range c.remote[nid] {
		if ep.Service != "" && !ep.Starting && !ep.Draining && ep.SandboxID != "" && ep.Addr4.IsValid() {
			out[ep.Service] = append(out[ep.Service], ep.Addr4.Addr())
		}
	}
	return out
}

func lbID(svcID, nid string) string { return svcID[:12] + "_" + nid[:12] }

// syncNetworkLB brings every local sandbox joined to network nid in line with the
// services on it. Called with opMu held; errors are logged (the sandbox keeps its
// last programmed state, and the next change retries).
func (c *Controller) syncNetworkLB(ctx context.Context, nid string) {
	for _, sb := range c.joinedSandboxes(nid) {
		c.syncSandboxLB(ctx, sb)
	}
}

// syncServiceLB reprograms one service (its backends changed) in every local sandbox
// on network nid: O(sandboxes there), not O(services).
func (c *Controller) syncServiceLB(ctx context.Context, svc *Service, nid string) {
	if c.lb == nil {
		return
	}
	s, ok := c.lbService(svc, nid, c.serviceBackends(nid))
	if !ok {
		return
	}
	for _, sb := range c.joinedSandboxes(nid) {
		if err := c.lb.Set(ctx, sb.Key, s); err != nil {
			c.log.ErrorContext(ctx, "programming service load balancing", "sandbox", sb.Name, "service", svc.Name, "err", err)
		}
	}
	if n := c.ingressNetwork(); n != nil && n.ID == nid {
		c.publishMesh(ctx, svc)
	}
}

// joinedSandboxes are the local sandboxes joined to network nid (not host-network).
func (c *Controller) joinedSandboxes(nid string) []*Sandbox {
	if c.lb == nil {
		return nil
	}
	seen := map[string]bool{}
	var out []*Sandbox
	for _, ep := range c.networkEndpoints(nid) {
		if ep.SandboxID == "" || seen[ep.SandboxID] {
			continue
		}
		seen[ep.SandboxID] = true
		c.mu.RLock()
		sb := c.sandboxes[ep.SandboxID]
		c.mu.RUnlock()
		if sb != nil && !sb.HostNetwork {
			out = append(out, sb)
		}
	}
	return out
}

// syncSandboxLB programs in sb the services of every network it is joined to.
func (c *Controller) syncSandboxLB(ctx context.Context, sb *Sandbox) {
	if c.lb == nil || sb.HostNetwork {
		return
	}
	var want []lb.Service
	for _, ep := range c.sandboxEndpoints(sb.ID) {
		svcs := c.servicesOn(ep.NetworkID)
		if len(svcs) == 0 {
			continue
		}
		backends := c.serviceBackends(ep.NetworkID)
		for _, svc := range svcs {
			if s, ok := c.lbService(svc, ep.NetworkID, backends); ok {
				want = append(want, s)
			}
		}
	}
	if err := c.lb.Sync(ctx, sb.Key, want); err != nil {
		c.log.ErrorContext(ctx, "programming service load balancing", "sandbox", sb.Name, "err", err)
	}
}

// refreshServices follows a join or leave of sb: its own VIP table, and, when it is a
// task, every sandbox on its service's networks (the backends changed).
func (c *Controller) refreshServices(ctx context.Context, sb *Sandbox) {
	c.syncSandboxLB(ctx, sb)
	c.meshJoined(ctx, sb)
	if svc := c.serviceOf(sb); svc != nil {
		for _, v := range svc.VIPs {
			c.syncServiceLB(ctx, svc, v.NetworkID)
		}
	}
}

// loadServices restores the service records (their VIPs are replayed on the IPAM with
// the endpoints' addresses, see restore).
func (c *Controller) loadServices(ctx context.Context) error {
	svcs, err := store.List[Service](ctx, c.store, kindService)
	if err != nil {
		return err
	}
	for i := range svcs {
		c.services[svcs[i].ID] = &svcs[i]
	}
	return nil
}
