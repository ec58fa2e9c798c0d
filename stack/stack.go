// Package stack wires pier's single-host stack: store, IPAM, firewall, sandbox OS,
// built-in drivers and the controller, for a given host namespace. It is the one place
// that knows how the pieces fit; mains and integration tests call Open.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"time"

	"github.com/piernet/pier/cluster"
	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/dns"
	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/bridge"
	"github.com/piernet/pier/driver/builtin"
	"github.com/piernet/pier/driver/overlay"
	"github.com/piernet/pier/driver/remote"
	"github.com/piernet/pier/firewall"
	"github.com/piernet/pier/ipam"
	ipamremote "github.com/piernet/pier/ipam/remote"
	"github.com/piernet/pier/lb"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/plugin"
	"github.com/piernet/pier/portmap"
	"github.com/piernet/pier/store"
)

// DefaultBridgeName is the Linux bridge of the predefined network "bridge".
const DefaultBridgeName = "pier0"

// Options configure the stack.
type Options struct {
	DataRoot       string // records: DataRoot/pier.db (default /var/lib/pier)
	ExecRoot       string // namespaces and sandbox files (default /run/pier)
	HostNetNS      string // path of the namespace acting as the host; "" = our own
	DefaultPools   []ipam.PredefinedPool
	HostResolvConf string
	Logger         *slog.Logger
	// PluginDirs are where Docker plugins (remote network and IPAM drivers) are found;
	// zero = Docker's /run/docker/plugins, /etc/docker/plugins, /usr/lib/docker/plugins.
	PluginDirs plugin.Dirs
	// PluginTimeout bounds every plugin call (default plugin.DefaultTimeout).
	PluginTimeout time.Duration
	// Cluster, when set, joins a cluster: global-scope networks, the overlay driver,
	// other nodes' endpoints. Nil = single host.
	Cluster *ClusterOptions
	// StopGrace is how long sandbox rm -f waits after SIGTERM before SIGKILL (zero =
	// cnm.DefaultStopGrace).
	StopGrace time.Duration
}

// ClusterOptions are what the stack needs to join a cluster.
type ClusterOptions struct {
	KV        cluster.KV // the cluster store
	Endpoints []string   // shown by the API
	NodeID    string
	NodeName  string
	Advertise netip.Addr // underlay address (the VXLAN source)
	TTL       time.Duration
	VXLANPort int
	Version   string
	// EtcdMember and Token describe an embedded etcd member, when this node runs one.
	EtcdMember bool
	Token      func() string
	// Capabilities are the kernel features this node reports (pier node ls).
	Capabilities map[string]string
	// WGPort is the UDP port of the WireGuard tunnel of encrypted overlays (0: 51820);
	// KeyRotation rotates its key that often (0: only on request).
	WGPort      int
	KeyRotation time.Duration
}

// Stack is an opened single-host pier stack.
type Stack struct {
	Controller *cnm.Controller
	Firewall   *firewall.Firewall
	Host       *netns.Namespace

	// ClusterView is what the API shows of the cluster (nil on a single host).
	ClusterView *ClusterView

	store   *store.Store
	cluster *cluster.Cluster
	overlay *overlay.Driver
	nsm     *netns.Manager
	drivers io.Closer
	dns     *dns.Server
	proxy   *portmap.Proxy
	lb      *lb.Sandboxes
	mesh    *mesh   // cluster mode only
	tunnel  *tunnel // cluster mode only
}

// Open builds every component and restores the recorded state.
func Open(ctx context.Context, o Options) (*Stack, error) {
	o = withDefaults(o)
	s := &Stack{}
	if err := s.open(ctx, o); err != nil {
		return nil, errors.Join(err, s.Close())
	}
	return s, nil
}

