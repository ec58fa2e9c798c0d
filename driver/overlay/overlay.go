// Package overlay is pier's multi-host network driver: a flat layer-2 network spanning
// hosts, carried between them by Linux VXLAN.
//
// Layout, per network and host (see docs/architecture.md for why): a bridge with no
// address and a VXLAN device enslaved to it, both in the host namespace, named after
// the network's VNI; each local endpoint is a veth whose peer is born inside the
// sandbox namespace. The data plane is programmed, never learned: VXLAN learning is
// off, and for every endpoint on another host (a peer, from the cluster store) the
// driver writes a static forwarding entry (MAC → that host's address) and neighbour
// entries that the VXLAN device's ARP/ND proxy answers from. Nothing floods between
// hosts. A network is extended to a host lazily, at its first local join, and
// withdrawn at its last leave.
//
// The driver owns no cluster state: VNIs come from the controller (allocated in the
// cluster store), peers from the controller's watch.
//
// With Options.ProbeTunnel, the driver also checks once per network and remote node
// that TCP crosses the tunnel (probe.go), on a goroutine Start launches and Close
// stops. Lock order: Driver.mu, then prober.mu; the probe goroutine takes only the
// latter and does its kernel I/O under neither.
package overlay

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/options"
	"github.com/piernet/pier/errdefs"
)

// Name is the driver's name.
const Name = "overlay"

// Docker's option keys.
const (
	optVXLANIDs  = "com.docker.network.driver.overlay.vxlanid_list"
	optEncrypted = "encrypted"
)

// DefaultPort is the IANA VXLAN port (Docker's and Calico's; Linux's default is 8472).
const DefaultPort = 4789

// Overheads of the encapsulation over an IPv4 and an IPv6 underlay, and of the
// WireGuard tunnel that carries encrypted networks' VXLAN.
const (
	overhead4   = 50
	overhead6   = 70
	wgOverhead4 = 60
	wgOverhead6 = 80
)

// Options configure a Driver.
type Options struct {
	Kernel    Kernel
	Advertise netip.Addr // this host's underlay address (the VTEP's source)
	Port      int        // VXLAN UDP port; 0 = DefaultPort
	Logger    *slog.Logger
	// ProbeTunnel turns on the tunnel probe (probe.go): once per network and remote
	// node, after a local join, check that TCP crosses the VXLAN tunnel where ICMP does,
	// and warn of a broken checksum offload when it does not. Start runs it.
	ProbeTunnel bool
	ProbeWait   time.Duration // per probe attempt; 0 = DefaultProbeWait
}

// Driver is the overlay driver. Safe for concurrent use.
type Driver struct {
	k     Kernel
	local netip.Addr
	port  int
	log   *slog.Logger
	probe *prober // nil when the tunnel probe is off

	mu        sync.Mutex // guards the maps and everything they point to
	networks  map[string]*network
	endpoints map[string]*endpoint
}

type network struct {
	cfg      driver.NetworkConfig
	mtu      int // user's MTU; 0 = derived from the underlay
	dev      Devices
	extended bool                   // the devices exist on this host
	peers    map[string]driver.Peer // endpoints on other hosts, by endpoint ID
	joined   map[string]bool        // local joined endpoints (and the router)
	router   netip.Prefix           // the host's address on the bridge (AttachRouter)
}

type endpoint struct {
	nid, id      string
	addr4, addr6 netip.Prefix
	mac          net.HardwareAddr
	port         string // host-side veth while joined
	sandboxKey   string // while joined
}

