// Package subif is the engine of pier's sub-interface drivers, macvlan and ipvlan: a
// network is a parent link in the host namespace (an existing interface, an 802.1q
// sub-interface pier creates, or a pier-created internal parent), and each endpoint is
// a sub-interface of it created directly inside the sandbox namespace (no move between
// namespaces). The drivers differ only in their Kind. It never configures addresses
// (the controller does) and owns nothing but the parents it created and the
// sub-interfaces of its endpoints.
//
// Lock order: Driver.mu only; kernel I/O happens outside it.
package subif

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
)

// Kind is what differs between the sub-interface drivers.
type Kind struct {
	Name    string   // driver name and kernel link kind: "macvlan", "ipvlan"
	ModeOpt string   // the mode option, e.g. "macvlan_mode"
	Modes   []string // valid modes; the first is the default
	// NewLink returns the sub-interface to create with attrs in mode.
	NewLink func(attrs netlink.LinkAttrs, mode string) netlink.Link
	// OwnMAC: sub-interfaces have their own MAC (macvlan). Otherwise they share the
	// parent's and a requested MAC is refused (ipvlan).
	OwnMAC bool
	// Routed reports modes that route rather than switch (ipvlan l3, l3s): no gateway,
	// a connected default route instead.
	Routed func(mode string) bool
	// DeriveMAC picks a MAC for an endpoint without one (OwnMAC kinds).
	DeriveMAC func(addr4 netip.Addr, endpointID string) net.HardwareAddr
}

// Driver is a sub-interface network driver.
type Driver struct {
	kind      *Kind
	k         Kernel
	log       *slog.Logger
	supported atomic.Bool // the kernel has the link kind (probed once)

	mu       sync.Mutex // guards the fields below
	networks map[string]*network
	joins    map[string]join // endpoint ID → where it is joined
}

type network struct {
	id     string
	cfg    Config
	parent string // resolved parent name
	owned  bool   // pier created the parent: it goes with the network
	v4, v6 []driver.IPAMData
}

type join struct{ key, ifName string }

// New returns a driver of kind on kernel k.
func New(kind *Kind, k Kernel, log *slog.Logger) *Driver {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Driver{kind: kind, k: k, log: log.With("component", kind.Name),
		networks: map[string]*network{}, joins: map[string]join{}}
}

// Name implements driver.Driver.
func (d *Driver) Name() string { return d.kind.Name }

// Capability implements driver.Driver. Docker's macvlan and ipvlan are local-data,
// global-connectivity drivers: their sandboxes sit on a physical segment.
func (d *Driver) Capability() driver.Capability {
	return driver.Capability{DataScope: driver.ScopeLocal, ConnectivityScope: driver.ScopeGlobal}
}

// PublishesPorts reports that these networks cannot publish ports: sandboxes are
// reached at their own addresses on the parent's segment. The controller refuses port
// mappings on such networks.
func (d *Driver) PublishesPorts() bool { return false }

// CreateNetwork implements driver.Driver: it resolves (or creates) the parent and
// checks the kernel supports the link kind.
func (d *Driver) CreateNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	n, err := d.validate(nc)
	if err != nil {
		return err
	}
	var u undo.Stack
	parent, err := d.ensureParent(n, &u)
	if err == nil {
		err = d.probe(parent, n.id)
	}
	if err != nil {
		return u.Rollback(fmt.Errorf("%s network %q: %w", d.kind.Name, nc.Name, err))
	}
	u.Release()
	d.mu.Lock()
	d.networks[n.id] = n
	d.mu.Unlock()
	return nil
}

// RestoreNetwork implements driver.Restorer: like CreateNetwork, reusing the parent.
func (d *Driver) RestoreNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	return d.CreateNetwork(ctx, nc)
}