func withDefaults(o Options) Options {
	if o.DataRoot == "" {
		o.DataRoot = "/var/lib/pier"
	}
	if o.ExecRoot == "" {
		o.ExecRoot = "/run/pier"
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (s *Stack) open(ctx context.Context, o Options) error {
	var err error
	if s.store, err = store.Open(filepath.Join(o.DataRoot, "pier.db")); err != nil {
		return err
	}
	if s.Host, err = openHost(o.HostNetNS); err != nil {
		return err
	}
	alloc, err := ipam.New(ipam.Config{LocalPools: o.DefaultPools, V6Seed: ipam.MachineSeed(o.DataRoot), IsRouted: s.Host.Routed})
	if err != nil {
		return err
	}
	if s.Firewall, err = firewall.New(ctx, firewall.Options{NetNS: s.Host.Handle, Logger: o.Logger}); err != nil {
		return err
	}
	reg := driver.NewRegistry()
	pub, err := s.startPublishing(ctx, o.Logger)
	if err != nil {
		return err
	}
	if s.drivers, err = builtin.Register(reg, builtin.Deps{Host: s.Host, Firewall: s.Firewall, Publish: pub, Logger: o.Logger}); err != nil {
		return err
	}
	s.nsm = netns.NewManager(filepath.Join(o.ExecRoot, "netns"), s.Host)
	plugins := plugins{loader: plugin.NewLoader(plugin.Options{Dirs: o.PluginDirs, Timeout: o.PluginTimeout, Logger: o.Logger}),
		log: o.Logger}
	s.dns = dns.New(dns.Options{Logger: o.Logger})
	// Stack.Close stops the resolver. It must not stop on its own when ctx ends while
	// requests still being finished update it (a graceful shutdown).
	if err := s.dns.Start(context.WithoutCancel(ctx)); err != nil {
		return err
	}
	s.lb = lb.NewSandboxes(o.Logger)
	var seam cnm.Cluster
	var meshSeam cnm.Mesh
	if o.Cluster != nil {
		if seam, err = s.joinCluster(ctx, o, reg); err != nil {
			return err
		}
		if s.mesh, err = newMesh(ctx, s.Host, s.proxy, o.Logger); err != nil {
			return err
		}
		meshSeam = s.mesh
		s.Firewall.AfterHeal(s.mesh.heal) // `nft flush ruleset` takes the mesh's table too
	}
	s.Controller, err = cnm.New(ctx, cnm.Config{ExecRoot: o.ExecRoot, Store: s.store, Drivers: reg, IPAM: alloc,
		Plugins: plugins, DNS: s.dns, OS: s.nsm, Logger: o.Logger, HostResolvConf: o.HostResolvConf, Cluster: seam,
		StopGrace: o.StopGrace, LoadBalancer: s.lb, Mesh: meshSeam, DefaultBridgeOptions: map[string]string{bridge.OptBridgeName: DefaultBridgeName, bridge.OptDefaultBridge: "true"}})
	if err != nil {
		return err
	}
	s.Controller.Start(ctx) // other nodes' changes, in cluster mode
	if err := s.Firewall.Reconcile(ctx); err != nil {
		return err
	}
	return s.Firewall.Start(ctx) // self-healing: restores the table if someone removes it
}

// startPublishing builds the port allocator and starts the loopback proxy.
func (s *Stack) startPublishing(ctx context.Context, log *slog.Logger) (bridge.Publisher, error) {
	s.proxy = portmap.NewProxy(s.Host, portmap.ProxyOptions{Logger: log})
	if err := s.proxy.Start(ctx); err != nil {
		return bridge.Publisher{}, err
	}
	return bridge.Publisher{Ports: portmap.NewAllocator(portmap.NamespaceHost(s.Host), log), Proxy: s.proxy}, nil
}

// plugins resolves Docker plugins for the controller (cnm.Plugins).
type plugins struct {
	loader *plugin.Loader
	log    *slog.Logger
}

func (p plugins) NetworkDriver(ctx context.Context, name string) (driver.Driver, error) {
	pl, err := p.loader.Get(ctx, name, plugin.NetworkDriver)
	if err != nil {
		return nil, err
	}
	return remote.New(ctx, pl, p.log)
}

func (p plugins) IPAM(ctx context.Context, name string) (ipam.Allocator, error) {
	pl, err := p.loader.Get(ctx, name, plugin.IpamDriver)
	if err != nil {
		return nil, err
	}
	return ipamremote.New(ctx, pl, p.log)
}

func openHost(path string) (*netns.Namespace, error) {
	if path == "" {
		return netns.Current()
	}
	return netns.Open(path)
}

// Close releases handles; kernel state and records stay for the next Open.
func (s *Stack) Close() error {
	var errs []error
	if s.Controller != nil {
		s.Controller.Close()
	}
	if s.cluster != nil {
		errs = append(errs, s.cluster.Close(context.Background()))
	}
	if s.overlay != nil {
		errs = append(errs, s.overlay.Close())
	}
	if s.tunnel != nil {
		errs = append(errs, s.tunnel.Close())
	}
	if s.dns != nil {
		errs = append(errs, s.dns.Close())
	}
	if s.drivers != nil {
		errs = append(errs, s.drivers.Close())
	}
	if s.proxy != nil {
		errs = append(errs, s.proxy.Close())
	}
	if s.lb != nil {
		errs = append(errs, s.lb.Close())
	}
	if s.mesh != nil {
		errs = append(errs, s.mesh.Close())
	}
	if s.nsm != nil {
		errs = append(errs, s.nsm.Close())
	}
	if s.Firewall != nil {
		errs = append(errs, s.Firewall.Close())
	}
	if s.Host != nil {
		errs = append(errs, s.Host.Close())
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("closing stack: %w", err)
	}
	return nil
}
