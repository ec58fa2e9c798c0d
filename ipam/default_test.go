package ipam_test

import (
	"net/netip"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

func TestDefaultLocalPoolOrder(t *testing.T) {
	a := newAlloc(t, ipam.Config{})
	var got []netip.Prefix
	for range 17 {
		got = append(got, mustPool(t, a, ipam.PoolRequest{Network: "n"}).Subnet)
	}
	want := prefixes(
		"172.17.0.0/16", "172.18.0.0/16", "172.19.0.0/16", "172.20.0.0/16", "172.21.0.0/16",
		"172.22.0.0/16", "172.23.0.0/16", "172.24.0.0/16", "172.25.0.0/16", "172.26.0.0/16",
		"172.27.0.0/16", "172.28.0.0/16", "172.29.0.0/16", "172.30.0.0/16", "172.31.0.0/16",
		"192.168.0.0/20", "192.168.16.0/20",
	)
	if diff := cmp.Diff(want, got, netipOpts); diff != "" {
		t.Errorf("auto subnets (-want +got):\n%s", diff)
	}
}

func TestDefaultGlobalPools(t *testing.T) {
	a := newAlloc(t, ipam.Config{})
	mustPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24"), Network: "local"})
	var got []ipam.Pool
	for range 2 {
		got = append(got, mustPool(t, a, ipam.PoolRequest{AddressSpace: ipam.SpaceGlobal, Network: "g"}))
	}
	want := []ipam.Pool{
		{AddressSpace: ipam.SpaceGlobal, ID: "GlobalDefault/10.0.0.0/24", Subnet: pfx("10.0.0.0/24")},
		{AddressSpace: ipam.SpaceGlobal, ID: "GlobalDefault/10.0.1.0/24", Subnet: pfx("10.0.1.0/24")},
	}
	if diff := cmp.Diff(want, got, netipOpts); diff != "" {
		t.Errorf("global pools may overlap local ones (-want +got):\n%s", diff)
	}
}

func TestAutoPoolSkipsTakenAndRouted(t *testing.T) {
	routed := func(ps ...string) func(netip.Prefix) bool {
		return func(c netip.Prefix) bool {
			for _, p := range ps {
				if pfx(p).Overlaps(c) {
					return true
				}
			}
			return false
		}
	}
	tests := []struct {
		name     string
		isRouted func(netip.Prefix) bool
		existing []string
		want     netip.Prefix
	}{
		{name: "nothing taken", want: pfx("172.17.0.0/16")},
		{name: "routed", isRouted: routed("172.17.0.0/16", "172.18.5.0/24"), want: pfx("172.19.0.0/16")},
		{name: "smaller pool inside candidate", existing: []string{"172.17.5.0/24"}, want: pfx("172.18.0.0/16")},
		{name: "larger pool over candidates", existing: []string{"172.16.0.0/12"}, want: pfx("192.168.0.0/20")},
		{
			name:     "routed and taken mixed",
			isRouted: routed("172.16.0.0/12", "192.168.0.0/19"),
			existing: []string{"192.168.32.0/24"},
			want:     pfx("192.168.48.0/20"),
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAlloc(t, ipam.Config{IsRouted: tt.isRouted})
			for _, s := range tt.existing {
				mustPool(t, a, ipam.PoolRequest{Subnet: pfx(s), Network: "old"})
			}
			got := mustPool(t, a, ipam.PoolRequest{Network: "new"}).Subnet
			if got != tt.want {
				t.Errorf("auto subnet = %s, want %s", got, tt.want)
			}
		})
	}
}

func TestIsRoutedOnlyForAutoPools(t *testing.T) {
	a := newAlloc(t, ipam.Config{IsRouted: func(netip.Prefix) bool { return true }})
	mustPool(t, a, ipam.PoolRequest{Subnet: pfx("172.17.0.0/16"), Network: "explicit"})
	_, err := a.RequestPool(t.Context(), ipam.PoolRequest{Network: "auto"})
	checkErr(t, err, errdefs.KindUnavailable, `could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network "auto"`)
}