func (d *Driver) validate(nc driver.NetworkConfig) (*network, error) {
	cfg, err := ParseOptions(d.kind, nc.Internal, nc.Options)
	if err != nil {
		return nil, err
	}
	n := &network{id: nc.ID, cfg: cfg, parent: cfg.Parent, v4: nc.IPv4, v6: nc.IPv6}
	if n.parent == "" {
		n.parent = internalPrefix + short(nc.ID)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, o := range d.networks {
		if o.id != n.id && o.parent == n.parent {
			return nil, errdefs.Conflict("network %s is already using parent interface %s", short(o.id), n.parent)
		}
	}
	return n, nil
}

// DeleteNetwork implements driver.Driver; a parent pier created goes with it.
func (d *Driver) DeleteNetwork(ctx context.Context, nid string) error {
	n, err := d.network(nid)
	if errdefs.Is(err, errdefs.KindNotFound) {
		return nil // already gone (the contract: deletes are idempotent)
	}
	if err != nil {
		return err
	}
	if err := d.deleteParent(n); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.networks, nid)
	d.mu.Unlock()
	return nil
}

func (d *Driver) network(nid string) (*network, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[nid]
	if !ok {
		return nil, errdefs.NotFound("%s network %s not found", d.kind.Name, short(nid))
	}
	return n, nil
}

// CreateEndpoint implements driver.Driver: it settles the endpoint's MAC.
func (d *Driver) CreateEndpoint(ctx context.Context, ec driver.EndpointConfig) (driver.EndpointInfo, error) {
	if _, err := d.network(ec.NetworkID); err != nil {
		return driver.EndpointInfo{}, err
	}
	if !d.kind.OwnMAC {
		if ec.MAC != nil {
			return driver.EndpointInfo{}, errdefs.InvalidArgument("%s endpoints cannot have their own MAC address: they share the parent's", d.kind.Name)
		}
		return driver.EndpointInfo{}, nil
	}
	mac := ec.MAC
	if mac == nil {
		mac = d.kind.DeriveMAC(ec.Addr4.Addr(), ec.EndpointID)
	}
	return driver.EndpointInfo{MAC: mac}, nil
}

// DeleteEndpoint implements driver.Driver (nothing is left once the endpoint left).
func (d *Driver) DeleteEndpoint(ctx context.Context, nid, eid string) error { return nil }

// Join implements driver.Driver: the sub-interface is created inside the sandbox,
// already named req.IfName.
func (d *Driver) Join(ctx context.Context, req driver.JoinRequest) (driver.JoinResult, error) {
	n, err := d.network(req.NetworkID)
	if err != nil {
		return driver.JoinResult{}, err
	}
	if err := d.createInSandbox(n, req); err != nil {
		return driver.JoinResult{}, err
	}
	d.mu.Lock()
	d.joins[req.EndpointID] = join{key: req.SandboxKey, ifName: req.IfName}
	d.mu.Unlock()
	return d.joinResult(n, req), nil
}

func (d *Driver) createInSandbox(n *network, req driver.JoinRequest) error {
	parent, err := d.k.LinkByName("", n.parent)
	if err != nil {
		return fmt.Errorf("finding parent %s: %w", n.parent, err)
	}
	fd, closeFd, err := d.k.OpenSandbox(req.SandboxKey)
	if err != nil {
		return err
	}
	defer closeFd()
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.ParentIndex, attrs.MTU, attrs.Namespace = req.IfName, parent.Attrs().Index, n.cfg.MTU, fd
	if d.kind.OwnMAC {
		attrs.HardwareAddr = req.MAC
	}
	l := d.kind.NewLink(attrs, n.cfg.Mode)
	err = d.k.LinkAdd(l)
	if errors.Is(err, unix.EEXIST) && d.removeStale(req.SandboxKey, req.IfName) == nil {
		err = d.k.LinkAdd(l) // a leftover of an interrupted join
	}
	if err != nil {
		return fmt.Errorf("creating %s interface %s on %s: %w", d.kind.Name, req.IfName, n.parent, err)
	}
	return nil
}

