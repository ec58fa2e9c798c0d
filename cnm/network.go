package cnm

import (
	"context"
	"net/netip"
	"sort"
	"time"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
	"github.com/piernet/pier/ipam"
)

// IPAM driver names.
const (
	IPAMDefault = "default"
	IPAMNull    = "null"
)

// PoolSpec is one requested pool (Docker's IPAM.Config entry).
type PoolSpec struct {
	Subnet  netip.Prefix // zero = automatic
	IPRange netip.Prefix
	Gateway netip.Addr
	Aux     map[string]netip.Addr
}

// NetworkSpec describes a network to create.
type NetworkSpec struct {
	Name       string
	Driver     string // "" = bridge
	Internal   bool
	Attachable bool
	EnableIPv6 bool
	// DisableIPv4 makes an IPv6-only network (Docker's EnableIPv4=false); it needs
	// EnableIPv6 or an IPv6 subnet.
	DisableIPv4 bool
	Options     map[string]string // driver options (-o)
	Labels      map[string]string
	IPAMDriver  string // "" = default
	IPAMOptions map[string]string
	IPAM        []PoolSpec
	Predefined  bool // a network the controller creates itself (bridge, host, none)
	// Ingress marks the routing mesh's network (Docker's --ingress): tasks of services
	// with ingress-published ports join it; nothing else may.
	Ingress bool
}

// Pool is a pool granted to a network.
type Pool struct {
	PoolID string
	// AddressSpace is the IPAM's name of the pool's space ("" in records from before
	// it was kept: the local default).
	AddressSpace string `json:",omitempty"`
	Subnet       netip.Prefix
	IPRange      netip.Prefix          `json:",omitempty"`
	Gateway      netip.Prefix          `json:",omitempty"` // gateway address with the pool's length
	Aux          map[string]netip.Addr `json:",omitempty"`
}

// Network is a network record. Values returned by the controller are copies; their maps
// must be treated as read-only.
type Network struct {
	ID          string
	Name        string
	Driver      string
	Scope       driver.Scope
	Created     time.Time
	Internal    bool
	Attachable  bool
	EnableIPv6  bool
	DisableIPv4 bool `json:",omitempty"`
	Predefined  bool
	Options     map[string]string
	Labels      map[string]string
	IPAMDriver  string
	IPAMOptions map[string]string
	IPv4        []Pool
	IPv6        []Pool
	// VNIs are the cluster-allocated IDs of a global network whose driver needs them.
	VNIs []uint32 `json:",omitempty"`
	// IfacePrefix names the network's interfaces inside sandboxes <IfacePrefix><N>, as
	// the driver decoded it from Options; "" = "eth".
	IfacePrefix string `json:",omitempty"`
	Ingress     bool   `json:",omitempty"`
}

func (n *Network) id() string   { return n.ID }
func (n *Network) name() string { return n.Name }

const kindNetwork = "networks"

// CreateNetwork creates a network: its driver options are validated first (nothing is
// allocated for a network the driver would refuse), then IPAM pools, the driver's
// network and the record.
func (c *Controller) CreateNetwork(ctx context.Context, spec NetworkSpec) (Network, error) {
	n, drv, err := c.prepareNetwork(ctx, spec)
	if err != nil {
		return Network{}, err
	}
	if n.global() {
		return c.createGlobalNetwork(ctx, n, drv, spec.IPAM)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	if err := c.checkNameFree(n.Name); err != nil { // again, now serialised
		return Network{}, err
	}
	var u undo.Stack
	if err := c.allocatePools(ctx, n, spec.IPAM, &u); err != nil {
		return Network{}, u.Rollback(err)
	}
	if err := drv.CreateNetwork(ctx, n.driverConfig()); err != nil {
		return Network{}, u.Rollback(err)
	}
	u.Push(func() error { return drv.DeleteNetwork(context.WithoutCancel(ctx), n.ID) })
	if err := c.store.Put(ctx, kindNetwork, n.ID, n); err != nil {
		return Network{}, u.Rollback(err)
	}
	c.mu.Lock()
	c.networks[n.ID] = n
	c.mu.Unlock()
	c.log.InfoContext(ctx, "network created", "name", n.Name, "id", n.ID[:12], "driver", n.Driver)
	return *n, nil
}

func (c *Controller) prepareNetwork(ctx context.Context, spec NetworkSpec) (*Network, driver.Driver, error) {
	if err := validNetworkName(spec.Name); err != nil {
		return nil, nil, err
	}
	if spec.Driver == "" {
		spec.Driver = "bridge"
	}
	drv, err := c.driver(ctx, spec.Driver)
	if err != nil {
		return nil, nil, err
	}
	if err := c.checkNameFree(spec.Name); err != nil {
		return nil, nil, err
	}
	capa := drv.Capability()
	if capa.Singleton && !spec.Predefined {
		return nil, nil, errdefs.Forbidden("only one instance of %q network is allowed", spec.Driver)
	}
	decoded, err := decodeOptions(drv, spec.Options)
	if err != nil {
		return nil, nil, err
	}
	ipamDriver, err := c.ipamDriverFor(ctx, spec.IPAMDriver, capa)
	if err != nil {
		return nil, nil, err
	}
	n := &Network{ID: NewID(), Name: spec.Name, Driver: spec.Driver, Scope: capa.DataScope,
		Created: time.Now().UTC(), Internal: spec.Internal, Attachable: spec.Attachable,
		EnableIPv6: spec.EnableIPv6, DisableIPv4: spec.DisableIPv4, Predefined: spec.Predefined, Options: spec.Options, Labels: spec.Labels,
		IPAMDriver: ipamDriver, IPAMOptions: spec.IPAMOptions, IfacePrefix: decoded.IfacePrefix, Ingress: spec.Ingress}
	return n, drv, nil
}

// decodeOptions validates a network's driver options with a driver that can (before
// anything is allocated) and returns what of them the controller acts on.
func decodeOptions(drv driver.Driver, opts map[string]string) (driver.NetworkOptions, error) {
	d, ok := drv.(driver.OptionDecoder)
	if !ok {
		return driver.NetworkOptions{}, nil
	}
	return d.DecodeOptions(opts)
}

func (c *Controller) checkNameFree(name string) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, o := range c.networks {
		if o.Name == name {
			return errdefs.Conflict("network with name %s already exists", name)
		}
	}
	return nil
}