func TestAutoPoolExhaustion(t *testing.T) {
	a := newAlloc(t, ipam.Config{
		LocalPools:  []ipam.PredefinedPool{{Base: pfx("10.9.0.0/30"), Size: 31}},
		LocalV6Pool: ipam.PredefinedPool{Base: pfx("fd00:9::/64"), Size: 64},
	})
	var got []netip.Prefix
	for range 2 {
		got = append(got, mustPool(t, a, ipam.PoolRequest{Network: "n"}).Subnet)
	}
	got = append(got, mustPool(t, a, ipam.PoolRequest{V6: true, Network: "n"}).Subnet)
	if diff := cmp.Diff(prefixes("10.9.0.0/31", "10.9.0.2/31", "fd00:9::/64"), got, netipOpts); diff != "" {
		t.Errorf("auto subnets (-want +got):\n%s", diff)
	}
	_, err := a.RequestPool(t.Context(), ipam.PoolRequest{Network: "n4"})
	checkErr(t, err, errdefs.KindUnavailable, `could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network "n4"`)
	_, err = a.RequestPool(t.Context(), ipam.PoolRequest{V6: true, Network: "n6"})
	checkErr(t, err, errdefs.KindUnavailable, `could not find an available, non-overlapping IPv6 address pool among the defaults to assign to the network "n6"`)
}

func TestEmptyPoolListDisablesAutoPools(t *testing.T) {
	a := newAlloc(t, ipam.Config{LocalPools: []ipam.PredefinedPool{}})
	_, err := a.RequestPool(t.Context(), ipam.PoolRequest{Network: "n"})
	checkErr(t, err, errdefs.KindUnavailable, `could not find an available, non-overlapping IPv4 address pool among the defaults to assign to the network "n"`)
}

type ownedPool struct {
	space, subnet, network string
}

func TestRequestPoolOverlap(t *testing.T) {
	tests := []struct {
		name     string
		existing []ownedPool
		req      ipam.PoolRequest
		wantErr  string // "" = granted
	}{
		{
			name:     "larger over smaller",
			existing: []ownedPool{{"", "10.1.2.0/24", "a"}},
			req:      ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), Network: "b"},
			wantErr:  `subnet 10.1.0.0/16 for network "b" overlaps 10.1.2.0/24 of network "a" in address space LocalDefault`,
		},
		{
			name:     "smaller inside larger",
			existing: []ownedPool{{ipam.SpaceLocal, "10.1.0.0/16", "a"}},
			req:      ipam.PoolRequest{Subnet: pfx("10.1.2.0/24"), IPRange: pfx("10.1.2.0/25"), Network: "b"},
			wantErr:  `subnet 10.1.2.0/24 for network "b" overlaps 10.1.0.0/16 of network "a" in address space LocalDefault`,
		},
		{
			name:     "same subnet different range",
			existing: []ownedPool{{ipam.SpaceGlobal, "10.1.0.0/16", "a"}},
			req:      ipam.PoolRequest{AddressSpace: ipam.SpaceGlobal, Subnet: pfx("10.1.0.0/16"), IPRange: pfx("10.1.1.0/24"), Network: "b"},
			wantErr:  `subnet 10.1.0.0/16 for network "b" overlaps 10.1.0.0/16 of network "a" in address space GlobalDefault`,
		},
		{
			name:     "other space may overlap",
			existing: []ownedPool{{ipam.SpaceGlobal, "10.1.0.0/16", "a"}},
			req:      ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), Network: "b"},
		},
		{
			name:     "adjacent",
			existing: []ownedPool{{"", "10.1.0.0/16", "a"}},
			req:      ipam.PoolRequest{Subnet: pfx("10.0.0.0/16"), Network: "b"},
		},
		{
			name:     "other family",
			existing: []ownedPool{{"", "10.1.0.0/16", "a"}},
			req:      ipam.PoolRequest{Subnet: pfx("::ffff:0:0/96"), Network: "b"},
			wantErr:  `subnet 0.0.0.0/0 for network "b" overlaps 10.1.0.0/16 of network "a" in address space LocalDefault`,
		},
		{
			name:     "v6 beside v4",
			existing: []ownedPool{{"", "10.1.0.0/16", "a"}},
			req:      ipam.PoolRequest{Subnet: pfx("fd00::/64"), Network: "b"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAlloc(t, ipam.Config{})
			for _, p := range tt.existing {
				mustPool(t, a, ipam.PoolRequest{AddressSpace: p.space, Subnet: pfx(p.subnet), Network: p.network})
			}
			_, err := a.RequestPool(t.Context(), tt.req)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("RequestPool: %v", err)
				}
				return
			}
			checkErr(t, err, errdefs.KindForbidden, tt.wantErr)
		})
	}
}

