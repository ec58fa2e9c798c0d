// Package driver defines the network driver contract (the data plane side of CNM) and
// the registry value the controller receives. It owns no driver implementation: the
// built-in drivers live in sub-packages and are registered by driver/builtin.
//
// Everything crossing this boundary is typed. Driver-specific options travel as the
// user's string options (Docker's `-o key=value`): a driver that implements
// OptionDecoder validates them before the controller allocates anything, and decodes
// them into its typed config (see bridge.ParseOptions) with the parsers of
// driver/options.
package driver

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/portmap"
)

// Scope is where a driver's state (DataScope) or connectivity (ConnectivityScope) lives.
type Scope string

const (
	ScopeLocal  Scope = "local"
	ScopeGlobal Scope = "global"
	ScopeSwarm  Scope = "swarm"
)

// Capability describes a driver. The controller enforces the rules the booleans
// state; no driver name is special to it.
type Capability struct {
	DataScope         Scope
	ConnectivityScope Scope
	// HostNamespace: a sandbox on this driver's network is the host's own network
	// namespace (no namespace is created); only such sandboxes join it, and they join
	// no other network.
	HostNamespace bool
	// NoInterface: endpoints get no interface and no addresses (the null IPAM), ports
	// are not published, and a sandbox on such a network is on no other.
	NoInterface bool
	// Singleton: the driver's only network is the predefined one the controller
	// creates; users cannot create others.
	Singleton bool
}

// IPAMData is one pool granted to a network, with its gateway and reserved addresses.
type IPAMData struct {
	AddressSpace string
	Pool         netip.Prefix
	Gateway      netip.Prefix // address with the pool's prefix length; zero if none
	Aux          map[string]netip.Addr
}

// NetworkConfig is what a driver receives to create a network.
type NetworkConfig struct {
	ID         string
	Name       string
	Options    map[string]string // the user's driver options, decoded by the driver
	Internal   bool
	EnableIPv6 bool
	Predefined bool // one of the networks the controller creates itself
	IPv4       []IPAMData
	IPv6       []IPAMData
	// VNIs are cluster-unique network identifiers the controller allocated for a
	// global-scope network of a VNIRequester (one per IPv4 subnet, in order).
	VNIs []uint32
}

// EndpointConfig is what a driver receives to create an endpoint.
type EndpointConfig struct {
	NetworkID  string
	EndpointID string
	Addr4      netip.Prefix     // zero if none
	Addr6      netip.Prefix     // zero if none
	MAC        net.HardwareAddr // nil: the driver may choose one
}

// EndpointInfo is what a driver reports back from CreateEndpoint.
type EndpointInfo struct {
	MAC net.HardwareAddr // the MAC the endpoint will have (may be nil)
	// Addr4/Addr6 are addresses the driver assigned itself, only for a family the
	// request had none of (Docker's fill-only-empty rule; e.g. networks with the null
	// IPAM driver). The controller records them; they are not the IPAM's to release.
	Addr4 netip.Prefix
	Addr6 netip.Prefix
}

// JoinRequest asks the driver to connect an endpoint to a sandbox.
type JoinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxID  string
	SandboxKey string // path of the sandbox's network namespace
	IfName     string // interface name wanted inside the sandbox, e.g. "eth0"
	Addr4      netip.Prefix
	Addr6      netip.Prefix
	MAC        net.HardwareAddr
	// Ports are the sandbox's published ports (-p), programmed when this endpoint
	// provides external connectivity; Published are the bindings a previous run made
	// (kept across restarts, ephemeral host ports included).
	Ports     []portmap.Spec
	Published []portmap.Binding
}

// StaticRoute is an extra route a driver asks to be installed in the sandbox.
type StaticRoute struct {
	Destination netip.Prefix
	NextHop     netip.Addr // zero: connected route
}

