package bridge

import (
	"fmt"
	"net/netip"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/options"
)

// Docker's option keys of the bridge driver, accepted as-is (the shared ones are in
// driver/options).
const (
	OptBridgeName      = "com.docker.network.bridge.name"
	OptEnableICC       = "com.docker.network.bridge.enable_icc"
	OptEnableIPMasq    = "com.docker.network.bridge.enable_ip_masquerade"
	OptHostBindingIPv4 = "com.docker.network.bridge.host_binding_ipv4"
	OptDefaultBridge   = "com.docker.network.bridge.default_bridge"
)

var knownOptions = []string{OptBridgeName, OptEnableICC, OptEnableIPMasq, OptHostBindingIPv4,
	OptDefaultBridge, options.KeyMTU, options.KeyIfacePrefix, options.KeyInternal}

// Config is the typed configuration of one bridge network.
type Config struct {
	BridgeName      string
	ICC             bool
	Masquerade      bool
	HostBindingIPv4 netip.Addr // default host address for published ports
	MTU             int        // 0 = kernel default (1500)
	Internal        bool
	IfacePrefix     string // sandbox interfaces are <IfacePrefix><N>
}

// ParseOptions decodes Docker-style options for network id. It is pure and validates
// everything, so invalid input fails before anything is created.
func ParseOptions(id string, internal bool, opts map[string]string) (Config, error) {
	cfg := Config{BridgeName: DefaultBridgeName(id), ICC: true, Masquerade: true,
		HostBindingIPv4: netip.IPv4Unspecified(), Internal: internal, IfacePrefix: options.DefaultIfacePrefix}
	if err := options.Decode(opts, cfg.set); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

var _ driver.OptionDecoder = (*Driver)(nil)

// DecodeOptions implements driver.OptionDecoder.
func (d *Driver) DecodeOptions(opts map[string]string) (driver.NetworkOptions, error) {
	cfg, err := ParseOptions("", false, opts)
	return driver.NetworkOptions{IfacePrefix: cfg.IfacePrefix}, err
}

func (c *Config) set(key, val string) error {
	var err error
	switch key {
	case OptBridgeName:
		c.BridgeName, err = val, options.CheckIfName("bridge name", val)
	case OptEnableICC:
		c.ICC, err = options.ParseBool(key, val)
	case OptEnableIPMasq:
		c.Masquerade, err = options.ParseBool(key, val)
	case options.KeyInternal:
		var internal bool
		internal, err = options.ParseBool(key, val)
		c.Internal = c.Internal || internal
	case OptHostBindingIPv4:
		c.HostBindingIPv4, err = parseHostIP(val)
	case options.KeyMTU:
		c.MTU, err = options.ParseMTU(val, options.MinMTU)
	case options.KeyIfacePrefix:
		c.IfacePrefix, err = options.ParseIfacePrefix(val)
	case OptDefaultBridge:
		// accepted for compatibility
	default:
		return options.Unknown(Name, key, knownOptions...)
	}
	return err
}

// DefaultBridgeName is the bridge name Docker would use for network id.
func DefaultBridgeName(id string) string {
	if len(id) > 12 {
		id = id[:12]
	}
	return "br-" + id
}

func parseHostIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() && !a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("option %s: %q is not an IPv4 address", OptHostBindingIPv4, s)
	}
	return a.Unmap(), nil
}
