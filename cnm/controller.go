// Package cnm is pier's controller: it owns the object graph of networks, endpoints and
// sandboxes (the Container Network Model), drives drivers and IPAM, persists records and
// restores them after a restart. It is the only package that knows all three objects;
// kernel work happens in drivers and in the SandboxOS seam, never here.
//
// Concurrency: opMu serialises mutating operations (they do kernel I/O and must see a
// consistent graph from start to end); mu guards the maps and is held only briefly, so
// reads (list, inspect) never wait behind kernel I/O. ipamMu guards the IPAM drivers
// and is held while an IPAM plugin activates (up to ~11 s), so it is never taken with
// mu held. Lock order: opMu → ipamMu → mu; mu is a leaf (no call that blocks is made
// under it).
package cnm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/etcfiles"
	"github.com/piernet/pier/ipam"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/store"
)

// SandboxOS is the kernel seam for sandboxes (implemented by netns.Manager).
type SandboxOS interface {
	HostKey() string
	Create(ctx context.Context, id string) (key string, err error)
	Exists(key string) bool
	Destroy(ctx context.Context, key string) error
	Pinned() ([]string, error)
	ConfigureInterface(ctx context.Context, key string, ifc netns.Interface) error
	RemoveInterface(ctx context.Context, key, name string) error
	ReleaseInterface(ctx context.Context, key, name, srcName string) error
	SetDefaultRoute(ctx context.Context, key string, r netns.DefaultRoute) error
	// Processes counts the processes running in the namespace; StopProcesses ends them
	// (SIGTERM, SIGKILL after grace) and returns how many there were.
	Processes(ctx context.Context, key string) (int, error)
	StopProcesses(ctx context.Context, key string, grace time.Duration) (int, error)
}

// Plugins resolves network and IPAM drivers that are not built in (Docker plugins).
type Plugins interface {
	NetworkDriver(ctx context.Context, name string) (driver.Driver, error)
	IPAM(ctx context.Context, name string) (ipam.Allocator, error)
}

// Config wires a controller. ExecRoot, Store, Drivers, IPAM and OS are required;
// Plugins, DNS, Logger and HostResolvConf are optional.
type Config struct {
	ExecRoot       string // sandbox files live under ExecRoot/sandboxes
	Store          store.Records
	Drivers        *driver.Registry
	IPAM           ipam.Allocator // the "default" IPAM driver
	Plugins        Plugins
	DNS            Resolver // embedded DNS; nil = none (sandboxes use the host's resolvers)
	OS             SandboxOS
	Logger         *slog.Logger
	HostResolvConf string // default /etc/resolv.conf
	// Cluster, when set, puts the controller in cluster mode: global-scope networks,
	// the global address space and other nodes' endpoints come from it.
	Cluster Cluster
	// StopGrace is how long a forced sandbox delete waits after SIGTERM before it
	// SIGKILLs the sandbox's processes (default DefaultStopGrace).
	StopGrace time.Duration
	// DefaultBridgeOptions are the driver options of the predefined network "bridge"
	// (its bridge name and default-bridge mark, in the bridge driver's keys).
	DefaultBridgeOptions map[string]string
	// LoadBalancer programs service VIPs in sandboxes; nil: only dnsrr services.
	LoadBalancer LoadBalancer
	// Mesh programs the routing mesh (ingress publishing, cluster mode); nil: none.
	Mesh Mesh
}

// DefaultStopGrace is Config.StopGrace's default.
const DefaultStopGrace = 5 * time.Second

// Controller is the CNM controller.
type Controller struct {
	execRoot   string
	store      store.Records
	drivers    *driver.Registry
	plugins    Plugins
	dns        Resolver
	os         SandboxOS
	log        *slog.Logger
	resolvPath string
	stopGrace  time.Duration
	bridgeOpts map[string]string // options of the predefined "bridge"
	lb         LoadBalancer      // nil: no VIP services
	mesh       Mesh              // nil: no ingress publishing
	router     *Router           // this node's ingress router; guarded by opMu

	opMu      sync.Mutex      // serialises mutating operations
	dnsActive map[string]bool // sandboxes with a DNS listener; guarded by opMu

	ipamMu sync.Mutex // guards ipams; held across plugin activation (see package doc)
	ipams  map[string]ipam.Allocator

	mu        sync.RWMutex // guards the maps below
	networks  map[string]*Network
	endpoints map[string]*Endpoint
	epIndex   endpointIndex
	sandboxes map[string]*Sandbox
	services  map[string]*Service
	// remote holds other nodes' endpoints of global networks, by network and endpoint
	// ID: read-only, never stored, counted or joined locally.
	remote map[string]map[string]*RemoteEndpoint

	// Cluster mode (all zero without Config.Cluster); set in New, then read-only.
	cluster     Cluster
	self        Node
	events      <-chan ClusterEvent
	watchCancel context.CancelFunc
	watchDone   chan struct{}

	// Background work that outlives a request (tasks awaiting readiness): bg is
	// cancelled and bgWG waited for by Close.
	bg     context.Context
	bgStop context.CancelFunc
	bgWG   sync.WaitGroup
}