// New returns an overlay driver.
func New(o Options) *Driver {
	if o.Port == 0 {
		o.Port = DefaultPort
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	d := &Driver{k: o.Kernel, local: o.Advertise, port: o.Port, log: o.Logger.With("component", "overlay"),
		networks: map[string]*network{}, endpoints: map[string]*endpoint{}}
	if o.ProbeTunnel {
		if o.ProbeWait == 0 {
			o.ProbeWait = DefaultProbeWait
		}
		d.probe = newProber(o.Kernel, d.log, o.ProbeWait)
	}
	return d
}

// Start launches the driver's background work (the tunnel probe, when on).
func (d *Driver) Start(ctx context.Context) {
	if d.probe != nil {
		d.probe.start(ctx)
	}
}

// Close stops the background work and waits for it; idempotent.
func (d *Driver) Close() error {
	if d.probe != nil {
		d.probe.close()
	}
	return nil
}

// probePeersLocked schedules a tunnel probe from sandboxKey to each remote node of n.
func (d *Driver) probePeersLocked(n *network, sandboxKey string, peers ...driver.Peer) {
	if d.probe == nil || sandboxKey == "" {
		return
	}
	for _, p := range peers {
		dst := p.Addr4.Addr()
		if !p.Addr4.IsValid() {
			dst = p.Addr6.Addr()
		}
		if dst.IsValid() && p.Node != d.local {
			d.probe.enqueue(probeJob{network: n.cfg.Name, nid: n.cfg.ID, sandboxKey: sandboxKey, node: p.Node, dst: dst})
		}
	}
}

// joinedSandboxLocked is the sandbox of any local endpoint joined to n, or "".
func (d *Driver) joinedSandboxLocked(n *network) string {
	for eid := range n.joined {
		if ep := d.endpoints[eid]; ep != nil && ep.sandboxKey != "" {
			return ep.sandboxKey
		}
	}
	return ""
}

func (d *Driver) Name() string { return Name }

func (d *Driver) Capability() driver.Capability {
	return driver.Capability{DataScope: driver.ScopeGlobal, ConnectivityScope: driver.ScopeGlobal}
}

// VNIRequest implements driver.VNIRequester: Docker's vxlanid_list, else one per subnet.
func (d *Driver) VNIRequest(opts map[string]string, subnets int) ([]uint32, int, error) {
	want, err := parseVNIs(opts[optVXLANIDs])
	if err != nil {
		return nil, 0, err
	}
	return want, max(subnets, len(want), 1), nil
}

func parseVNIs(s string) ([]uint32, error) {
	if s == "" {
		return nil, nil
	}
	var out []uint32
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.ParseUint(strings.TrimSpace(f), 10, 32)
		if err != nil || v == 0 || v > 1<<24-1 {
			return nil, errdefs.InvalidArgument("invalid %s %q: want VXLAN IDs between 1 and 16777215, comma-separated", optVXLANIDs, s)
		}
		out = append(out, uint32(v))
	}
	return out, nil
}

var _ driver.OptionDecoder = (*Driver)(nil)

// DecodeOptions implements driver.OptionDecoder. Keys the overlay does not know are
// ignored, as Docker's overlay does.
func (d *Driver) DecodeOptions(opts map[string]string) (driver.NetworkOptions, error) {
	o, err := parseOptions(opts)
	return driver.NetworkOptions{IfacePrefix: o.ifacePrefix}, err
}

type config struct {
	mtu         int // 0 = derived from the underlay
	ifacePrefix string
	encrypted   bool
}

func parseOptions(opts map[string]string) (config, error) {
	o := config{ifacePrefix: options.DefaultIfacePrefix}
	err := options.Decode(opts, func(k, v string) error {
		var err error
		switch k {
		case optVXLANIDs:
			_, err = parseVNIs(v)
		case options.KeyMTU:
			if v != "0" { // Docker's "derive it"
				o.mtu, err = options.ParseMTU(v, options.MinMTUIPv6)
			}
		case options.KeyIfacePrefix:
			o.ifacePrefix, err = options.ParseIfacePrefix(v)
		case optEncrypted:
			// Docker's "-o encrypted" has an empty value; "encrypted=true" works too.
			switch strings.ToLower(v) {
			case "", "true", "1", "yes":
				o.encrypted = true
			case "false", "0", "no":
			default:
				err = errdefs.InvalidArgument("invalid value %q for option encrypted: use true or false", v)
			}
		}
		return err
	})
	return o, err
}

// CreateNetwork records the network; its devices are made at the first local join.
func (d *Driver) CreateNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	o, err := parseOptions(nc.Options)
	if err != nil {
		return err
	}
	if len(nc.VNIs) == 0 {
		return errdefs.InvalidArgument("overlay network %s has no VXLAN ID (it must be created through a clustered pierd)", nc.Name)
	}
	vni := nc.VNIs[0]
	d.mu.Lock()
	defer d.mu.Unlock()
	if n, ok := d.networks[nc.ID]; ok {
		n.cfg, n.mtu, n.dev.Encrypted = nc, o.mtu, o.encrypted
		return nil
	}
	d.networks[nc.ID] = &network{cfg: nc, mtu: o.mtu, peers: map[string]driver.Peer{}, joined: map[string]bool{},
		dev: Devices{NetworkID: nc.ID, Bridge: "ovbr" + strconv.FormatUint(uint64(vni), 10),
			VXLAN: "ovvx" + strconv.FormatUint(uint64(vni), 10), VNI: vni, Local: d.local, Port: d.port, Encrypted: o.encrypted}}
	return nil
}

