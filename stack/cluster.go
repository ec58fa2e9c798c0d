package stack

import (
	"context"
	"maps"
	"net/netip"
	"sort"
	"time"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/cluster"
	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/overlay"
	"github.com/piernet/pier/ipam"
	"github.com/piernet/pier/lb"
)

// clusterSeam adapts package cluster to the controller's cnm.Cluster seam: it only
// converts records, every decision is the cluster package's.
type clusterSeam struct{ c *cluster.Cluster }

var _ cnm.Cluster = clusterSeam{}

func (s clusterSeam) Self() cnm.Node { return toNode(s.c.Self()) }

func toNode(r cluster.NodeRecord) cnm.Node { return cnm.Node{ID: r.ID, Name: r.Name, Addr: r.Addr} }

func (s clusterSeam) CreateNetwork(ctx context.Context, n cnm.Network) error {
	return s.c.CreateNetwork(ctx, toRecord(n))
}

func (s clusterSeam) DeleteNetwork(ctx context.Context, id string) error {
	return s.c.DeleteNetwork(ctx, id)
}

func (s clusterSeam) PublishEndpoint(ctx context.Context, ep cnm.RemoteEndpoint) error {
	return s.c.PutEndpoint(ctx, cluster.EndpointRecord{ID: ep.ID, Name: ep.Name, NetworkID: ep.NetworkID,
		SandboxID: ep.SandboxID, SandboxName: ep.SandboxName, Addr4: ep.Addr4, Addr6: ep.Addr6, MAC: ep.MAC, DNSNames: ep.Names,
		Service: ep.Service, Starting: ep.Starting, Draining: ep.Draining, Router: ep.Router})
}

func (s clusterSeam) CreateService(ctx context.Context, svc cnm.Service) error {
	return s.c.CreateService(ctx, toServiceRecord(svc))
}

func (s clusterSeam) UpdateService(ctx context.Context, svc cnm.Service) error {
	return s.c.UpdateService(ctx, toServiceRecord(svc))
}

func (s clusterSeam) DeleteService(ctx context.Context, id string) error {
	return s.c.DeleteService(ctx, id)
}

func (s clusterSeam) AckWithdrawal(ctx context.Context, eid string) error {
	return s.c.AckWithdrawal(ctx, eid)
}

func (s clusterSeam) WaitWithdrawn(ctx context.Context, eid string, timeout time.Duration) ([]string, error) {
	return s.c.WaitWithdrawn(ctx, eid, timeout)
}

func toServiceRecord(s cnm.Service) cluster.ServiceRecord {
	r := cluster.ServiceRecord{ID: s.ID, Name: s.Name, Mode: s.Mode, Sticky: s.Sticky, StopGrace: s.StopGrace, Created: s.Created}
	for _, p := range s.Ports {
		r.Ports = append(r.Ports, p.String())
	}
	for _, v := range s.VIPs {
		r.VIPs = append(r.VIPs, cluster.ServiceVIPRecord{NetworkID: v.NetworkID, Addr: v.Addr})
	}
	for _, p := range s.Publish {
		r.Publish = append(r.Publish, p.String())
	}
	r.IngressSNAT = s.IngressSNAT
	return r
}

// fromServiceRecord converts a record; ports that do not parse (a record from a newer
// node) are dropped, which widens the VIP to every port, never narrows what works.
func fromServiceRecord(r cluster.ServiceRecord) cnm.Service {
	s := cnm.Service{ID: r.ID, Name: r.Name, Mode: r.Mode, Sticky: r.Sticky, StopGrace: r.StopGrace, Created: r.Created}
	for _, p := range r.Ports {
		if port, err := lb.ParsePort(p); err == nil {
			s.Ports = append(s.Ports, port)
		}
	}
	for _, v := range r.VIPs {
		s.VIPs = append(s.VIPs, cnm.ServiceVIP{NetworkID: v.NetworkID, Addr: v.Addr})
	}
	for _, p := range r.Publish {
		if ports, err := cnm.ParsePublish(p); err == nil {
			s.Publish = append(s.Publish, ports...)
		}
	}
	s.IngressSNAT = r.IngressSNAT
	return s
}

func (s clusterSeam) WithdrawEndpoint(ctx context.Context, nid, eid string) error {
	return s.c.DeleteEndpoint(ctx, nid, eid)
}

func (s clusterSeam) IPAM() ipam.Allocator { return s.c.IPAM() }