// New builds a controller and restores the recorded state (see restore.go).
func New(ctx context.Context, cfg Config) (*Controller, error) {
	if cfg.Store == nil || cfg.Drivers == nil || cfg.IPAM == nil || cfg.OS == nil || cfg.ExecRoot == "" {
		return nil, errors.New("cnm: Store, Drivers, IPAM, OS and ExecRoot are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = DefaultStopGrace
	}
	if cfg.HostResolvConf == "" {
		cfg.HostResolvConf = "/etc/resolv.conf"
	}
	c := &Controller{execRoot: cfg.ExecRoot, store: cfg.Store, drivers: cfg.Drivers, plugins: cfg.Plugins, dns: cfg.DNS, dnsActive: map[string]bool{},
		ipams: map[string]ipam.Allocator{IPAMDefault: cfg.IPAM, IPAMNull: nullIPAM{}},
		os:    cfg.OS, log: cfg.Logger.With("component", "controller"), resolvPath: cfg.HostResolvConf, stopGrace: cfg.StopGrace,
		bridgeOpts: cfg.DefaultBridgeOptions, lb: cfg.LoadBalancer, mesh: cfg.Mesh, services: map[string]*Service{},
		networks: map[string]*Network{}, endpoints: map[string]*Endpoint{}, epIndex: newEndpointIndex(),
		sandboxes: map[string]*Sandbox{}, remote: map[string]map[string]*RemoteEndpoint{}, cluster: cfg.Cluster}
	c.bg, c.bgStop = context.WithCancel(context.WithoutCancel(ctx))
	var st ClusterState
	if c.cluster != nil {
		c.ipams[IPAMDefault] = spaces{local: cfg.IPAM, global: c.cluster.IPAM()}
		var err error
		if st, err = c.watchCluster(ctx); err != nil {
			return nil, fmt.Errorf("reading the cluster store: %w", err)
		}
	}
	if err := c.restore(ctx); err != nil {
		c.Close()
		return nil, fmt.Errorf("restoring state: %w", err)
	}
	if c.cluster != nil {
		if err := c.adoptGlobal(ctx, st); err != nil {
			c.Close()
			return nil, fmt.Errorf("restoring cluster state: %w", err)
		}
	}
	// Restored tasks that were starting go on waiting (restore is single-threaded:
	// the watchers start after it).
	for _, sb := range c.sandboxes {
		if sb.Starting && !sb.Draining {
			c.awaitReady(*sb)
		}
	}
	return c, nil
}

func (c *Controller) sandboxDir(id string) string {
	return filepath.Join(c.execRoot, "sandboxes", id)
}

func (c *Controller) hostResolv() etcfiles.Parsed {
	data, err := os.ReadFile(c.resolvPath)
	if err != nil {
		c.log.Warn("reading host resolv.conf", "path", c.resolvPath, "err", err)
	}
	return etcfiles.ParseResolvConf(data)
}

func validAddr(p netip.Prefix) netip.Addr {
	if !p.IsValid() {
		return netip.Addr{}
	}
	return p.Addr()
}

// DriverNames lists the network drivers available now (built-in and plugins in use).
func (c *Controller) DriverNames() []string { return c.drivers.Names() }

// driver returns the network driver name, resolving a plugin on first use.
func (c *Controller) driver(ctx context.Context, name string) (driver.Driver, error) {
	d, err := c.drivers.Get(name)
	if err == nil || c.plugins == nil {
		return d, err
	}
	if d, err = c.plugins.NetworkDriver(ctx, name); err != nil {
		return nil, err
	}
	if err := c.drivers.Register(d); err != nil {
		return c.drivers.Get(name) // registered concurrently
	}
	return d, nil
}

// allocator returns the IPAM driver name, resolving a plugin on first use.
func (c *Controller) allocator(ctx context.Context, name string) (ipam.Allocator, error) {
	c.ipamMu.Lock()
	defer c.ipamMu.Unlock()
	if a, ok := c.ipams[name]; ok {
		return a, nil
	}
	if c.plugins == nil {
		return nil, errdefs.NotFound("IPAM driver %q not found (available: default, null)", name)
	}
	a, err := c.plugins.IPAM(ctx, name)
	if err != nil {
		return nil, err
	}
	c.ipams[name] = a
	return a, nil
}