// RestoreNetwork implements driver.Restorer.
func (d *Driver) RestoreNetwork(ctx context.Context, nc driver.NetworkConfig) error {
	return d.CreateNetwork(ctx, nc)
}

// DeleteNetwork removes the network's devices from this host, if it was extended here.
func (d *Driver) DeleteNetwork(ctx context.Context, nid string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[nid]
	if !ok {
		return nil
	}
	if n.extended {
		if err := d.k.DeleteNetwork(ctx, n.dev); err != nil {
			return err
		}
	}
	delete(d.networks, nid)
	return nil
}

func (d *Driver) networkLocked(nid string) (*network, error) {
	n, ok := d.networks[nid]
	if !ok {
		return nil, errdefs.NotFound("overlay network %s not found", nid)
	}
	return n, nil
}

// CreateEndpoint records the endpoint and gives it Docker's static MAC.
func (d *Driver) CreateEndpoint(ctx context.Context, ec driver.EndpointConfig) (driver.EndpointInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.networkLocked(ec.NetworkID); err != nil {
		return driver.EndpointInfo{}, err
	}
	mac := ec.MAC
	if mac == nil {
		mac = deriveMAC(ec.Addr4.Addr(), ec.EndpointID)
	}
	if ep, ok := d.endpoints[ec.EndpointID]; ok {
		ep.addr4, ep.addr6, ep.mac = ec.Addr4, ec.Addr6, mac
	} else {
		d.endpoints[ec.EndpointID] = &endpoint{nid: ec.NetworkID, id: ec.EndpointID, addr4: ec.Addr4, addr6: ec.Addr6, mac: mac}
	}
	return driver.EndpointInfo{MAC: mac}, nil
}

// deriveMAC is Docker's 02:42 + IPv4 address, or a hash of the endpoint ID.
func deriveMAC(ip netip.Addr, eid string) net.HardwareAddr {
	if ip.Is4() {
		a := ip.As4()
		return net.HardwareAddr{0x02, 0x42, a[0], a[1], a[2], a[3]}
	}
	h := sha256.Sum256([]byte(eid))
	return net.HardwareAddr{0x02, 0x42, h[0], h[1], h[2], h[3]}
}

// DeleteEndpoint forgets the endpoint.
func (d *Driver) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	delete(d.endpoints, eid)
	return nil
}

func portName(eid string) string { return "ovh" + eid[:min(len(eid), 11)] }

// Join extends the network to this host if needed and creates the endpoint's veth.
func (d *Driver) Join(ctx context.Context, req driver.JoinRequest) (driver.JoinResult, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, err := d.networkLocked(req.NetworkID)
	if err != nil {
		return driver.JoinResult{}, err
	}
	ep, ok := d.endpoints[req.EndpointID]
	if !ok {
		return driver.JoinResult{}, errdefs.NotFound("overlay endpoint %s not found", req.EndpointID)
	}
	if err := d.extendLocked(ctx, n); err != nil {
		return driver.JoinResult{}, err
	}
	p := Port{Name: portName(ep.id), Bridge: n.dev.Bridge, SandboxKey: req.SandboxKey, IfName: req.IfName, MAC: ep.mac,
		MTU: n.dev.MTU, NetworkID: n.cfg.ID}
	if err := d.k.AddPort(ctx, p); err != nil {
		d.retractIfIdleLocked(ctx, n)
		return driver.JoinResult{}, err
	}
	ep.port, ep.sandboxKey, n.joined[ep.id] = p.Name, req.SandboxKey, true
	d.probePeersLocked(n, req.SandboxKey, slices.Collect(maps.Values(n.peers))...)
	// No gateway: sandboxes reach the outside through the gateway bridge, not the overlay.
	return driver.JoinResult{}, nil
}

