package cluster

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/piernet/pier/errdefs"
)

// Key layout. Everything pier keeps in etcd lives under Root.
const (
	Root          = "/pier/v1/"
	prefMembers   = Root + "nodes/"          // nodes/<id>: NodeRecord, no lease (static facts, "left")
	prefAlive     = Root + "alive/"          // alive/<id>: on the node's lease (liveness)
	prefNodeNames = Root + "names/nodes/"    // names/nodes/<name>: node ID
	prefNetworks  = Root + "networks/"       // networks/<id>: NetworkRecord
	prefNetNames  = Root + "names/networks/" // names/networks/<name>: network ID
	prefEndpoints = Root + "endpoints/"      // endpoints/<net>/<ep>: EndpointRecord
	prefEpNames   = Root + "names/endpoints/"
	keyPools      = Root + "ipam/pools"      // one key: the list of global pools (CAS)
	prefAddrs     = Root + "ipam/addrs/"     // ipam/addrs/<pool>/<addr>: owner
	prefVNIs      = Root + "vni/"            // vni/<n>: network ID
	prefServices  = Root + "services/"       // services/<id>: ServiceRecord
	prefSvcNames  = Root + "names/services/" // names/services/<name>: service ID
	prefIngress   = Root + "names/ingress/"  // names/ingress/<proto>/<port>: service ID
	prefAcks      = Root + "acks/"           // acks/<endpoint>/<node>: the node stopped choosing a draining task
	prefKeyAcks   = Root + "wgacks/"         // wgacks/<node>/<peer>: the key generation of node that peer uses
	keyRotateLock = Root + "locks/wgrotate"  // the node rotating its key (node lease)
)

// NodeRecord is a node's static facts (nodes/<id>).
type NodeRecord struct {
	ID           string
	Name         string
	Addr         netip.Addr
	Version      string
	BootID       string            `json:",omitempty"`
	Capabilities map[string]string `json:",omitempty"`
	EtcdMember   bool              `json:",omitempty"`
	Started      time.Time
	Left         bool `json:",omitempty"` // shut down gracefully
	// WGKey is the node's WireGuard public key (base64) and WGPort its tunnel's UDP
	// port: encrypted overlays between nodes travel inside that tunnel. The private
	// key never leaves the node.
	WGKey  string `json:",omitempty"`
	WGPort int    `json:",omitempty"`
	// WGGen counts the node's key rotations: peers acknowledge a generation
	// (wgacks/<node>/<peer>) once they use its key.
	WGGen int64 `json:",omitempty"`
}

// PoolRecord is one pool of a global network.
type PoolRecord struct {
	PoolID  string
	Subnet  netip.Prefix
	IPRange netip.Prefix          `json:",omitempty"`
	Gateway netip.Prefix          `json:",omitempty"`
	Aux     map[string]netip.Addr `json:",omitempty"`
}

// NetworkRecord is a global network (networks/<id>).
type NetworkRecord struct {
	ID          string
	Name        string
	Driver      string
	IPAMDriver  string
	Options     map[string]string `json:",omitempty"`
	IPAMOptions map[string]string `json:",omitempty"`
	Labels      map[string]string `json:",omitempty"`
	Internal    bool              `json:",omitempty"`
	Attachable  bool              `json:",omitempty"`
	EnableIPv6  bool              `json:",omitempty"`
	DisableIPv4 bool              `json:",omitempty"`
	IPv4        []PoolRecord      `json:",omitempty"`
	IPv6        []PoolRecord      `json:",omitempty"`
	VNIs        []uint32          `json:",omitempty"`
	Ingress     bool              `json:",omitempty"`
	Created     time.Time
	CreatedBy   string // node ID
}

// EndpointRecord is an endpoint of a global network (endpoints/<net>/<ep>), written by
// the node that hosts it.
type EndpointRecord struct {
	ID          string
	Name        string
	NetworkID   string
	NodeID      string
	SandboxID   string       `json:",omitempty"`
	SandboxName string       `json:",omitempty"`
	Addr4       netip.Prefix `json:",omitempty"`
	Addr6       netip.Prefix `json:",omitempty"`
	MAC         string       `json:",omitempty"`
	DNSNames    []string     `json:",omitempty"`
	// Service is the ID of the service the endpoint's sandbox is a task of. Starting:
	// it does not listen on the service's ports yet; Draining: its removal began. No
	// node may choose it for new connections in either.
	Service  string `json:",omitempty"`
	Starting bool   `json:",omitempty"`
	Draining bool   `json:",omitempty"`
	// Router: the node's router on the ingress network (the routing mesh).
	Router bool `json:",omitempty"`
}

// ServiceRecord is a service on global networks (services/<id>).
type ServiceRecord struct {
	ID        string
	Name      string
	Mode      string
	Ports     []string      `json:",omitempty"` // "80/tcp"
	Sticky    time.Duration `json:",omitempty"`
	StopGrace time.Duration
	VIPs      []ServiceVIPRecord
	// Publish: "mode=ingress,published=8080,target=80,protocol=tcp" each.
	Publish     []string `json:",omitempty"`
	IngressSNAT bool     `json:",omitempty"`
	Created     time.Time
	CreatedBy   string
}

