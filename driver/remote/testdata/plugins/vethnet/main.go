// Command vethnet is a test network plugin written with Docker's plugin SDK: a Linux
// bridge per network and, per endpoint, a veth pair whose host end is a port of the
// bridge and whose other end is returned as SrcName for the daemon to move into the
// sandbox. It runs in the namespace the daemon treats as the host.
package main

import (
	"flag"
	"fmt"
	"net"
	"net/netip"
	"sort"
	"sync"

	"github.com/docker/go-plugins-helpers/network"
	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/driver/remote/testdata/plugins/internal/serve"
)

type nw struct {
	bridge  string
	gateway netip.Addr
}

type driver struct {
	f *serve.Flags
	// assign: when the daemon sends no IPv4 address (null IPAM), the plugin assigns
	// one from this subnet itself, as CreateEndpoint's fill-only-empty rule allows.
	assign netip.Prefix
	next   netip.Addr
	// keep: Leave leaves the veth pair alone (the daemon must hand the sandbox end
	// back to the host namespace under its original name); DeleteEndpoint deletes it
	// and records in "returned" whether the sandbox end had come back.
	keep      bool
	scope     string   // the data scope declared
	spaces    []string // the address spaces of the IPv4 pools of created networks
	mu        sync.Mutex
	networks  map[string]nw
	endpoints map[string]string // endpoint ID → network ID
	returned  []string
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

func (d *driver) GetCapabilities() (*network.CapabilitiesResponse, error) {
	return &network.CapabilitiesResponse{Scope: d.scope}, d.f.Hit("NetworkDriver.GetCapabilities")
}

func (d *driver) CreateNetwork(r *network.CreateNetworkRequest) error {
	if err := d.f.Hit("NetworkDriver.CreateNetwork"); err != nil {
		return err
	}
	n := nw{bridge: "rb-" + short(r.NetworkID)}
	for _, p := range r.IPv4Data {
		d.mu.Lock()
		d.spaces = append(d.spaces, p.AddressSpace+" "+p.Pool)
		d.mu.Unlock()
	}
	if len(r.IPv4Data) > 0 && r.IPv4Data[0].Gateway != "" {
		n.gateway = netip.MustParsePrefix(r.IPv4Data[0].Gateway).Addr()
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = n.bridge
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := netlink.LinkAdd(br); err != nil {
		return fmt.Errorf("creating bridge %s: %w", n.bridge, err)
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return err
	}
	d.mu.Lock()
	d.networks[r.NetworkID] = n
	d.mu.Unlock()
	return nil
}

func (d *driver) DeleteNetwork(r *network.DeleteNetworkRequest) error {
	if err := d.f.Hit("NetworkDriver.DeleteNetwork"); err != nil {
		return err
	}
	d.mu.Lock()
	n, ok := d.networks[r.NetworkID]
	delete(d.networks, r.NetworkID)
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("no network %s", r.NetworkID)
	}
	return del(n.bridge)
}

func del(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil // gone already
	}
	return netlink.LinkDel(l)
}

func (d *driver) CreateEndpoint(r *network.CreateEndpointRequest) (*network.CreateEndpointResponse, error) {
	if err := d.f.Hit("NetworkDriver.CreateEndpoint"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.networks[r.NetworkID]; !ok {
		return nil, fmt.Errorf("no network %s", r.NetworkID)
	}
	d.endpoints[r.EndpointID] = r.NetworkID
	res := &network.CreateEndpointResponse{}
	if r.Interface == nil || r.Interface.MacAddress == "" {
		// Fill what was empty: the MAC of the sandbox end.
		res.Interface = &network.EndpointInterface{MacAddress: mac(r.EndpointID).String()}
	}
	if d.assign.IsValid() && (r.Interface == nil || r.Interface.Address == "") {
		d.next = d.next.Next()
		if res.Interface == nil {
			res.Interface = &network.EndpointInterface{}
		}
		res.Interface.Address = netip.PrefixFrom(d.next, d.assign.Bits()).String()
	}
	if d.f.Faults()["NetworkDriver.CreateEndpoint"] == "echo" {
		// Break Docker's rule: echo the address the daemon chose.
		res.Interface = &network.EndpointInterface{Address: r.Interface.Address}
	}
	return res, nil
}

func mac(eid string) net.HardwareAddr {
	m := net.HardwareAddr{0x02, 0x99, 0, 0, 0, 0}
	copy(m[2:], eid)
	return m
}

func (d *driver) DeleteEndpoint(r *network.DeleteEndpointRequest) error {
	if err := d.f.Hit("NetworkDriver.DeleteEndpoint"); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.endpoints, r.EndpointID)
	if d.keep {
		if _, err := netlink.LinkByName("rc" + short(r.EndpointID)); err == nil {
			d.returned = append(d.returned, r.EndpointID)
		}
	}
	d.mu.Unlock()
	return del("rh" + short(r.EndpointID))
}

