package cnm

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"sort"
	"time"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/etcfiles"
	"github.com/piernet/pier/portmap"
)

// SandboxSpec describes a sandbox to create.
type SandboxSpec struct {
	Name        string
	Hostname    string // "" = first 12 characters of the ID
	HostNetwork bool   // the sandbox is the host's own namespace (network "host")
	DNS         []netip.Addr
	DNSSearch   []string
	DNSOptions  []string
	ExtraHosts  []etcfiles.HostEntry
	Ports       []portmap.Spec // published ports (-p), on the gateway endpoint's network
	// Service makes the sandbox a task of that service (name or ID): it joins the
	// service's networks and serves its name.
	Service string
}

// Sandbox is a sandbox record. Values returned by the controller are copies.
type Sandbox struct {
	ID          string
	Name        string
	Hostname    string
	Key         string // network namespace path
	Created     time.Time
	HostNetwork bool                 `json:",omitempty"`
	DNS         []netip.Addr         `json:",omitempty"`
	DNSSearch   []string             `json:",omitempty"`
	DNSOptions  []string             `json:",omitempty"`
	ExtraHosts  []etcfiles.HostEntry `json:",omitempty"`
	Ports       []portmap.Spec       `json:",omitempty"`
	// GatewayEndpoint is the endpoint providing the default route ("" = none).
	GatewayEndpoint string `json:",omitempty"`
	// Published are the actual port bindings made for Ports.
	Published []portmap.Binding `json:",omitempty"`
	// Service is the ID of the service the sandbox is a task of. Starting is set until
	// the task listens on one of the service's ports (services without ports take
	// their tasks at once); Draining once its removal began. In both it is out of
	// every selection and DNS answer.
	Service  string `json:",omitempty"`
	Starting bool   `json:",omitempty"`
	Draining bool   `json:",omitempty"`
}

func (s *Sandbox) id() string { return s.ID }

// serving: the sandbox is a task that may be chosen for new connections.
func (s *Sandbox) serving() bool { return s.Service != "" && !s.Starting && !s.Draining }
func (s *Sandbox) name() string  { return s.Name }

const kindSandbox = "sandboxes"

// Dir is the directory holding the sandbox's hosts, resolv.conf and hostname files.
func (c *Controller) Dir(s Sandbox) string { return c.sandboxDir(s.ID) }

// CreateSandbox creates a sandbox: a pinned network namespace with loopback up (or the
// host namespace) and its hosts/resolv.conf/hostname files.
func (c *Controller) CreateSandbox(ctx context.Context, spec SandboxSpec) (Sandbox, error) {
	svc, err := c.taskService(spec)
	if err != nil {
		return Sandbox{}, err
	}
	sb, err := c.createSandbox(ctx, spec, svc)
	if err != nil || svc == nil {
		return sb, err
	}
	if sb, err = c.joinServiceNetworks(ctx, sb, svc); err == nil && sb.Starting {
		c.awaitReady(sb)
	}
	return sb, err
}

func (c *Controller) createSandbox(ctx context.Context, spec SandboxSpec, svc *Service) (Sandbox, error) {
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if svc != nil {
		// Host-mode published ports: the task publishes them itself, on this node.
		spec.Ports = append(slices.Clone(spec.Ports), svc.hostPorts()...)
	}
	sb, err := c.newSandbox(spec)
	if err != nil {
		return Sandbox{}, err
	}
	if svc != nil {
		sb.Service = svc.ID
		sb.Starting = c.gatesReadiness(svc)
	}
	if sb.Key, err = c.sandboxKey(ctx, sb); err != nil {
		return Sandbox{}, err
	}
	if err := c.writeFiles(sb); err != nil {
		return Sandbox{}, c.destroySandboxOS(ctx, sb, err)
	}
	if err := c.store.Put(ctx, kindSandbox, sb.ID, sb); err != nil {
		return Sandbox{}, c.destroySandboxOS(ctx, sb, err)
	}
	c.mu.Lock()
	c.sandboxes[sb.ID] = sb
	c.mu.Unlock()
	return *sb, nil
}

func (c *Controller) newSandbox(spec SandboxSpec) (*Sandbox, error) {
	if spec.Name == "" {
		return nil, errdefs.InvalidArgument("a sandbox needs a name")
	}
	if err := validName("sandbox", spec.Name); err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, o := range c.sandboxes {
		if o.Name == spec.Name {
			return nil, errdefs.Conflict("sandbox name %q is already in use by %s", spec.Name, o.ID[:12])
		}
	}
	sb := &Sandbox{ID: NewID(), Name: spec.Name, Hostname: spec.Hostname, Created: time.Now().UTC(),
		HostNetwork: spec.HostNetwork, DNS: spec.DNS, DNSSearch: spec.DNSSearch, DNSOptions: spec.DNSOptions,
		ExtraHosts: spec.ExtraHosts, Ports: spec.Ports}
	if sb.Hostname == "" {
		sb.Hostname = sb.ID[:12]
	}
	return sb, nil
}

func (c *Controller) sandboxKey(ctx context.Context, sb *Sandbox) (string, error) {
	if sb.HostNetwork {
		return c.os.HostKey(), nil
	}
	return c.os.Create(ctx, sb.ID)
}