// removeStale deletes a sub-interface of this kind named ifName in the sandbox.
func (d *Driver) removeStale(key, ifName string) error {
	l, err := d.k.LinkByName(key, ifName)
	if err != nil {
		return err
	}
	if l.Type() != d.kind.Name {
		return errdefs.Conflict("sandbox already has an interface %s", ifName)
	}
	return d.k.LinkDel(key, l)
}

func (d *Driver) joinResult(n *network, req driver.JoinRequest) driver.JoinResult {
	if d.kind.Routed != nil && d.kind.Routed(n.cfg.Mode) {
		res := driver.JoinResult{DisableGateway: true}
		for _, a := range []struct {
			addr netip.Prefix
			dst  string
		}{{req.Addr4, "0.0.0.0/0"}, {req.Addr6, "::/0"}} {
			if a.addr.IsValid() {
				res.StaticRoutes = append(res.StaticRoutes, driver.StaticRoute{Destination: netip.MustParsePrefix(a.dst)})
			}
		}
		return res
	}
	if n.cfg.Internal {
		return driver.JoinResult{DisableGateway: true}
	}
	return driver.JoinResult{Gateway4: gatewayFor(n.v4, req.Addr4), Gateway6: gatewayFor(n.v6, req.Addr6)}
}

// gatewayFor returns the gateway of the subnet holding addr.
func gatewayFor(pools []driver.IPAMData, addr netip.Prefix) netip.Addr {
	if !addr.IsValid() {
		return netip.Addr{}
	}
	for _, p := range pools {
		if p.Pool.Contains(addr.Addr()) && p.Gateway.IsValid() {
			return p.Gateway.Addr()
		}
	}
	return netip.Addr{}
}

// Leave implements driver.Driver: the sub-interface is deleted inside the sandbox.
func (d *Driver) Leave(ctx context.Context, nid, eid string) error {
	d.mu.Lock()
	j, ok := d.joins[eid]
	delete(d.joins, eid)
	d.mu.Unlock()
	if !ok {
		return nil
	}
	l, err := d.k.LinkByName(j.key, j.ifName)
	if err != nil || l.Type() != d.kind.Name {
		return nil // gone (with its sandbox, or already)
	}
	if err := d.k.LinkDel(j.key, l); err != nil && !isNotFound(err) {
		return fmt.Errorf("deleting %s in sandbox: %w", j.ifName, err)
	}
	return nil
}

// ProgramExternalConnectivity implements driver.Driver: nothing to program.
func (d *Driver) ProgramExternalConnectivity(ctx context.Context, nid, eid string) error { return nil }

// RevokeExternalConnectivity implements driver.Driver: nothing to revoke.
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, nid, eid string) error { return nil }

// RestoreEndpoint implements driver.Restorer: a joined endpoint is intact while its
// sub-interface is in the sandbox.
func (d *Driver) RestoreEndpoint(ctx context.Context, ec driver.EndpointConfig, jr *driver.JoinRequest) (bool, error) {
	if jr == nil {
		return true, nil
	}
	d.mu.Lock()
	d.joins[ec.EndpointID] = join{key: jr.SandboxKey, ifName: jr.IfName}
	d.mu.Unlock()
	l, err := d.k.LinkByName(jr.SandboxKey, jr.IfName)
	return err == nil && l.Type() == d.kind.Name, nil
}

// Cleanup implements driver.Restorer: it deletes parents pier created for networks
// that no longer exist, and leftover probes.
func (d *Driver) Cleanup(ctx context.Context, live driver.Live) error {
	links, err := d.k.LinkList()
	if err != nil {
		return fmt.Errorf("listing links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if !d.isOwnedStale(l, live.Networks) {
			continue
		}
		d.log.InfoContext(ctx, "removing leftover interface", "name", l.Attrs().Name)
		if err := d.k.LinkDel("", l); err != nil && !isNotFound(err) {
			errs = append(errs, fmt.Errorf("removing leftover %s: %w", l.Attrs().Name, err))
		}
	}
	return errors.Join(errs...)
}
