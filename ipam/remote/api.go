package remote

// The IpamDriver messages, with Docker's field names and shapes
// (libnetwork/ipams/remote/api). Replies carry their error in Error (not Err).

// Keys of request options and reply data.
const (
	OptRequestAddressType = "RequestAddressType"
	// OptMACAddress carries the endpoint's MAC in RequestAddress options for plugins
	// with the RequiresMACAddress capability (a plain string here, unlike the network
	// driver's CreateEndpoint option).
	OptMACAddress = "com.docker.network.endpoint.macaddress"
	GatewayType   = "com.docker.network.gateway" // also the Data key of a pool's gateway
)

type response struct {
	Error string `json:",omitempty"`
}

// Failure implements plugin.Reply.
func (r response) Failure() string { return r.Error }

type capabilitiesResponse struct {
	response
	RequiresMACAddress    bool
	RequiresRequestReplay bool
}

type addressSpacesResponse struct {
	response
	LocalDefaultAddressSpace  string
	GlobalDefaultAddressSpace string
}

type requestPoolRequest struct {
	AddressSpace string
	Pool         string
	SubPool      string
	Options      map[string]string
	V6           bool
}

type requestPoolResponse struct {
	response
	PoolID string
	Pool   string
	Data   map[string]string
}

type releasePoolRequest struct {
	PoolID string
}

type requestAddressRequest struct {
	PoolID  string
	Address string
	Options map[string]string
}

type requestAddressResponse struct {
	response
	Address string
	Data    map[string]string
}

type releaseAddressRequest struct {
	PoolID  string
	Address string
}