func TestRequestPoolInvalid(t *testing.T) {
	tests := []struct {
		name    string
		req     ipam.PoolRequest
		wantErr string
	}{
		{
			name:    "unknown space",
			req:     ipam.PoolRequest{AddressSpace: "Elsewhere", Network: "n"},
			wantErr: `unknown address space "Elsewhere": want "LocalDefault" or "GlobalDefault"`,
		},
		{
			name:    "range outside subnet",
			req:     ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), IPRange: pfx("10.2.0.0/24"), Network: "n"},
			wantErr: `ip-range 10.2.0.0/24 is not inside subnet 10.1.0.0/16 of network "n"`,
		},
		{
			name:    "range larger than subnet",
			req:     ipam.PoolRequest{Subnet: pfx("10.1.2.0/24"), IPRange: pfx("10.1.0.0/16"), Network: "n"},
			wantErr: `ip-range 10.1.0.0/16 is not inside subnet 10.1.2.0/24 of network "n"`,
		},
		{
			name:    "range of other family",
			req:     ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), IPRange: pfx("fd00::/64"), Network: "n"},
			wantErr: `ip-range fd00::/64 and subnet 10.1.0.0/16 of network "n" are of different IP families`,
		},
		{
			name:    "range without subnet",
			req:     ipam.PoolRequest{IPRange: pfx("10.1.0.0/24"), Network: "n"},
			wantErr: `ip-range 10.1.0.0/24 of network "n" needs a subnet`,
		},
		{
			name:    "V6 with IPv4 subnet",
			req:     ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), V6: true, Network: "n"},
			wantErr: `IPv6 pool requested for network "n" with IPv4 subnet 10.1.0.0/16`,
		},
		{
			name:    "invalid prefix length",
			req:     ipam.PoolRequest{Subnet: netip.PrefixFrom(addr("10.1.0.0"), 33), Network: "n"},
			wantErr: `subnet of network "n": invalid CIDR prefix: address 10.1.0.0 with an out-of-range prefix length`,
		},
		{
			name:    "short IPv4-mapped prefix",
			req:     ipam.PoolRequest{Subnet: pfx("::ffff:0:0/80"), Network: "n"},
			wantErr: `subnet of network "n": invalid CIDR prefix ::ffff:0.0.0.0/80: an IPv4-mapped prefix must be /96 or longer`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAlloc(t, ipam.Config{})
			_, err := a.RequestPool(t.Context(), tt.req)
			checkErr(t, err, errdefs.KindInvalidArgument, tt.wantErr)
		})
	}
}

