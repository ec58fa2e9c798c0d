// Package options holds the Docker network option keys (`-o com.docker.network.*`)
// that more than one driver accepts, and the parsers every driver decodes its options
// with: MTU, booleans, interface names, the container interface prefix, and the loop
// that turns a driver's option map into its typed config.
//
// It is pure: it decodes and validates strings and touches nothing. Keys that belong
// to one driver (com.docker.network.bridge.*, macvlan_mode, parent, ...) stay with that
// driver; protocol keys of remote plugins stay in driver/remote.
package options

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// Docker's option keys shared by the built-in drivers.
const (
	KeyMTU         = "com.docker.network.driver.mtu"
	KeyIfacePrefix = "com.docker.network.container_iface_prefix"
	KeyInternal    = "com.docker.network.internal"
)

// Limits of an MTU: IPv4's minimum datagram (RFC 791) and IPv6's minimum link MTU
// (RFC 8200), and the largest an interface takes.
const (
	MinMTU     = 68
	MinMTUIPv6 = 1280
	MaxMTU     = 65535
)

// DefaultIfacePrefix names interfaces inside sandboxes (eth0, eth1, ...) unless a
// network's KeyIfacePrefix says otherwise.
const DefaultIfacePrefix = "eth"

// maxIfName is the longest Linux interface name (IFNAMSIZ-1).
const maxIfName = 15

// Decode calls set for each option of opts in key order (so the first error is the
// same on every run) and returns the first error. An error without an errdefs kind is
// returned as InvalidArgument; one with a kind (e.g. NotImplemented) keeps it.
func Decode(opts map[string]string, set func(key, val string) error) error {
	for _, k := range slices.Sorted(maps.Keys(opts)) {
		if err := set(k, opts[k]); err != nil {
			if errdefs.KindOf(err) == errdefs.KindUnknown {
				err = errdefs.Wrap(errdefs.KindInvalidArgument, err)
			}
			return err
		}
	}
	return nil
}

// Unknown is the error for an option driver does not take, listing the valid ones.
func Unknown(driver, key string, valid ...string) error {
	return errdefs.InvalidArgument("unknown %s driver option %q (valid options: %s)", driver, key, strings.Join(valid, ", "))
}

// ParseMTU parses the value of KeyMTU: a whole number from min to MaxMTU.
func ParseMTU(s string, min int) (int, error) {
	mtu, err := strconv.Atoi(s)
	if err != nil || mtu < min || mtu > MaxMTU {
		return 0, fmt.Errorf("option %s: %q is not a valid MTU (%d to %d)", KeyMTU, s, min, MaxMTU)
	}
	return mtu, nil
}

// ParseBool parses a boolean option (strconv.ParseBool's spellings: true, false, 1, 0, ...).
func ParseBool(key, s string) (bool, error) {
	b, err := strconv.ParseBool(s)
	if err != nil {
		return false, fmt.Errorf("option %s: %q is not a boolean (true or false)", key, s)
	}
	return b, nil
}

// CheckIfName checks that s can name a Linux interface; what says which name it is in
// the error ("bridge name", "parent interface name").
func CheckIfName(what, s string) error {
	if s == "" || len(s) > maxIfName || strings.ContainsAny(s, "/ \t\n:") || s == "." || s == ".." {
		return fmt.Errorf("invalid %s %q: 1 to %d characters, no '/', ':' or spaces", what, s, maxIfName)
	}
	return nil
}

// ParseIfacePrefix parses the value of KeyIfacePrefix: interfaces inside sandboxes are
// named <prefix><N>, so the prefix leaves room for a number of up to three digits. ""
// is DefaultIfacePrefix.
func ParseIfacePrefix(s string) (string, error) {
	if s == "" {
		return DefaultIfacePrefix, nil
	}
	if err := CheckIfName("interface prefix", s); err != nil || len(s) > maxIfName-3 || s[len(s)-1] >= '0' && s[len(s)-1] <= '9' {
		return "", fmt.Errorf("option %s: %q is not a valid interface prefix (1 to %d characters, not ending in a digit, no '/', ':' or spaces)",
			KeyIfacePrefix, s, maxIfName-3)
	}
	return s, nil
}