// ServiceVIPRecord is a service's network and its virtual IP there (none in dnsrr).
type ServiceVIPRecord struct {
	NetworkID string
	Addr      netip.Prefix `json:",omitempty"`
}

// DecodeService decodes and checks a service record.
func DecodeService(b []byte) (ServiceRecord, error) {
	var r ServiceRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return r, errdefs.Internal("decoding service record: %v", err)
	}
	if !validID(r.ID) || !validName(r.Name) || len(r.VIPs) == 0 || r.Sticky < 0 || r.StopGrace < 0 {
		return r, errdefs.Internal("invalid service record (id %q, name %q, %d networks)", r.ID, r.Name, len(r.VIPs))
	}
	for _, v := range r.VIPs {
		if !validID(v.NetworkID) || v.Addr.IsValid() && !v.Addr.Addr().Is4() {
			return r, errdefs.Internal("invalid virtual IP %v on network %q in service record %s", v.Addr, v.NetworkID, r.ID)
		}
	}
	return r, nil
}

// Decoders validate: what comes back from etcd is input like any other.

func validID(id string) bool {
	return id != "" && len(id) <= 128 && !strings.ContainsAny(id, "/ \t\n")
}

func validName(s string) bool { return s != "" && len(s) <= 255 && !strings.Contains(s, "\x00") }

// DecodeNode decodes and checks a node record.
func DecodeNode(b []byte) (NodeRecord, error) {
	var r NodeRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return r, errdefs.Internal("decoding node record: %v", err)
	}
	if !validID(r.ID) || !validName(r.Name) || !r.Addr.IsValid() {
		return r, errdefs.Internal("invalid node record (id %q, name %q, addr %v)", r.ID, r.Name, r.Addr)
	}
	return r, nil
}

// DecodeNetwork decodes and checks a network record.
func DecodeNetwork(b []byte) (NetworkRecord, error) {
	var r NetworkRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return r, errdefs.Internal("decoding network record: %v", err)
	}
	if !validID(r.ID) || !validName(r.Name) || r.Driver == "" {
		return r, errdefs.Internal("invalid network record (id %q, name %q, driver %q)", r.ID, r.Name, r.Driver)
	}
	for _, p := range append(append([]PoolRecord{}, r.IPv4...), r.IPv6...) {
		if !p.Subnet.IsValid() || p.Gateway.IsValid() && !p.Subnet.Contains(p.Gateway.Addr()) {
			return r, errdefs.Internal("invalid pool %v (gateway %v) in network record %s", p.Subnet, p.Gateway, r.ID)
		}
	}
	return r, nil
}

// DecodeEndpoint decodes and checks an endpoint record.
func DecodeEndpoint(b []byte) (EndpointRecord, error) {
	var r EndpointRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return r, errdefs.Internal("decoding endpoint record: %v", err)
	}
	if !validID(r.ID) || !validID(r.NetworkID) || !validID(r.NodeID) || !validName(r.Name) {
		return r, errdefs.Internal("invalid endpoint record (id %q, network %q, node %q)", r.ID, r.NetworkID, r.NodeID)
	}
	if r.Addr4.IsValid() && !r.Addr4.Addr().Is4() || r.Addr6.IsValid() && !r.Addr6.Addr().Is6() {
		return r, errdefs.Internal("invalid addresses %v/%v in endpoint record %s", r.Addr4, r.Addr6, r.ID)
	}
	if r.Service != "" && !validID(r.Service) {
		return r, errdefs.Internal("invalid service %q in endpoint record %s", r.Service, r.ID)
	}
	return r, nil
}

// poolList is the value of keyPools.
type poolList struct {
	Pools []globalPool
}

type globalPool struct {
	ID        string // = Subnet.String()
	Subnet    netip.Prefix
	IPRange   netip.Prefix `json:",omitempty"`
	Network   string       // name, for messages
	NetworkID string       `json:",omitempty"`
}

func decodePools(b []byte) (poolList, error) {
	var l poolList
	if len(b) == 0 {
		return l, nil
	}
	if err := json.Unmarshal(b, &l); err != nil {
		return l, errdefs.Internal("decoding pool list: %v", err)
	}
	for _, p := range l.Pools {
		if !p.Subnet.IsValid() || p.ID != p.Subnet.String() {
			return l, errdefs.Internal("invalid pool %q in the pool list", p.ID)
		}
	}
	return l, nil
}

func mustJSON(v any) []byte {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("encoding %T: %v", v, err)) // only our own plain structs get here
	}
	return b
}

// key helpers

func epKey(nid, eid string) string             { return prefEndpoints + nid + "/" + eid }
func epNameKey(nid, name string) string        { return prefEpNames + nid + "/" + escape(name) }
func addrKey(pool string, a netip.Addr) string { return prefAddrs + escape(pool) + "/" + a.String() }
func vniKey(v uint32) string                   { return prefVNIs + strconv.FormatUint(uint64(v), 10) }

// escape makes a name usable as one key segment.
func escape(s string) string { return strings.NewReplacer("%", "%25", "/", "%2F").Replace(s) }