// extendLocked creates the network's devices on this host and programs every known peer.
func (d *Driver) extendLocked(ctx context.Context, n *network) error {
	if n.extended {
		return nil
	}
	mtu, err := d.mtuLocked(ctx, n)
	if err != nil {
		return err
	}
	n.dev.MTU = mtu
	if err := d.k.EnsureNetwork(ctx, n.dev); err != nil {
		return err
	}
	n.extended = true
	var errs []error
	for _, p := range n.peers {
		errs = append(errs, d.k.SetPeer(ctx, n.dev.VXLAN, entry(p), true))
	}
	if err := errors.Join(errs...); err != nil {
		d.log.ErrorContext(ctx, "programming peers", "network", n.cfg.Name, "err", err)
	}
	d.log.InfoContext(ctx, "overlay network extended to this host", "network", n.cfg.Name, "vni", n.dev.VNI, "mtu", mtu, "peers", len(n.peers))
	return nil
}

// mtuLocked is the network's MTU: the underlay's minus the encapsulation, or the
// user's, which may not exceed it.
func (d *Driver) mtuLocked(ctx context.Context, n *network) (int, error) {
	under, err := d.k.UnderlayMTU(ctx, d.local)
	if err != nil {
		return 0, err
	}
	limit := under - overhead4
	if d.local.Is6() {
		limit = under - overhead6
	}
	if n.dev.Encrypted {
		limit -= wgOverhead4
		if d.local.Is6() {
			limit -= wgOverhead6 - wgOverhead4
		}
	}
	switch {
	case n.mtu == 0:
		return limit, nil
	case n.mtu > limit:
		return 0, errdefs.InvalidArgument("overlay network %s: MTU %d is larger than the underlay allows (%d = %d - VXLAN overhead)", n.cfg.Name, n.mtu, limit, under)
	}
	return n.mtu, nil
}

func (d *Driver) retractIfIdleLocked(ctx context.Context, n *network) {
	if !n.extended || len(n.joined) > 0 {
		return
	}
	if err := d.k.DeleteNetwork(ctx, n.dev); err != nil {
		d.log.WarnContext(ctx, "removing idle overlay devices", "network", n.cfg.Name, "err", err)
		return
	}
	n.extended = false
	d.log.InfoContext(ctx, "overlay network withdrawn from this host", "network", n.cfg.Name)
}

// Leave deletes the endpoint's veth and withdraws the network from this host when it
// was the last local endpoint.
func (d *Driver) Leave(ctx context.Context, nid, eid string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.k.DeletePort(ctx, portName(eid)); err != nil {
		return err
	}
	if ep, ok := d.endpoints[eid]; ok {
		ep.port, ep.sandboxKey = "", ""
	}
	if n, ok := d.networks[nid]; ok {
		delete(n.joined, eid)
		d.retractIfIdleLocked(ctx, n)
	}
	return nil
}

func (d *Driver) ProgramExternalConnectivity(ctx context.Context, nid, eid string) error { return nil }
func (d *Driver) RevokeExternalConnectivity(ctx context.Context, nid, eid string) error  { return nil }

// AddPeer implements driver.PeerDriver.
func (d *Driver) AddPeer(ctx context.Context, p driver.Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, err := d.networkLocked(p.NetworkID)
	if err != nil {
		return err
	}
	if len(p.MAC) != 6 || !p.Node.IsValid() {
		return errdefs.InvalidArgument("peer %s has no MAC or host address", p.EndpointID)
	}
	if old, ok := n.peers[p.EndpointID]; ok && n.extended && !samePeer(old, p) {
		if err := d.k.SetPeer(ctx, n.dev.VXLAN, entry(old), false); err != nil {
			d.log.WarnContext(ctx, "removing replaced peer", "endpoint", p.EndpointID, "err", err)
		}
	}
	n.peers[p.EndpointID] = p
	if !n.extended {
		return nil
	}
	if err := d.k.SetPeer(ctx, n.dev.VXLAN, entry(p), true); err != nil {
		return err
	}
	d.probePeersLocked(n, d.joinedSandboxLocked(n), p)
	return nil
}

// RemovePeer implements driver.PeerDriver.
func (d *Driver) RemovePeer(ctx context.Context, p driver.Peer) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[p.NetworkID]
	if !ok {
		return nil
	}
	old, ok := n.peers[p.EndpointID]
	if !ok {
		return nil
	}
	delete(n.peers, p.EndpointID)
	if !n.extended {
		return nil
	}
	return d.k.SetPeer(ctx, n.dev.VXLAN, entry(old), false)
}