func (d *driver) EndpointInfo(r *network.InfoRequest) (*network.InfoResponse, error) {
	return &network.InfoResponse{Value: map[string]string{"host_veth": "rh" + short(r.EndpointID)}}, nil
}

func (d *driver) Join(r *network.JoinRequest) (*network.JoinResponse, error) {
	if err := d.f.Hit("NetworkDriver.Join"); err != nil {
		return nil, err
	}
	d.mu.Lock()
	n, ok := d.networks[r.NetworkID]
	d.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("no network %s", r.NetworkID)
	}
	host, peer := "rh"+short(r.EndpointID), "rc"+short(r.EndpointID)
	if err := veth(n.bridge, host, peer, mac(r.EndpointID)); err != nil {
		return nil, err
	}
	res := &network.JoinResponse{InterfaceName: network.InterfaceName{SrcName: peer, DstPrefix: "eth"}}
	if n.gateway.IsValid() {
		res.Gateway = n.gateway.String()
		res.StaticRoutes = []*network.StaticRoute{{Destination: "203.0.113.0/24", RouteType: 0, NextHop: n.gateway.String()}}
	}
	return res, nil
}

func veth(bridge, host, peer string, hw net.HardwareAddr) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name, attrs.MasterIndex, attrs.Flags = host, br.Attrs().Index, net.FlagUp
	if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: peer, PeerHardwareAddr: hw}); err != nil {
		return fmt.Errorf("creating veth %s: %w", host, err)
	}
	return nil
}

func (d *driver) Leave(r *network.LeaveRequest) error {
	if err := d.f.Hit("NetworkDriver.Leave"); err != nil {
		return err
	}
	if d.keep {
		return nil
	}
	return del("rh" + short(r.EndpointID))
}

func (d *driver) AllocateNetwork(*network.AllocateNetworkRequest) (*network.AllocateNetworkResponse, error) {
	return &network.AllocateNetworkResponse{}, nil
}
func (d *driver) FreeNetwork(*network.FreeNetworkRequest) error       { return nil }
func (d *driver) DiscoverNew(*network.DiscoveryNotification) error    { return nil }
func (d *driver) DiscoverDelete(*network.DiscoveryNotification) error { return nil }
func (d *driver) ProgramExternalConnectivity(*network.ProgramExternalConnectivityRequest) error {
	return nil
}
func (d *driver) RevokeExternalConnectivity(*network.RevokeExternalConnectivityRequest) error {
	return nil
}

// state lists "networks" and "endpoints" IDs for the tests.
func (d *driver) state() any {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := map[string][]string{"networks": {}, "endpoints": {}, "returned": append([]string{}, d.returned...), "spaces": append([]string{}, d.spaces...)}
	for id := range d.networks {
		out["networks"] = append(out["networks"], id)
	}
	for id := range d.endpoints {
		out["endpoints"] = append(out["endpoints"], id)
	}
	sort.Strings(out["networks"])
	sort.Strings(out["endpoints"])
	return out
}

func main() {
	assign := flag.String("assign", "", "subnet to assign endpoint addresses from when the daemon sends none")
	keep := flag.Bool("keep-on-leave", false, "keep the veth pair at Leave; delete it at DeleteEndpoint")
	scope := flag.String("scope", network.LocalScope, "data scope to declare (local or global)")
	f := serve.Parse()
	d := &driver{f: f, keep: *keep, scope: *scope, networks: map[string]nw{}, endpoints: map[string]string{}}
	if *assign != "" {
		d.assign = netip.MustParsePrefix(*assign).Masked()
		d.next = d.assign.Addr()
	}
	f.Run(network.NewHandler(d), d.state)
}
