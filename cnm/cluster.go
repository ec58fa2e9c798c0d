package cnm

import (
	"context"
	"net/netip"
	"sort"
	"time"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

// Cluster is the controller's seam to cluster mode: global records, the global IPAM and
// a stream of what other nodes do. Package stack implements it over package cluster
// (etcd); tests use an in-memory fake. Without one (Config.Cluster nil) the controller
// is single-host and refuses global-scope networks.
//
// The controller calls it outside opMu where it can (etcd round trips must not stall
// local work) and always before the local kernel work it guards: global facts are
// decided in the cluster store first, then applied locally.
type Cluster interface {
	// Self is this node.
	Self() Node
	// CreateNetwork records a global network cluster-wide. Conflict when its name is
	// taken anywhere in the cluster.
	CreateNetwork(ctx context.Context, n Network) error
	// DeleteNetwork removes a global network. Forbidden (naming a node) while any node
	// has endpoints on it; NotFound when it is gone.
	DeleteNetwork(ctx context.Context, id string) error
	// PublishEndpoint records (or updates) a local endpoint of a global network.
	// Conflict when another endpoint has its name on that network, NotFound when the
	// network is gone.
	PublishEndpoint(ctx context.Context, ep RemoteEndpoint) error
	// WithdrawEndpoint removes an endpoint record; a missing one is not an error.
	WithdrawEndpoint(ctx context.Context, networkID, endpointID string) error
	// IPAM allocates pools and addresses of the global address space.
	IPAM() ipam.Allocator
	// AllocateVNIs reserves n cluster-unique VXLAN network IDs for network netID:
	// the wanted ones (Conflict when taken), the rest from 4096 up.
	AllocateVNIs(ctx context.Context, netID string, want []uint32, n int) ([]uint32, error)
	// ReleaseVNIs frees what AllocateVNIs reserved for netID.
	ReleaseVNIs(ctx context.Context, netID string) error
	// CreateService records a service on global networks (Conflict when its name is
	// taken in the cluster); DeleteService removes it.
	CreateService(ctx context.Context, s Service) error
	DeleteService(ctx context.Context, id string) error
	// UpdateService replaces a service's record (Conflict when an ingress port it
	// adds is taken).
	UpdateService(ctx context.Context, s Service) error
	// AckWithdrawal records that this node stopped choosing draining endpoint eid;
	// WaitWithdrawn waits until every ready node did, or timeout passes, and returns
	// the names of the nodes that had not.
	AckWithdrawal(ctx context.Context, eid string) error
	WaitWithdrawn(ctx context.Context, eid string, timeout time.Duration) ([]string, error)
	// Watch returns the cluster's current state and then every change, in order and
	// without gaps, until ctx ends. Endpoints of nodes that are down are not in the
	// state and are reported removed when their node goes down.
	Watch(ctx context.Context) (ClusterState, <-chan ClusterEvent, error)
}

// Node is a cluster member as the controller needs it.
type Node struct {
	ID   string
	Name string
	Addr netip.Addr // underlay (advertise) address
}

// RemoteEndpoint is the cluster-wide part of an endpoint on a global network: what
// every node knows about it (DNS names, addresses, MAC, where it lives). Endpoints of
// other nodes exist in the controller only as these, read-only: they are never stored
// locally, counted as local, joined or handed to a driver's Cleanup.
type RemoteEndpoint struct {
	ID          string
	Name        string
	NetworkID   string
	Node        Node
	SandboxID   string
	SandboxName string
	Addr4       netip.Prefix
	Addr6       netip.Prefix
	MAC         string
	Names       []string // the names it answers to on its network (embedded DNS)
	Service     string   // the service its sandbox is a task of (ID)
	Starting    bool     // that task does not listen on its service's ports yet
	Router      bool     // a node's router on the ingress network (no sandbox)
	Draining    bool     // that task is being removed: no new connections
}

// ClusterState is a snapshot of the global records.
type ClusterState struct {
	Networks  []Network
	Endpoints []RemoteEndpoint // all live endpoints, this node's included
	Services  []Service
}

// ClusterEventKind says what changed.
type ClusterEventKind int

// Cluster event kinds.
const (
	NetworkAdded ClusterEventKind = iota + 1
	NetworkRemoved
	EndpointAdded // also an update of an endpoint already known
	EndpointRemoved
	ServiceAdded // also an update
	ServiceRemoved
)

// ClusterEvent is one change of the global records.
type ClusterEvent struct {
	Kind     ClusterEventKind
	Network  Network        // NetworkAdded, NetworkRemoved (ID set)
	Endpoint RemoteEndpoint // EndpointAdded, EndpointRemoved (ID, NetworkID set)
	Service  Service        // ServiceAdded, ServiceRemoved
}

// errNoCluster refuses global-scope work on a single-host controller.
func errNoCluster(drv string) error {
	return errdefs.InvalidArgument("driver %q has global scope: global-scope networks need cluster mode (pierd --cluster-init, --cluster-join or --cluster-store)", drv)
}

func (n *Network) global() bool { return n.Scope == driver.ScopeGlobal }

// RemoteEndpoints lists the endpoints of other nodes on network ref, sorted by name.
func (c *Controller) RemoteEndpoints(ctx context.Context, ref string) ([]RemoteEndpoint, error) {
	n, err := c.Network(ctx, ref)
	if err != nil {
		return nil, err
	}
	c.mu.RLock()
	defer c.mu.RUnlock()
	var out []RemoteEndpoint
	for _, ep := range c.remote[n.ID] {
		out = append(out, *ep)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// remoteNameTaken reports whether another node has an endpoint named name on network
// nid (a fast refusal; the cluster store decides).
func (c *Controller) remoteNameTaken(nid, name string) bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	for _, ep := range c.remote[nid] {
		if ep.Name == name {
			return true
		}
	}
	return false
}