func samePeer(a, b driver.Peer) bool {
	return a.Node == b.Node && a.Addr4 == b.Addr4 && a.Addr6 == b.Addr6 && a.MAC.String() == b.MAC.String()
}

func entry(p driver.Peer) PeerEntry {
	e := PeerEntry{MAC: p.MAC, VTEP: p.Node}
	for _, a := range []netip.Prefix{p.Addr4, p.Addr6} {
		if a.IsValid() {
			e.Addrs = append(e.Addrs, a.Addr())
		}
	}
	return e
}

// AttachRouter makes this host a router on network nid (driver.Router): the network
// is extended here, and its bridge gets addr and a MAC derived from it.
func (d *Driver) AttachRouter(ctx context.Context, nid, eid string, addr netip.Prefix) (net.HardwareAddr, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, err := d.networkLocked(nid)
	if err != nil {
		return nil, err
	}
	if err := d.extendLocked(ctx, n); err != nil {
		return nil, err
	}
	mac := deriveMAC(addr.Addr(), eid)
	if err := d.k.SetBridgeAddr(ctx, n.dev.Bridge, addr, mac, true); err != nil {
		d.retractIfIdleLocked(ctx, n)
		return nil, err
	}
	n.joined[eid] = true
	n.router = addr
	return mac, nil
}

// DetachRouter takes the router's address off the bridge and withdraws the network
// from this host when nothing else uses it.
func (d *Driver) DetachRouter(ctx context.Context, nid, eid string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	n, ok := d.networks[nid]
	if !ok || !n.joined[eid] {
		return nil
	}
	var err error
	if n.extended && n.router.IsValid() {
		err = d.k.SetBridgeAddr(ctx, n.dev.Bridge, n.router, nil, false)
	}
	delete(n.joined, eid)
	n.router = netip.Prefix{}
	d.retractIfIdleLocked(ctx, n)
	return err
}

// RestoreEndpoint implements driver.Restorer.
func (d *Driver) RestoreEndpoint(ctx context.Context, ec driver.EndpointConfig, join *driver.JoinRequest) (bool, error) {
	if _, err := d.CreateEndpoint(ctx, ec); err != nil {
		return false, err
	}
	if join == nil {
		return true, nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	n := d.networks[ec.NetworkID]
	if err := d.extendLocked(ctx, n); err != nil {
		return false, err
	}
	ep := d.endpoints[ec.EndpointID]
	ep.port, ep.sandboxKey, n.joined[ep.id] = portName(ep.id), join.SandboxKey, true
	d.probePeersLocked(n, join.SandboxKey, slices.Collect(maps.Values(n.peers))...)
	return d.k.PortAttached(ctx, ep.port, n.dev.Bridge), nil
}

// Cleanup implements driver.Restorer: devices of networks and endpoints that no longer
// exist are removed, and networks with no local endpoint are withdrawn.
func (d *Driver) Cleanup(ctx context.Context, live driver.Live) error {
	owned, err := d.k.Owned(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, l := range owned {
		stale := !live.Networks[l.NetworkID]
		if eid, ok := d.portOwner(l.Name); ok {
			stale = stale || !live.Endpoints[eid]
		} else if n := d.networks[l.NetworkID]; n != nil {
			stale = stale || !n.extended
		}
		if stale {
			d.log.InfoContext(ctx, "removing leftover interface", "name", l.Name)
			errs = append(errs, d.k.DeletePort(ctx, l.Name))
		}
	}
	return errors.Join(errs...)
}

// portOwner finds the endpoint whose veth is name.
func (d *Driver) portOwner(name string) (string, bool) {
	if !strings.HasPrefix(name, "ovh") {
		return "", false
	}
	for id := range d.endpoints {
		if portName(id) == name {
			return id, true
		}
	}
	return name, true // an endpoint this driver does not know: stale
}

// Check that the driver implements the optional interfaces it means to.
var (
	_ driver.Restorer     = (*Driver)(nil)
	_ driver.PeerDriver   = (*Driver)(nil)
	_ driver.VNIRequester = (*Driver)(nil)
)
