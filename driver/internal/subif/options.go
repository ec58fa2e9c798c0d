package subif

import (
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// Docker's option keys shared by the sub-interface drivers.
const (
	OptParent      = "parent"
	OptMTU         = "com.docker.network.driver.mtu"
	OptIfacePrefix = "com.docker.network.container_iface_prefix"
	OptInternal    = "com.docker.network.internal"
)

// Config is the typed configuration of one network.
type Config struct {
	Parent   string // "" = a pier-created, internal-only parent
	Mode     string
	MTU      int // 0 = the parent's
	Internal bool
	// VLAN is set when Parent has the form name.id: the 802.1q sub-interface is
	// created (and removed with the network) if Parent does not exist.
	VLAN *VLAN
}

// VLAN is an 802.1q sub-interface to create.
type VLAN struct {
	Lower string
	ID    int
}

// ParseOptions decodes Docker-style options for kind. It is pure and validates
// everything, so invalid input fails before anything is created.
func ParseOptions(kind *Kind, internal bool, opts map[string]string) (Config, error) {
	cfg := Config{Mode: kind.Modes[0], Internal: internal}
	keys := make([]string, 0, len(opts))
	for k := range opts {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if err := cfg.set(kind, k, opts[k]); err != nil {
			return Config{}, errdefs.Wrap(errdefs.KindInvalidArgument, err)
		}
	}
	if cfg.Parent == "" {
		cfg.Internal = true // nothing beyond the network: no gateway to route through
	}
	return cfg, nil
}

func (c *Config) set(kind *Kind, key, val string) error {
	var err error
	switch key {
	case OptParent:
		c.Parent, c.VLAN, err = parseParent(val)
	case kind.ModeOpt:
		if !slices.Contains(kind.Modes, val) {
			return fmt.Errorf("invalid %s %q (valid modes: %s)", kind.ModeOpt, val, strings.Join(kind.Modes, ", "))
		}
		c.Mode = val
	case OptMTU:
		c.MTU, err = parseMTU(val)
	case OptInternal:
		var b bool
		if b, err = strconv.ParseBool(val); err != nil {
			return fmt.Errorf("option %s: %q is not a boolean (true or false)", key, val)
		}
		c.Internal = c.Internal || b
	case OptIfacePrefix:
		// consumed by the controller
	default:
		valid := []string{OptParent, kind.ModeOpt, OptMTU, OptIfacePrefix, OptInternal}
		return fmt.Errorf("unknown %s driver option %q (valid options: %s)", kind.Name, key, strings.Join(valid, ", "))
	}
	return err
}

func parseParent(s string) (string, *VLAN, error) {
	if err := checkIfName(s); err != nil {
		return "", nil, err
	}
	if s == "lo" {
		return "", nil, fmt.Errorf("the loopback interface cannot be a parent")
	}
	lower, id, ok := strings.Cut(s, ".")
	if !ok {
		return s, nil, nil
	}
	vid, err := strconv.Atoi(id)
	if lower == "" || err != nil || vid < 1 || vid > 4094 || strings.Contains(id, ".") {
		return "", nil, fmt.Errorf("invalid parent %q: a VLAN sub-interface is name.id with an id from 1 to 4094, e.g. eth0.10", s)
	}
	return s, &VLAN{Lower: lower, ID: vid}, nil
}

func checkIfName(s string) error {
	if s == "" || len(s) > 15 || strings.ContainsAny(s, "/ \t\n:") || s == "." || s == ".." {
		return fmt.Errorf("invalid parent interface name %q: 1 to 15 characters, no '/', ':' or spaces", s)
	}
	return nil
}

func parseMTU(s string) (int, error) {
	mtu, err := strconv.Atoi(s)
	if err != nil || mtu < 68 || mtu > 65535 {
		return 0, fmt.Errorf("option %s: %q is not a valid MTU (68 to 65535)", OptMTU, s)
	}
	return mtu, nil
}