func TestRequestPoolCanonical(t *testing.T) {
	tests := []struct {
		name string
		req  ipam.PoolRequest
		want ipam.Pool
	}{
		{
			name: "host bits masked",
			req:  ipam.PoolRequest{Subnet: pfx("10.1.2.3/16")},
			want: ipam.Pool{AddressSpace: ipam.SpaceLocal, ID: "LocalDefault/10.1.0.0/16", Subnet: pfx("10.1.0.0/16")},
		},
		{
			name: "with range",
			req:  ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), IPRange: pfx("10.1.2.200/25")},
			want: ipam.Pool{AddressSpace: ipam.SpaceLocal, ID: "LocalDefault/10.1.0.0/16/10.1.2.128/25", Subnet: pfx("10.1.0.0/16"), IPRange: pfx("10.1.2.128/25")},
		},
		{
			name: "global space",
			req:  ipam.PoolRequest{AddressSpace: ipam.SpaceGlobal, Subnet: pfx("10.1.0.0/16")},
			want: ipam.Pool{AddressSpace: ipam.SpaceGlobal, ID: "GlobalDefault/10.1.0.0/16", Subnet: pfx("10.1.0.0/16")},
		},
		{
			name: "IPv6",
			req:  ipam.PoolRequest{Subnet: pfx("fd00:1::5/64"), V6: true},
			want: ipam.Pool{AddressSpace: ipam.SpaceLocal, ID: "LocalDefault/fd00:1::/64", Subnet: pfx("fd00:1::/64")},
		},
		{
			name: "IPv4-mapped unmapped",
			req:  ipam.PoolRequest{Subnet: pfx("::ffff:10.1.2.3/112")},
			want: ipam.Pool{AddressSpace: ipam.SpaceLocal, ID: "LocalDefault/10.1.0.0/16", Subnet: pfx("10.1.0.0/16")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mustPool(t, newAlloc(t, ipam.Config{}), tt.req)
			if diff := cmp.Diff(tt.want, got, netipOpts); diff != "" {
				t.Errorf("pool (-want +got):\n%s", diff)
			}
		})
	}
}

func TestReleasePool(t *testing.T) {
	a := newAlloc(t, ipam.Config{})
	first := mustPool(t, a, ipam.PoolRequest{Network: "a"})
	mustPool(t, a, ipam.PoolRequest{Network: "b"})
	mustAddr(t, a, ipam.AddressRequest{PoolID: first.ID, Addr: addr("172.17.0.5")})

	if err := a.ReleasePool(t.Context(), first.ID); err != nil {
		t.Fatalf("ReleasePool: %v", err)
	}
	checkErr(t, a.ReleasePool(t.Context(), first.ID), errdefs.KindNotFound,
		`address pool "LocalDefault/172.17.0.0/16" not found`)
	_, err := a.RequestAddress(t.Context(), ipam.AddressRequest{PoolID: first.ID})
	checkErr(t, err, errdefs.KindNotFound, `address pool "LocalDefault/172.17.0.0/16" not found`)

	again := mustPool(t, a, ipam.PoolRequest{Network: "c"})
	if diff := cmp.Diff(first, again, netipOpts); diff != "" {
		t.Errorf("released subnet not reused (-want +got):\n%s", diff)
	}
	mustAddr(t, a, ipam.AddressRequest{PoolID: again.ID, Addr: addr("172.17.0.5")})
}