func (c *Controller) destroySandboxOS(ctx context.Context, sb *Sandbox, cause error) error {
	if err := c.os.Destroy(context.WithoutCancel(ctx), sb.Key); err != nil {
		c.log.WarnContext(ctx, "destroying sandbox namespace", "sandbox", sb.Name, "err", err)
	}
	_ = os.RemoveAll(c.sandboxDir(sb.ID))
	return cause
}

// Sandbox returns the sandbox with the given ID, name or unique ID prefix.
func (c *Controller) Sandbox(ctx context.Context, ref string) (Sandbox, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	sb, err := lookup(c.sandboxes, "sandbox", ref)
	if err != nil {
		return Sandbox{}, err
	}
	return *sb, nil
}

// Sandboxes lists all sandboxes sorted by name.
func (c *Controller) Sandboxes(ctx context.Context) []Sandbox {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Sandbox, 0, len(c.sandboxes))
	for _, sb := range c.sandboxes {
		out = append(out, *sb)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// SandboxEndpoints lists the endpoints joined to sandbox ref, sorted by interface name.
func (c *Controller) SandboxEndpoints(ctx context.Context, ref string) ([]Endpoint, error) {
	sb, err := c.Sandbox(ctx, ref)
	if err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []Endpoint
	for _, ep := range c.sandboxEndpointsLocked(sb.ID) {
		out = append(out, *ep)
	}
	return out, nil
}

func (c *Controller) sandboxEndpoints(sid string) []*Endpoint {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.sandboxEndpointsLocked(sid)
}

func (c *Controller) sandboxEndpointsLocked(sid string) []*Endpoint {
	eps := make([]*Endpoint, 0, len(c.epIndex.bySandbox[sid]))
	for ep := range c.epIndex.bySandbox[sid] {
		eps = append(eps, ep)
	}
	sort.Slice(eps, func(i, j int) bool { return ifIndex(eps[i].IfName) < ifIndex(eps[j].IfName) })
	return eps
}

// DeleteSandbox removes a sandbox. With endpoints still joined or processes running in
// it, it is refused unless force is set; then the processes are stopped (SIGTERM,
// SIGKILL after the grace period, as docker rm -f) and the endpoints leave and (when
// created by Connect) are deleted.
func (c *Controller) DeleteSandbox(ctx context.Context, ref string, force bool) error {
	if err := c.drainTask(ctx, ref, force); err != nil {
		return err
	}
	if force {
		// Outside opMu: the grace period must not stall every other operation.
		if err := c.stopProcesses(ctx, ref); err != nil {
			return err
		}
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	sb, err := c.Sandbox(ctx, ref)
	if err != nil {
		return err
	}
	if err := c.refuseBusy(ctx, sb, force); err != nil {
		return err
	}
	eps := c.sandboxEndpoints(sb.ID)
	if len(eps) > 0 && !force {
		return errdefs.Conflict("sandbox %s is connected to %d network(s): disconnect first or force", sb.Name, len(eps))
	}
	for _, ep := range eps {
		if err := c.disconnect(ctx, &sb, ep); err != nil {
			return err
		}
	}
	return c.deleteSandbox(ctx, &sb)
}

func (c *Controller) stopProcesses(ctx context.Context, ref string) error {
	sb, err := c.Sandbox(ctx, ref)
	if err != nil {
		return err
	}
	n, err := c.os.StopProcesses(ctx, sb.Key, c.stopGrace)
	if err != nil {
		return fmt.Errorf("stopping the processes of sandbox %s: %w", sb.Name, err)
	}
	if n > 0 {
		c.log.Info("stopped sandbox processes", "sandbox", sb.Name, "processes", n)
	}
	return nil
}

// refuseBusy refuses to delete a sandbox with processes in it, unless force is set: then
// it stops those that entered since stopProcesses without a grace period.
func (c *Controller) refuseBusy(ctx context.Context, sb Sandbox, force bool) error {
	if force {
		_, err := c.os.StopProcesses(ctx, sb.Key, 0)
		return err
	}
	n, err := c.os.Processes(ctx, sb.Key)
	if err != nil {
		return err
	}
	if n > 0 {
		return errdefs.Conflict("sandbox %s has %d process(es) running in it: stop them first or force", sb.Name, n)
	}
	return nil
}

// Processes returns how many processes run in the sandbox's namespace.
func (c *Controller) Processes(ctx context.Context, sb Sandbox) (int, error) {
	return c.os.Processes(ctx, sb.Key)
}

func (c *Controller) deleteSandbox(ctx context.Context, sb *Sandbox) error {
	c.dropDNS(sb)
	if c.lb != nil {
		c.lb.Forget(sb.Key)
	}
	if c.mesh != nil {
		c.mesh.ForgetReturn(sb.Key)
	}
	if err := c.os.Destroy(ctx, sb.Key); err != nil {
		return err
	}
	if err := os.RemoveAll(c.sandboxDir(sb.ID)); err != nil {
		return err
	}
	if err := c.store.Delete(ctx, kindSandbox, sb.ID); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.sandboxes, sb.ID)
	c.mu.Unlock()
	return nil
}
