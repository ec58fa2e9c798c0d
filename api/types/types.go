// Package types holds the JSON shapes of pier's own API routes (/pier/v1/...), shared by
// the server (package api) and the Go client. It has no dependencies and no behaviour:
// the Docker-compatible routes use Docker's own types (github.com/moby/moby/api).
package types

import "time"

// ErrorResponse is the body of every error reply, as Docker's: {"message": "..."}.
type ErrorResponse struct {
	Message string `json:"message"`
}

// SandboxCreateRequest is the body of POST /pier/v1/sandboxes.
type SandboxCreateRequest struct {
	Name        string
	Hostname    string
	HostNetwork bool
	// Networks are connected in order. "host" makes a host-network sandbox, "none"
	// connects to the null network; no entry connects to "bridge" when it exists.
	Networks   []SandboxNetwork
	DNS        []string
	DNSSearch  []string
	DNSOptions []string
	ExtraHosts []string // "host:ip", as docker's --add-host
	// Ports are published ports in docker's -p syntax:
	// [hostIP:][hostPort[-end]:]containerPort[-end][/tcp|udp|sctp].
	Ports []string `json:",omitempty"`
	// Service makes the sandbox a task of that service (name or ID): it joins the
	// service's networks (no default network then) and serves its name.
	Service string `json:",omitempty"`
}

// SandboxNetwork is one network a new sandbox is connected to.
type SandboxNetwork struct {
	Network     string // name or ID
	IPv4Address string // static address; "" = allocate
	IPv6Address string
	Aliases     []string
	// LinkLocalIPs are extra link-local addresses (169.254.0.0/16, fe80::/10).
	LinkLocalIPs []string `json:",omitempty"`
	// Links are docker's --link values, "sandbox[:alias]".
	Links []string `json:",omitempty"`
}

// SandboxInfo describes a sandbox (reply of create, list and inspect).
type SandboxInfo struct {
	ID          string
	Name        string
	Hostname    string
	Key         string // network namespace path
	Dir         string // directory holding hosts, resolv.conf and hostname
	HostNetwork bool
	Created     time.Time
	Endpoints   []SandboxEndpoint
	Ports       []PortBinding // the actual bindings of the requested ports
	// Processes is how many processes run in the sandbox's namespace (set by inspect
	// only; a host-network sandbox has none of its own).
	Processes *int `json:",omitempty"`
	// Service is the name of the service the sandbox is a task of. Starting is set
	// until it listens on one of the service's ports (it gets no connections before);
	// Draining while its removal lets its connections finish.
	Service  string `json:",omitempty"`
	Starting bool   `json:",omitempty"`
	Draining bool   `json:",omitempty"`
}

// PortBinding is one published port: HostIP:HostPort on the host reaches
// ContainerPort/Proto in the sandbox.
type PortBinding struct {
	HostIP        string
	HostPort      uint16
	ContainerPort uint16
	Proto         string
}

// SandboxEndpoint is one network connection of a sandbox. Addresses are CIDR strings
// ("172.18.0.2/16"); empty strings mean none.
type SandboxEndpoint struct {
	Network     string
	NetworkID   string
	EndpointID  string
	IfName      string
	MacAddress  string
	IPv4Address string
	IPv6Address string
	Gateway     string
	IPv6Gateway string
	Aliases     []string
	// LinkLocalIPs are the endpoint's extra link-local addresses (Docker's
	// IPAMConfig.LinkLocalIPs).
	LinkLocalIPs []string `json:",omitempty"`
}

// NodeInfo is one node of the cluster (GET /pier/v1/nodes).
type NodeInfo struct {
	ID      string
	Name    string
	Address string // underlay (advertise) address
	// State is "ready" (its lease is alive), "down" (its lease expired) or "left"
	// (it shut down gracefully).
	State      string
	Self       bool   // the node answering this request
	Version    string // pierd's version on that node
	Endpoints  int    // its endpoints on global networks
	EtcdMember bool   // it runs an embedded etcd member
	// Capabilities are what the node's kernel offers for cluster features, e.g.
	// {"wireguard": "userspace"}.
	Capabilities map[string]string `json:",omitempty"`
}

// KeyRotation is the reply of POST /pier/v1/nodes/self/rotate-key.
type KeyRotation struct {
	Generation int64
	PublicKey  string   // the node's new WireGuard public key
	Took       string   // until every other ready node acknowledged it and has a session under it
	Missing    []string `json:",omitempty"` // nodes that had not acknowledged in time
	NoSession  []string `json:",omitempty"` // nodes that acknowledged but had no session under it in time
}

// ClusterInfo is the reply of GET /pier/v1/cluster.
type ClusterInfo struct {
	NodeID   string
	NodeName string
	Store    []string // etcd client URLs in use
	// Token is the join token (only from nodes holding an embedded etcd member).
	Token string `json:",omitempty"`
}

// ServiceCreateRequest is the body of POST /pier/v1/services.
type ServiceCreateRequest struct {
	Name     string
	Networks []string // names or IDs; at least one
	// EndpointMode is "vip" (default: the name resolves to a virtual IP balanced over
	// the tasks) or "dnsrr" (the name resolves to the tasks' addresses).
	EndpointMode string `json:",omitempty"`
	// Ports limit the VIP to these ports ("80", "80/tcp", "53/udp"); none: every port.
	Ports []string `json:",omitempty"`
	// Sticky is the client affinity timeout ("10m"; "" = none).
	Sticky string `json:",omitempty"`
	// StopGrace is how long a removed task may finish its connections ("" = 10s).
	StopGrace string `json:",omitempty"`
	// Publish are published ports in Docker's --publish syntax: "8080:80[/udp]"
	// (ranges too; the routing mesh) or "mode=ingress|host,published=8080,target=80
	// [,protocol=udp]".
	Publish []string `json:",omitempty"`
	// IngressSNAT masquerades mesh connections (the task sees the forwarding node).
	IngressSNAT bool `json:",omitempty"`
}

// ServiceUpdateRequest is the body of POST /pier/v1/services/{ref}/update.
type ServiceUpdateRequest struct {
	PublishAdd []string `json:",omitempty"` // --publish syntax
	PublishRm  []string `json:",omitempty"` // removed by published port and protocol
	// IngressSNAT, when set, turns masquerading of mesh connections on or off.
	IngressSNAT *bool `json:",omitempty"`
}

// ServiceInfo describes a service (reply of create, list and inspect).
type ServiceInfo struct {
	ID           string
	Name         string
	Created      time.Time
	EndpointMode string
	Ports        []string `json:",omitempty"`
	Sticky       string   `json:",omitempty"`
	StopGrace    string
	VirtualIPs   []ServiceVirtualIP
	// Publish: "mode=ingress,published=8080,target=80,protocol=tcp" each.
	Publish     []string `json:",omitempty"`
	IngressSNAT bool     `json:",omitempty"`
	Tasks       []ServiceTask
}

// ServiceVirtualIP is a service's network and its address there ("" in dnsrr mode).
type ServiceVirtualIP struct {
	Network   string
	NetworkID string
	Addr      string `json:",omitempty"`
}

// ServiceTask is one sandbox serving a service. Starting: it does not listen on the
// service's ports yet and gets no connections; Draining: its removal began; it serves
// only the connections it had.
type ServiceTask struct {
	ID       string
	Name     string
	Node     string   `json:",omitempty"` // the node it runs on (cluster mode)
	Starting bool     `json:",omitempty"`
	Draining bool     `json:",omitempty"`
	Addrs    []string `json:",omitempty"` // its IPv4 addresses on the service's networks
}
