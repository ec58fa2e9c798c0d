package remote

// The NetworkDriver messages, with Docker's field names and shapes
// (libnetwork/drivers/remote/api). Replies carry their error in Err.

// Option keys of CreateNetwork, CreateEndpoint and Join requests.
const (
	OptEnableIPv6 = "com.docker.network.enable_ipv6"
	OptGeneric    = "com.docker.network.generic"
	OptInternal   = "com.docker.network.internal"
	OptMACAddress = "com.docker.network.endpoint.macaddress"
)

// Route types of StaticRoute.
const (
	RouteNextHop   = 0
	RouteConnected = 1
)

type response struct {
	Err string `json:",omitempty"`
}

// Failure implements plugin.Reply.
func (r response) Failure() string { return r.Err }

type capabilitiesResponse struct {
	response
	Scope             string
	ConnectivityScope string
}

// ipamData marshals like Docker's driverapi.IPAMData: keys in this (sorted) order,
// absent ones omitted, addresses with the pool's prefix length.
type ipamData struct {
	AddressSpace string
	AuxAddresses map[string]string `json:",omitempty"`
	Gateway      string            `json:",omitempty"`
	Pool         string            `json:",omitempty"`
}

type createNetworkRequest struct {
	NetworkID string
	Options   map[string]any
	IPv4Data  []ipamData
	IPv6Data  []ipamData
}

type networkRequest struct {
	NetworkID string
}

type endpointInterface struct {
	Address     string
	AddressIPv6 string
	MacAddress  string
}

type createEndpointRequest struct {
	NetworkID  string
	EndpointID string
	Interface  *endpointInterface
	Options    map[string]any
}

type createEndpointResponse struct {
	response
	Interface *endpointInterface
}

type endpointRequest struct {
	NetworkID  string
	EndpointID string
}

type endpointInfoResponse struct {
	response
	Value map[string]any
}

type joinRequest struct {
	NetworkID  string
	EndpointID string
	SandboxKey string
	Options    map[string]any
}

type interfaceName struct {
	SrcName   string
	DstPrefix string
}

type staticRoute struct {
	Destination string
	RouteType   int
	NextHop     string
}

type joinResponse struct {
	response
	InterfaceName         *interfaceName
	Gateway               string
	GatewayIPv6           string
	StaticRoutes          []staticRoute
	DisableGatewayService bool
}

type extConnRequest struct {
	NetworkID  string
	EndpointID string
	Options    map[string]any
}

type allocateNetworkRequest struct {
	NetworkID string
	Options   map[string]string
	IPv4Data  []ipamData
	IPv6Data  []ipamData
}

type allocateNetworkResponse struct {
	response
	Options map[string]string
}

// DiscoveryNotification is a DiscoverNew/DiscoverDelete request.
type DiscoveryNotification struct {
	DiscoveryType int
	DiscoveryData any
}
