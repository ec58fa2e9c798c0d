package subif

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/options"
)

// OptParent is the parent-interface option of the sub-interface drivers (Docker's
// key; the shared com.docker.network.* keys are in driver/options).
const OptParent = "parent"

// Config is the typed configuration of one network.
type Config struct {
	Parent   string // "" = a pier-created, internal-only parent
	Mode     string
	MTU      int // 0 = the parent's
	Internal bool
	// VLAN is set when Parent has the form name.id: the 802.1q sub-interface is
	// created (and removed with the network) if Parent does not exist.
	VLAN        *VLAN
	IfacePrefix string // sandbox interfaces are <IfacePrefix><N>
}

// VLAN is an 802.1q sub-interface to create.
type VLAN struct {
	Lower string
	ID    int
}

// ParseOptions decodes Docker-style options for kind. It is pure and validates
// everything, so invalid input fails before anything is created.
func ParseOptions(kind *Kind, internal bool, opts map[string]string) (Config, error) {
	cfg := Config{Mode: kind.Modes[0], Internal: internal, IfacePrefix: options.DefaultIfacePrefix}
	if err := options.Decode(opts, func(k, v string) error { return cfg.set(kind, k, v) }); err != nil {
		return Config{}, err
	}
	if cfg.Parent == "" {
		cfg.Internal = true // nothing beyond the network: no gateway to route through
	}
	return cfg, nil
}

var _ driver.OptionDecoder = (*Driver)(nil)

// DecodeOptions implements driver.OptionDecoder.
func (d *Driver) DecodeOptions(opts map[string]string) (driver.NetworkOptions, error) {
	cfg, err := ParseOptions(d.kind, false, opts)
	return driver.NetworkOptions{IfacePrefix: cfg.IfacePrefix}, err
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
	case options.KeyMTU:
		c.MTU, err = options.ParseMTU(val, options.MinMTU)
	case options.KeyInternal:
		var b bool
		b, err = options.ParseBool(key, val)
		c.Internal = c.Internal || b
	case options.KeyIfacePrefix:
		c.IfacePrefix, err = options.ParseIfacePrefix(val)
	default:
		return options.Unknown(kind.Name, key, OptParent, kind.ModeOpt, options.KeyMTU, options.KeyIfacePrefix, options.KeyInternal)
	}
	return err
}

func parseParent(s string) (string, *VLAN, error) {
	if err := options.CheckIfName("parent interface name", s); err != nil {
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
