package cli

import (
	"strings"
	"testing"
)

// FuzzIPAMFlags checks that any --subnet/--ip-range/--gateway/--aux-address values
// either fail cleanly or give configs whose parts lie in their subnet.
func FuzzIPAMFlags(f *testing.F) {
	f.Add("10.89.0.0/24,fd00::/64", "10.89.0.128/25", "10.89.0.1,fd00::1", "r=10.89.0.2")
	f.Add("10.0.0.0/8", "10.1.0.0/16", "10.0.0.1", "")
	f.Add("::ffff:10.0.0.0/104", "", "", "x=::ffff:10.0.0.1")
	f.Fuzz(func(t *testing.T, subnets, ranges, gateways, aux string) {
		flags := ipamFlags{subnets: splitNonEmpty(subnets), ipRanges: splitNonEmpty(ranges),
			gateways: splitNonEmpty(gateways), aux: splitNonEmpty(aux)}
		cfgs, err := flags.configs()
		if err != nil {
			return
		}
		if len(cfgs) != len(flags.subnets) {
			t.Fatalf("%d configs for %d subnets", len(cfgs), len(flags.subnets))
		}
		for _, c := range cfgs {
			if c.IPRange.IsValid() && !c.Subnet.Contains(c.IPRange.Addr()) {
				t.Errorf("range %s outside %s", c.IPRange, c.Subnet)
			}
			if c.Gateway.IsValid() && !c.Subnet.Contains(c.Gateway) {
				t.Errorf("gateway %s outside %s", c.Gateway, c.Subnet)
			}
			for _, a := range c.AuxAddress {
				if !c.Subnet.Contains(a) {
					t.Errorf("aux %s outside %s", a, c.Subnet)
				}
			}
		}
	})
}

func splitNonEmpty(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

// FuzzKeyValues checks --opt/--label parsing keeps every key it accepts.
func FuzzKeyValues(f *testing.F) {
	f.Add("a=b", "c", "d=e=f")
	f.Fuzz(func(t *testing.T, x, y, z string) {
		m, err := parseKeyValues("opt", []string{x, y, z})
		if err != nil {
			return
		}
		for _, kv := range []string{x, y, z} {
			k, _, _ := strings.Cut(kv, "=")
			if _, ok := m[k]; !ok {
				t.Errorf("key %q of %q lost", k, kv)
			}
		}
	})
}