// JoinResult tells the controller how to finish the join.
type JoinResult struct {
	// SrcName, when set, is a host-side interface the controller must move into the
	// sandbox and rename to IfName. Empty when the driver created the interface directly
	// inside the sandbox (the bridge driver does: it is ~30x cheaper than moving).
	SrcName string
	// DstPrefix, with SrcName, asks for the interface to be named <DstPrefix><N> inside
	// the sandbox instead of JoinRequest.IfName (Docker's plugin protocol).
	DstPrefix string
	// Gateway4/6 are the default gateways this endpoint offers; zero when none.
	Gateway4       netip.Addr
	Gateway6       netip.Addr
	StaticRoutes   []StaticRoute
	DisableGateway bool
	// NoInterface is set by drivers that create no interface (null, host).
	NoInterface bool
}

// Driver is the network driver contract. Every method may touch the kernel and takes ctx.
//
// Concurrency: the controller serialises every mutating call (its opMu): no two of
// CreateNetwork, DeleteNetwork, CreateEndpoint, DeleteEndpoint, Join, Leave,
// Program/RevokeExternalConnectivity and the Restorer methods run at once. Calls that
// come from the cluster (PeerDriver's AddPeer/RemovePeer) arrive from one other
// goroutine, concurrently with those: a driver guards its own state with a lock.
// Capability and Name may be called at any time.
//
// Idempotency: DeleteNetwork, DeleteEndpoint and Leave of something already gone (or
// never made) return nil; the controller calls them to clean up after crashes and
// failed operations without knowing how far those got. CreateNetwork of a network the
// driver already has may fail (the controller uses Restorer.RestoreNetwork to re-apply).
//
// Errors: a returned error means the call did nothing the controller must undo: the
// driver rolls back its own partial work before returning (the controller then undoes
// only its earlier steps, e.g. DeleteEndpoint after a failed Join). Return errdefs
// kinds so the API answers the right status: InvalidArgument for bad options,
// NotFound for an unknown network or endpoint, Conflict for a name or resource in
// use, Unavailable for a dependency that is down (a plugin, the kernel refusing for
// lack of a feature is NotImplemented or InvalidArgument with the module named).
type Driver interface {
	Name() string
	Capability() Capability
	CreateNetwork(ctx context.Context, cfg NetworkConfig) error
	DeleteNetwork(ctx context.Context, networkID string) error
	CreateEndpoint(ctx context.Context, cfg EndpointConfig) (EndpointInfo, error)
	DeleteEndpoint(ctx context.Context, networkID, endpointID string) error
	Join(ctx context.Context, req JoinRequest) (JoinResult, error)
	Leave(ctx context.Context, networkID, endpointID string) error
	// ProgramExternalConnectivity is called for the endpoint that provides the
	// sandbox's default gateway; Revoke when it stops doing so.
	ProgramExternalConnectivity(ctx context.Context, networkID, endpointID string) error
	RevokeExternalConnectivity(ctx context.Context, networkID, endpointID string) error
}

// OptionDecoder is implemented by drivers whose options can be checked without I/O
// (the built-in ones). The controller calls DecodeOptions when a network is created,
// before it allocates anything: an error (InvalidArgument for a bad value or an
// unknown key) fails the create with nothing allocated or created. It is pure: it
// reads only opts, so it may be called at any time, concurrently with anything.
// The driver still decodes the options into its own typed config in CreateNetwork.
type OptionDecoder interface {
	DecodeOptions(opts map[string]string) (NetworkOptions, error)
}

// NetworkOptions is what of a network's driver options the controller acts on.
type NetworkOptions struct {
	// IfacePrefix names the network's interfaces inside sandboxes <IfacePrefix><N>
	// (Docker's com.docker.network.container_iface_prefix); "" = "eth".
	IfacePrefix string
}