func (s clusterSeam) AllocateVNIs(ctx context.Context, nid string, want []uint32, n int) ([]uint32, error) {
	return s.c.AllocateVNIs(ctx, nid, want, n)
}

func (s clusterSeam) ReleaseVNIs(ctx context.Context, nid string) error {
	return s.c.ReleaseVNIs(ctx, nid)
}

// Watch translates the cluster's subscription; node addresses come from the view.
func (s clusterSeam) Watch(ctx context.Context) (cnm.ClusterState, <-chan cnm.ClusterEvent, error) {
	snap, events := s.c.Subscribe(ctx)
	nodes := map[string]cnm.Node{}
	for _, n := range snap.Nodes {
		nodes[n.ID] = toNode(n.NodeRecord)
	}
	var st cnm.ClusterState
	for _, n := range snap.Networks {
		st.Networks = append(st.Networks, fromRecord(n))
	}
	for _, ep := range snap.Endpoints {
		st.Endpoints = append(st.Endpoints, fromEndpoint(ep, nodes))
	}
	for _, svc := range snap.Services {
		st.Services = append(st.Services, fromServiceRecord(svc))
	}
	out := make(chan cnm.ClusterEvent)
	go func() {
		defer close(out)
		for ev := range events {
			var ce cnm.ClusterEvent
			switch ev.Kind {
			case cluster.NodeChanged:
				nodes[ev.Node.ID] = toNode(ev.Node.NodeRecord)
				continue
			case cluster.NetworkAdded:
				ce = cnm.ClusterEvent{Kind: cnm.NetworkAdded, Network: fromRecord(ev.Network)}
			case cluster.NetworkRemoved:
				ce = cnm.ClusterEvent{Kind: cnm.NetworkRemoved, Network: fromRecord(ev.Network)}
			case cluster.EndpointAdded:
				ce = cnm.ClusterEvent{Kind: cnm.EndpointAdded, Endpoint: fromEndpoint(ev.Endpoint, nodes)}
			case cluster.EndpointRemoved:
				ce = cnm.ClusterEvent{Kind: cnm.EndpointRemoved, Endpoint: fromEndpoint(ev.Endpoint, nodes)}
			case cluster.ServiceAdded:
				ce = cnm.ClusterEvent{Kind: cnm.ServiceAdded, Service: fromServiceRecord(ev.Service)}
			case cluster.ServiceRemoved:
				ce = cnm.ClusterEvent{Kind: cnm.ServiceRemoved, Service: fromServiceRecord(ev.Service)}
			}
			select {
			case out <- ce:
			case <-ctx.Done():
				return
			}
		}
	}()
	return st, out, nil
}

func fromEndpoint(ep cluster.EndpointRecord, nodes map[string]cnm.Node) cnm.RemoteEndpoint {
	return cnm.RemoteEndpoint{ID: ep.ID, Name: ep.Name, NetworkID: ep.NetworkID, Node: nodes[ep.NodeID],
		SandboxID: ep.SandboxID, SandboxName: ep.SandboxName, Addr4: ep.Addr4, Addr6: ep.Addr6, MAC: ep.MAC, Names: ep.DNSNames,
		Service: ep.Service, Starting: ep.Starting, Draining: ep.Draining, Router: ep.Router}
}

func toRecord(n cnm.Network) cluster.NetworkRecord {
	return cluster.NetworkRecord{ID: n.ID, Name: n.Name, Driver: n.Driver, IPAMDriver: n.IPAMDriver, Options: n.Options,
		IPAMOptions: n.IPAMOptions, Labels: n.Labels, Internal: n.Internal, Attachable: n.Attachable,
		EnableIPv6: n.EnableIPv6, DisableIPv4: n.DisableIPv4, IPv4: toPools(n.IPv4), IPv6: toPools(n.IPv6),
		VNIs: n.VNIs, Ingress: n.Ingress, Created: n.Created}
}

func fromRecord(r cluster.NetworkRecord) cnm.Network {
	return cnm.Network{ID: r.ID, Name: r.Name, Driver: r.Driver, Scope: driver.ScopeGlobal, Created: r.Created,
		Internal: r.Internal, Attachable: r.Attachable, EnableIPv6: r.EnableIPv6, DisableIPv4: r.DisableIPv4,
		Options: r.Options, Labels: r.Labels, IPAMDriver: r.IPAMDriver, IPAMOptions: r.IPAMOptions,
		IPv4: fromPools(r.IPv4), IPv6: fromPools(r.IPv6), VNIs: r.VNIs, Ingress: r.Ingress}
}