func (c *Controller) ipamDriverFor(ctx context.Context, name string, capa driver.Capability) (string, error) {
	if capa.NoInterface {
		return IPAMNull, nil
	}
	if name == "" {
		name = IPAMDefault
	}
	if _, err := c.allocator(ctx, name); err != nil {
		return "", err
	}
	return name, nil
}

func (n *Network) driverConfig() driver.NetworkConfig {
	nc := driver.NetworkConfig{ID: n.ID, Name: n.Name, Options: n.Options, Internal: n.Internal,
		EnableIPv6: n.EnableIPv6, Predefined: n.Predefined, VNIs: n.VNIs}
	for _, p := range n.IPv4 {
		nc.IPv4 = append(nc.IPv4, p.ipamData())
	}
	for _, p := range n.IPv6 {
		nc.IPv6 = append(nc.IPv6, p.ipamData())
	}
	return nc
}

func (p Pool) ipamData() driver.IPAMData {
	space := p.AddressSpace
	if space == "" {
		space = ipam.SpaceLocal
	}
	return driver.IPAMData{AddressSpace: space, Pool: p.Subnet, Gateway: p.Gateway, Aux: p.Aux}
}

// Network returns the network with the given ID, name or unique ID prefix.
func (c *Controller) Network(ctx context.Context, ref string) (Network, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	n, err := lookup(c.networks, "network", ref)
	if err != nil {
		return Network{}, err
	}
	return *n, nil
}

// capability returns the capability of network n's driver, zero when the driver is
// not loaded (a plugin is not activated for this: it declares none of the rules).
func (c *Controller) capability(n *Network) driver.Capability {
	d, err := c.drivers.Get(n.Driver)
	if err != nil {
		return driver.Capability{}
	}
	return d.Capability()
}

// UsesHostNamespace reports whether sandboxes on n are the host's own namespace.
func (c *Controller) UsesHostNamespace(n Network) bool { return c.capability(&n).HostNamespace }

// networkByID returns the network with exactly this ID, or nil (no copy: read-only).
func (c *Controller) networkByID(id string) *Network {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.networks[id]
}

// Networks lists all networks sorted by name.
func (c *Controller) Networks(ctx context.Context) []Network {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make([]Network, 0, len(c.networks))
	for _, n := range c.networks {
		out = append(out, *n)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// DeleteNetwork deletes a network that has no endpoints.
func (c *Controller) DeleteNetwork(ctx context.Context, ref string) error {
	if n, err := c.Network(ctx, ref); err == nil && n.global() {
		return c.deleteGlobalNetwork(ctx, n)
	}
	c.opMu.Lock()
	defer c.opMu.Unlock()
	n, err := c.Network(ctx, ref)
	if err != nil {
		return err
	}
	if n.Predefined {
		return errdefs.Forbidden("%s is a pre-defined network and cannot be removed", n.Name)
	}
	if eps := c.networkEndpoints(n.ID); len(eps) > 0 {
		return errdefs.Forbidden("error while removing network: network %s id %s has active endpoints", n.Name, n.ID)
	}
	if svcs := c.servicesOn(n.ID); len(svcs) > 0 {
		return errdefs.Forbidden("error while removing network: network %s is used by service %s", n.Name, svcs[0].Name)
	}
	return c.deleteNetwork(ctx, &n)
}

func (c *Controller) deleteNetwork(ctx context.Context, n *Network) error {
	drv, err := c.driver(ctx, n.Driver)
	if err != nil {
		return err
	}
	if err := drv.DeleteNetwork(ctx, n.ID); err != nil {
		return err
	}
	if err := c.store.Delete(ctx, kindNetwork, n.ID); err != nil {
		return err
	}
	c.mu.Lock()
	delete(c.networks, n.ID)
	c.mu.Unlock()
	c.releasePools(ctx, n)
	c.log.InfoContext(ctx, "network deleted", "name", n.Name, "id", n.ID[:12])
	return nil
}

func (c *Controller) networkEndpoints(nid string) []*Endpoint {
	c.mu.RLock()
	defer c.mu.RUnlock()
	eps := make([]*Endpoint, 0, len(c.epIndex.byNetwork[nid]))
	for ep := range c.epIndex.byNetwork[nid] {
		eps = append(eps, ep)
	}
	return eps
}
