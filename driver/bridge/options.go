package bridge

import (
	"fmt"
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// Docker's option keys, accepted as-is.
const (
	OptBridgeName      = "com.docker.network.bridge.name"
	OptEnableICC       = "com.docker.network.bridge.enable_icc"
	OptEnableIPMasq    = "com.docker.network.bridge.enable_ip_masquerade"
	OptHostBindingIPv4 = "com.docker.network.bridge.host_binding_ipv4"
	OptDefaultBridge   = "com.docker.network.bridge.default_bridge"
	OptMTU             = "com.docker.network.driver.mtu"
	OptIfacePrefix     = "com.docker.network.container_iface_prefix"
	OptInternal        = "com.docker.network.internal"
)

var knownOptions = []string{OptBridgeName, OptEnableICC, OptEnableIPMasq, OptHostBindingIPv4,
	OptDefaultBridge, OptMTU, OptIfacePrefix, OptInternal}

// Config is the typed configuration of one bridge network.
type Config struct {
	BridgeName      string
	ICC             bool
	Masquerade      bool
	HostBindingIPv4 netip.Addr // default host address for published ports
	MTU             int        // 0 = kernel default (1500)
	Internal        bool
}

// ParseOptions decodes Docker-style options for network id. It is pure and validates
// everything, so invalid input fails before anything is created.
func ParseOptions(id string, internal bool, opts map[string]string) (Config, error) {
	cfg := Config{BridgeName: DefaultBridgeName(id), ICC: true, Masquerade: true,
		HostBindingIPv4: netip.IPv4Unspecified(), Internal: internal}
	for _, k := range sortedKeys(opts) {
		if err := cfg.set(k, opts[k]); err != nil {
			return Config{}, errdefs.Wrap(errdefs.KindInvalidArgument, err)
		}
	}
	return cfg, nil
}

func (c *Config) set(key, val string) error {
	var err error
	switch key {
	case OptBridgeName:
		c.BridgeName, err = parseIfName(val)
	case OptEnableICC:
		c.ICC, err = parseBool(key, val)
	case OptEnableIPMasq:
		c.Masquerade, err = parseBool(key, val)
	case OptInternal:
		var internal bool
		internal, err = parseBool(key, val)
		c.Internal = c.Internal || internal
	case OptHostBindingIPv4:
		c.HostBindingIPv4, err = parseHostIP(val)
	case OptMTU:
		c.MTU, err = parseMTU(val)
	case OptIfacePrefix, OptDefaultBridge:
		// consumed by the controller / accepted for compatibility
	default:
		return fmt.Errorf("unknown bridge driver option %q (valid options: %s)", key, strings.Join(knownOptions, ", "))
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

func parseIfName(s string) (string, error) {
	if s == "" || len(s) > 15 || strings.ContainsAny(s, "/ \t\n:") || s == "." || s == ".." {
		return "", fmt.Errorf("invalid bridge name %q: 1 to 15 characters, no '/', ':' or spaces", s)
	}
	return s, nil
}

func parseBool(key, s string) (bool, error) {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("option %s: %q is not a boolean (true or false)", key, s)
	}
	return b, nil
}

func parseHostIP(s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil || !a.Is4() && !a.Is4In6() {
		return netip.Addr{}, fmt.Errorf("option %s: %q is not an IPv4 address", OptHostBindingIPv4, s)
	}
	return a.Unmap(), nil
}

func parseMTU(s string) (int, error) {
	mtu, err := strconv.Atoi(s)
	if err != nil || mtu < 68 || mtu > 65535 {
		return 0, fmt.Errorf("option %s: %q is not a valid MTU (68 to 65535)", OptMTU, s)
	}
	return mtu, nil
}

func sortedKeys(m map[string]string) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