// Global pool IDs carry the controller's global prefix in cnm records; the cluster
// store keeps them as the controller hands them over.
func toPools(ps []cnm.Pool) []cluster.PoolRecord {
	out := make([]cluster.PoolRecord, 0, len(ps))
	for _, p := range ps {
		out = append(out, cluster.PoolRecord{PoolID: p.PoolID, Subnet: p.Subnet, IPRange: p.IPRange, Gateway: p.Gateway, Aux: p.Aux})
	}
	return out
}

func fromPools(ps []cluster.PoolRecord) []cnm.Pool {
	out := make([]cnm.Pool, 0, len(ps))
	for _, p := range ps {
		out = append(out, cnm.Pool{PoolID: p.PoolID, AddressSpace: ipam.SpaceGlobal, Subnet: p.Subnet, IPRange: p.IPRange,
			Gateway: p.Gateway, Aux: p.Aux})
	}
	return out
}

// ClusterView serves the API's /pier/v1/nodes and /pier/v1/cluster (api.Cluster).
type ClusterView struct {
	c      *cluster.Cluster
	tunnel *tunnel
	store  []string
	token  func() string
	selfID string
}

// RotateKey replaces this node's WireGuard key pair (see tunnel.rotate).
func (v *ClusterView) RotateKey(ctx context.Context) (types.KeyRotation, error) {
	r, err := v.tunnel.rotate(ctx)
	if err != nil {
		return types.KeyRotation{}, err
	}
	return types.KeyRotation{Generation: r.Generation, PublicKey: r.PublicKey, Took: r.Took.Round(time.Millisecond).String(), Missing: r.Missing, NoSession: r.NoSession}, nil
}

func (v *ClusterView) Nodes(ctx context.Context) ([]types.NodeInfo, error) {
	var out []types.NodeInfo
	for _, n := range v.c.Nodes() {
		out = append(out, types.NodeInfo{ID: n.ID, Name: n.Name, Address: addrString(n.Addr), State: string(n.State),
			Self: n.ID == v.selfID, Version: n.Version, Endpoints: n.Endpoints, EtcdMember: n.EtcdMember, Capabilities: n.Capabilities})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (v *ClusterView) Info(ctx context.Context) (types.ClusterInfo, error) {
	self := v.c.Self()
	info := types.ClusterInfo{NodeID: self.ID, NodeName: self.Name, Store: v.store}
	if v.token != nil {
		info.Token = v.token()
	}
	return info, nil
}

func addrString(a netip.Addr) string {
	if !a.IsValid() {
		return ""
	}
	return a.String()
}

// joinCluster registers this node in the cluster store and the overlay driver in reg,
// and returns the controller's seam.
func (s *Stack) joinCluster(ctx context.Context, o Options, reg *driver.Registry) (cnm.Cluster, error) {
	co := o.Cluster
	s.tunnel = openTunnel(ctx, o, s.Host)
	caps := maps.Clone(co.Capabilities)
	if caps == nil {
		caps = map[string]string{}
	}
	caps["encryption"] = s.tunnel.capability()
	cl, err := cluster.New(cluster.Options{KV: co.KV, NodeID: co.NodeID, NodeName: co.NodeName, Advertise: co.Advertise,
		TTL: co.TTL, Version: co.Version, EtcdMember: co.EtcdMember, Capabilities: caps, Logger: o.Logger,
		WGKey: s.tunnel.publicKey(), WGPort: s.tunnel.port})
	if err != nil {
		return nil, err
	}
	if err := cl.Start(ctx); err != nil {
		return nil, err
	}
	s.cluster = cl
	s.tunnel.follow(ctx, cl, co.KeyRotation)
	ov := overlay.New(overlay.Options{Kernel: s.tunnel.kernel(s.Host), Advertise: co.Advertise,
		Port: co.VXLANPort, Logger: o.Logger, ProbeTunnel: true})
	if err := reg.Register(ov); err != nil {
		return nil, err
	}
	ov.Start(ctx)
	s.overlay = ov
	s.ClusterView = &ClusterView{c: cl, tunnel: s.tunnel, store: co.Endpoints, token: co.Token, selfID: co.NodeID}
	return clusterSeam{cl}, nil
}