// Restorer is implemented by drivers that keep kernel state across controller restarts.
// The controller calls Restore for every recorded network (CreateNetwork semantics, but
// tolerant of existing state) and every joined endpoint before serving requests, then
// Cleanup once with everything that should exist, so the driver removes leftovers.
type Restorer interface {
	RestoreNetwork(ctx context.Context, cfg NetworkConfig) error
	// RestoreEndpoint re-registers an endpoint; for a joined one (join != nil) it
	// reports whether its interfaces are still intact. When they are not, the
	// controller calls Leave and joins the endpoint again.
	RestoreEndpoint(ctx context.Context, ep EndpointConfig, join *JoinRequest) (intact bool, err error)
	Cleanup(ctx context.Context, live Live) error
}

// Live is the set of networks and endpoints the controller knows after a restart.
type Live struct {
	Networks  map[string]bool // network IDs of this driver
	Endpoints map[string]bool // endpoint IDs of this driver that are joined
}

// Router is implemented by drivers that can make the host itself a router on one of
// their networks (overlay: the routing mesh's ingress network). The router is an
// endpoint without a sandbox: addr is given to the network's local bridge, whose MAC
// it returns; the network stays extended to this host while the router is attached.
type Router interface {
	AttachRouter(ctx context.Context, nid, eid string, addr netip.Prefix) (net.HardwareAddr, error)
	DetachRouter(ctx context.Context, nid, eid string) error
}

// PortPublisher is implemented by drivers that publish ports (bridge). The controller
// refuses published ports on a gateway endpoint whose driver does not implement it.
type PortPublisher interface {
	// PublishedPorts returns the bindings programmed for the endpoint.
	PublishedPorts(endpointID string) []portmap.Binding
}

// Peer is an endpoint of a global-scope network on another host.
type Peer struct {
	NetworkID  string
	EndpointID string
	Node       netip.Addr // the other host's underlay (advertise) address
	Addr4      netip.Prefix
	Addr6      netip.Prefix
	MAC        net.HardwareAddr
}

// PeerDriver is implemented by global-scope drivers (overlay): the controller tells
// them about endpoints of their networks on other hosts, from one goroutine and in the
// order the cluster store saw the changes. AddPeer of a known endpoint updates it;
// RemovePeer of an unknown one is not an error. A peer may arrive for a network the
// driver has not set up on this host yet (networks are extended lazily): the driver
// keeps it until the network is.
type PeerDriver interface {
	AddPeer(ctx context.Context, p Peer) error
	RemovePeer(ctx context.Context, p Peer) error
}

// VNIRequester is implemented by global-scope drivers whose networks need
// cluster-unique identifiers (the overlay's VXLAN network IDs). VNIRequest is pure: it
// reads the user's options (e.g. Docker's vxlanid_list) and says which IDs are wanted
// (want, may be empty) and how many in all (n, one per IPv4 subnet). The controller
// allocates them in the cluster store before the network is recorded.
type VNIRequester interface {
	VNIRequest(opts map[string]string, subnets int) (want []uint32, n int, err error)
}

// Registry maps driver names to drivers. It is a plain value built by the caller.
type Registry struct {
	mu      sync.RWMutex // guards drivers: plugins are added at run time
	drivers map[string]Driver
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry { return &Registry{drivers: map[string]Driver{}} }

// Register adds d under d.Name(); registering a name twice is an error.
func (r *Registry) Register(d Driver) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, dup := r.drivers[d.Name()]; dup {
		return errdefs.Conflict("driver %q already registered", d.Name())
	}
	r.drivers[d.Name()] = d
	return nil
}

// Get returns the driver registered under name.
func (r *Registry) Get(name string) (Driver, error) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.drivers[name]
	if !ok {
		return nil, errdefs.NotFound("plugin %q not found", name)
	}
	return d, nil
}

// Names lists registered driver names, sorted.
func (r *Registry) Names() []string {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := make([]string, 0, len(r.drivers))
	for n := range r.drivers {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// String implements fmt.Stringer for logs.
func (r *Registry) String() string { return fmt.Sprint(r.Names()) }