// TestRestartDeterminism replays the same requests on a fresh allocator, as the
// controller does after a restart, and expects the same pools and addresses.
func TestRestartDeterminism(t *testing.T) {
	replay := func() ([]ipam.Pool, []netip.Prefix) {
		a := newAlloc(t, ipam.Config{V6Seed: "machine-1"})
		pools := []ipam.Pool{
			mustPool(t, a, ipam.PoolRequest{Network: "auto"}),
			mustPool(t, a, ipam.PoolRequest{Subnet: pfx("10.5.0.0/16"), IPRange: pfx("10.5.1.0/24"), Network: "ranged"}),
			mustPool(t, a, ipam.PoolRequest{V6: true, Network: "auto6"}),
			mustPool(t, a, ipam.PoolRequest{AddressSpace: ipam.SpaceGlobal, Network: "overlay"}),
		}
		ranged := pools[1].ID
		got := []netip.Prefix{
			mustAddr(t, a, ipam.AddressRequest{PoolID: ranged, Gateway: true}),
			mustAddr(t, a, ipam.AddressRequest{PoolID: ranged, Addr: addr("10.5.1.7")}),
			mustAddr(t, a, ipam.AddressRequest{PoolID: ranged}),
			mustAddr(t, a, ipam.AddressRequest{PoolID: pools[2].ID}),
		}
		return pools, got
	}
	pools1, addrs1 := replay()
	pools2, addrs2 := replay()
	if diff := cmp.Diff(pools1, pools2, netipOpts); diff != "" {
		t.Errorf("pools differ after restart (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(addrs1, addrs2, netipOpts); diff != "" {
		t.Errorf("addresses differ after restart (-before +after):\n%s", diff)
	}
	wantIDs := []string{
		"LocalDefault/172.17.0.0/16",
		"LocalDefault/10.5.0.0/16/10.5.1.0/24",
		"LocalDefault/" + ipam.DefaultV6Pool("machine-1").Base.Addr().String() + "/64",
		"GlobalDefault/10.0.0.0/24",
	}
	var gotIDs []string
	for _, p := range pools1 {
		gotIDs = append(gotIDs, p.ID)
	}
	if diff := cmp.Diff(wantIDs, gotIDs); diff != "" {
		t.Errorf("pool IDs (-want +got):\n%s", diff)
	}
}

func TestNewInvalidConfig(t *testing.T) {
	tests := []struct {
		name    string
		cfg     ipam.Config
		wantErr string
	}{
		{
			name:    "size shorter than base",
			cfg:     ipam.Config{LocalPools: []ipam.PredefinedPool{{Base: pfx("10.0.0.0/16"), Size: 8}}},
			wantErr: "local address pools: address pool base=10.0.0.0/16,size=8: size 8 must be between the base prefix length 16 and 32",
		},
		{
			name:    "non-canonical base",
			cfg:     ipam.Config{GlobalPools: []ipam.PredefinedPool{{Base: pfx("10.0.0.1/8"), Size: 24}}},
			wantErr: "global address pools: address pool base=10.0.0.1/8,size=24: base 10.0.0.1/8 is not a canonical IPv4 or IPv6 prefix",
		},
		{
			name:    "IPv4 as v6 pool",
			cfg:     ipam.Config{LocalV6Pool: ipam.PredefinedPool{Base: pfx("10.0.0.0/8"), Size: 24}},
			wantErr: "local address pools: IPv6 pool base=10.0.0.0/8,size=24 is not IPv6",
		},
		{
			name:    "zero base",
			cfg:     ipam.Config{LocalPools: []ipam.PredefinedPool{{Size: 24}}},
			wantErr: "local address pools: address pool base=invalid Prefix,size=24: base invalid Prefix is not a canonical IPv4 or IPv6 prefix",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ipam.New(tt.cfg)
			checkErr(t, err, errdefs.KindInvalidArgument, tt.wantErr)
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	a := newAlloc(t, ipam.Config{})
	p := mustPool(t, a, ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), Network: "n"})
	const workers, each = 8, 200
	results := make([][]netip.Addr, workers)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range each {
				got, err := a.RequestAddress(t.Context(), ipam.AddressRequest{PoolID: p.ID})
				if err != nil {
					t.Errorf("RequestAddress: %v", err)
					return
				}
				if i%2 == 0 {
					results[w] = append(results[w], got.Addr())
				} else if err := a.ReleaseAddress(t.Context(), p.ID, got.Addr()); err != nil {
					t.Errorf("ReleaseAddress: %v", err)
				}
			}
			auto, err := a.RequestPool(t.Context(), ipam.PoolRequest{Network: "auto"})
			if err != nil {
				t.Errorf("RequestPool: %v", err)
			}
			results[w] = append(results[w], auto.Subnet.Addr())
		})
	}
	wg.Wait()
	seen := map[netip.Addr]bool{}
	for _, r := range results {
		for _, x := range r {
			if seen[x] {
				t.Errorf("address %s handed out twice", x)
			}
			seen[x] = true
		}
	}
}
