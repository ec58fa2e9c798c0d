package ipam_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/piernet/pier/ipam"
)

func TestDefaultV6Pool(t *testing.T) {
	ula := pfx("fd00::/8")
	for _, seed := range []string{"", "machine-1", "4f1c0ffee"} {
		p := ipam.DefaultV6Pool(seed)
		if p != ipam.DefaultV6Pool(seed) {
			t.Errorf("DefaultV6Pool(%q) is not deterministic", seed)
		}
		if p.Base.Bits() != 48 || p.Size != 64 || !ula.Contains(p.Base.Addr()) || p.Base != p.Base.Masked() {
			t.Errorf("DefaultV6Pool(%q) = %v, want a canonical /48 under fd00::/8 split in /64s", seed, p)
		}
	}
	// sha256("") starts e3 b0 c4 42 98.
	if got, want := ipam.DefaultV6Pool("").Base, pfx("fde3:b0c4:4298::/48"); got != want {
		t.Errorf("DefaultV6Pool(\"\") = %s, want %s", got, want)
	}
	if ipam.DefaultV6Pool("a") == ipam.DefaultV6Pool("b") {
		t.Errorf("different seeds gave the same pool")
	}
}

func TestAutoV6Pools(t *testing.T) {
	const seed = "machine-1"
	local := ipam.DefaultV6Pool(seed).Base.Addr().As16()
	global := ipam.DefaultV6Pool(seed + "/global").Base.Addr().As16()
	sub := func(b [16]byte, n byte) netip.Prefix {
		b[7] = n
		return netip.PrefixFrom(netip.AddrFrom16(b), 64)
	}
	a := newAlloc(t, ipam.Config{V6Seed: seed})
	v6 := func(space string) netip.Prefix {
		return mustPool(t, a, ipam.PoolRequest{AddressSpace: space, V6: true, Network: "n"}).Subnet
	}
	got := []netip.Prefix{v6(ipam.SpaceLocal), v6(ipam.SpaceLocal), v6(ipam.SpaceGlobal)}
	want := []netip.Prefix{sub(local, 0), sub(local, 1), sub(global, 0)}
	if diff := cmp.Diff(want, got, netipOpts); diff != "" {
		t.Errorf("auto IPv6 subnets (-want +got):\n%s", diff)
	}

	custom := newAlloc(t, ipam.Config{LocalV6Pool: ipam.PredefinedPool{Base: pfx("fd12:3456:789a::/48"), Size: 80}})
	if got := mustPool(t, custom, ipam.PoolRequest{V6: true}).Subnet; got != pfx("fd12:3456:789a::/80") {
		t.Errorf("custom LocalV6Pool gave %s, want fd12:3456:789a::/80", got)
	}
}

func TestPredefinedPoolString(t *testing.T) {
	for _, p := range append(ipam.DefaultLocalPools(), ipam.DefaultGlobalPools()...) {
		got, err := ipam.ParsePredefinedPool(p.String())
		if err != nil || got != p {
			t.Errorf("ParsePredefinedPool(%q) = %v, %v; want %v", p, got, err, p)
		}
	}
}
