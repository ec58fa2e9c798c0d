package ipam_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

func TestRequestAddress(t *testing.T) {
	tests := []struct {
		name    string
		pool    ipam.PoolRequest
		before  []ipam.AddressRequest // PoolID is filled in
		req     ipam.AddressRequest
		want    netip.Prefix
		kind    errdefs.Kind
		wantErr string
	}{
		{
			name: "first dynamic",
			pool: ipam.PoolRequest{Subnet: pfx("10.1.0.0/16")},
			want: pfx("10.1.0.1/16"),
		},
		{
			name: "default gateway",
			pool: ipam.PoolRequest{Subnet: pfx("10.1.0.0/16")},
			req:  ipam.AddressRequest{Gateway: true},
			want: pfx("10.1.0.1/16"),
		},
		{
			name: "default gateway outside ip-range",
			pool: ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), IPRange: pfx("10.1.2.0/24")},
			req:  ipam.AddressRequest{Gateway: true},
			want: pfx("10.1.0.1/16"),
		},
		{
			name:   "dynamic after gateway",
			pool:   ipam.PoolRequest{Subnet: pfx("10.1.0.0/24")},
			before: []ipam.AddressRequest{{Gateway: true}},
			want:   pfx("10.1.0.2/24"),
		},
		{
			name: "dynamic from ip-range",
			pool: ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), IPRange: pfx("10.1.2.0/24")},
			want: pfx("10.1.2.0/16"),
		},
		{
			name: "ip-range starting at the network address",
			pool: ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), IPRange: pfx("10.1.0.0/24")},
			want: pfx("10.1.0.1/16"),
		},
		{
			name:   "aux reservations skipped",
			pool:   ipam.PoolRequest{Subnet: pfx("10.1.0.0/24")},
			before: []ipam.AddressRequest{{Addr: addr("10.1.0.2")}, {Addr: addr("10.1.0.3")}, {Gateway: true}},
			want:   pfx("10.1.0.4/24"),
		},
		{
			name:   "gateway when first address is reserved",
			pool:   ipam.PoolRequest{Subnet: pfx("10.1.0.0/24")},
			before: []ipam.AddressRequest{{Addr: addr("10.1.0.1")}},
			req:    ipam.AddressRequest{Gateway: true},
			want:   pfx("10.1.0.2/24"),
		},
		{
			name: "explicit outside ip-range",
			pool: ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), IPRange: pfx("10.1.2.0/24")},
			req:  ipam.AddressRequest{Addr: addr("10.1.200.9")},
			want: pfx("10.1.200.9/16"),
		},
		{
			name: "explicit IPv4-mapped",
			pool: ipam.PoolRequest{Subnet: pfx("10.1.0.0/16")},
			req:  ipam.AddressRequest{Addr: addr("::ffff:10.1.0.9")},
			want: pfx("10.1.0.9/16"),
		},
		{
			name:    "explicit outside subnet",
			pool:    ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), Network: "n"},
			req:     ipam.AddressRequest{Addr: addr("10.2.0.1")},
			kind:    errdefs.KindInvalidArgument,
			wantErr: `address 10.2.0.1 is not in subnet 10.1.0.0/16 of network "n"`,
		},
		{
			name:    "explicit other family",
			pool:    ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), Network: "n"},
			req:     ipam.AddressRequest{Addr: addr("fd00::1")},
			kind:    errdefs.KindInvalidArgument,
			wantErr: `address fd00::1 is not in subnet 10.1.0.0/16 of network "n"`,
		},
		{
			name:    "explicit network address",
			pool:    ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), Network: "n"},
			req:     ipam.AddressRequest{Addr: addr("10.1.0.0")},
			kind:    errdefs.KindInvalidArgument,
			wantErr: `address 10.1.0.0 is the network address of subnet 10.1.0.0/16 of network "n"`,
		},
		{
			name:    "explicit broadcast address",
			pool:    ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), Network: "n"},
			req:     ipam.AddressRequest{Addr: addr("10.1.255.255")},
			kind:    errdefs.KindInvalidArgument,
			wantErr: `address 10.1.255.255 is the broadcast address of subnet 10.1.0.0/16 of network "n"`,
		},
		{
			name:    "explicit subnet-router anycast",
			pool:    ipam.PoolRequest{Subnet: pfx("fd00:1::/64"), Network: "n"},
			req:     ipam.AddressRequest{Addr: addr("fd00:1::")},
			kind:    errdefs.KindInvalidArgument,
			wantErr: `address fd00:1:: is the subnet-router anycast address of subnet fd00:1::/64 of network "n"`,
		},
		{
			name:    "explicit in use",
			pool:    ipam.PoolRequest{Subnet: pfx("10.1.0.0/16"), Network: "n"},
			before:  []ipam.AddressRequest{{}, {}},
			req:     ipam.AddressRequest{Addr: addr("10.1.0.2")},
			kind:    errdefs.KindForbidden,
			wantErr: `address 10.1.0.2 already in use on network "n"`,
		},
		{
			name: "IPv6 dynamic",
			pool: ipam.PoolRequest{Subnet: pfx("fd00:1::/64")},
			want: pfx("fd00:1::1/64"),
		},
		{
			name: "IPv6 last address is usable",
			pool: ipam.PoolRequest{Subnet: pfx("fd00:1::/64")},
			req:  ipam.AddressRequest{Addr: addr("fd00:1::ffff:ffff:ffff:ffff")},
			want: pfx("fd00:1::ffff:ffff:ffff:ffff/64"),
		},
		{
			name:    "unknown pool",
			pool:    ipam.PoolRequest{Subnet: pfx("10.1.0.0/16")},
			req:     ipam.AddressRequest{PoolID: "LocalDefault/10.9.0.0/16"},
			kind:    errdefs.KindNotFound,
			wantErr: `address pool "LocalDefault/10.9.0.0/16" not found`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAlloc(t, ipam.Config{})
			p := mustPool(t, a, tt.pool)
			for _, r := range tt.before {
				r.PoolID = p.ID
				mustAddr(t, a, r)
			}
			if tt.req.PoolID == "" {
				tt.req.PoolID = p.ID
			}
			got, err := a.RequestAddress(t.Context(), tt.req)
			if tt.wantErr != "" {
				checkErr(t, err, tt.kind, tt.wantErr)
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("RequestAddress = %s, %v; want %s", got, err, tt.want)
			}
		})
	}
}

// TestExhaust checks the exact set of addresses a small pool hands out, that network
// and broadcast addresses are never among them, and the error once it is full.
func TestExhaust(t *testing.T) {
	tests := []struct {
		name    string
		pool    ipam.PoolRequest
		want    []netip.Addr
		wantErr string
	}{
		{
			name:    "/29",
			pool:    ipam.PoolRequest{Subnet: pfx("10.0.0.8/29"), Network: "small"},
			want:    addrs("10.0.0.9", "10.0.0.10", "10.0.0.11", "10.0.0.12", "10.0.0.13", "10.0.0.14"),
			wantErr: `no available IPv4 addresses on network "small"`,
		},
		{
			name:    "ip-range at the end of the subnet",
			pool:    ipam.PoolRequest{Subnet: pfx("10.0.0.0/24"), IPRange: pfx("10.0.0.248/29"), Network: "r"},
			want:    addrs("10.0.0.248", "10.0.0.249", "10.0.0.250", "10.0.0.251", "10.0.0.252", "10.0.0.253", "10.0.0.254"),
			wantErr: `no available IPv4 addresses in ip-range 10.0.0.248/29 on network "r"`,
		},
		{
			name:    "/31 (RFC 3021)",
			pool:    ipam.PoolRequest{Subnet: pfx("10.0.0.0/31"), Network: "p2p"},
			want:    addrs("10.0.0.0", "10.0.0.1"),
			wantErr: `no available IPv4 addresses on network "p2p"`,
		},
		{
			name:    "/32",
			pool:    ipam.PoolRequest{Subnet: pfx("10.0.0.7/32"), Network: "one"},
			want:    addrs("10.0.0.7"),
			wantErr: `no available IPv4 addresses on network "one"`,
		},
		{
			name:    "/30",
			pool:    ipam.PoolRequest{Subnet: pfx("10.0.0.4/30"), Network: "n"},
			want:    addrs("10.0.0.5", "10.0.0.6"),
			wantErr: `no available IPv4 addresses on network "n"`,
		},
		{
			name:    "IPv6 /126 has no broadcast",
			pool:    ipam.PoolRequest{Subnet: pfx("fd00::/126"), Network: "n6"},
			want:    addrs("fd00::1", "fd00::2", "fd00::3"),
			wantErr: `no available IPv6 addresses on network "n6"`,
		},
		{
			name:    "IPv6 /127 (RFC 6164)",
			pool:    ipam.PoolRequest{Subnet: pfx("fd00::/127"), Network: "p2p6"},
			want:    addrs("fd00::", "fd00::1"),
			wantErr: `no available IPv6 addresses on network "p2p6"`,
		},
		{
			name:    "IPv6 /128",
			pool:    ipam.PoolRequest{Subnet: pfx("fd00::9/128"), Network: "one6"},
			want:    addrs("fd00::9"),
			wantErr: `no available IPv6 addresses on network "one6"`,
		},
		{
			name:    "top of the address space",
			pool:    ipam.PoolRequest{Subnet: pfx("255.255.255.252/30"), Network: "top"},
			want:    addrs("255.255.255.253", "255.255.255.254"),
			wantErr: `no available IPv4 addresses on network "top"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := newAlloc(t, ipam.Config{})
			p := mustPool(t, a, tt.pool)
			if diff := cmp.Diff(tt.want, drain(t, a, p.ID), netipOpts); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
			_, err := a.RequestAddress(t.Context(), ipam.AddressRequest{PoolID: p.ID})
			checkErr(t, err, errdefs.KindUnavailable, tt.wantErr)
		})
	}
}

func TestGatewayOnFullPool(t *testing.T) {
	a := newAlloc(t, ipam.Config{})
	p := mustPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/31"), Network: "p2p"})
	if got := mustAddr(t, a, ipam.AddressRequest{PoolID: p.ID, Gateway: true}); got != pfx("10.0.0.0/31") {
		t.Errorf("gateway = %s, want 10.0.0.0/31", got)
	}
	mustAddr(t, a, ipam.AddressRequest{PoolID: p.ID})
	_, err := a.RequestAddress(t.Context(), ipam.AddressRequest{PoolID: p.ID, Gateway: true})
	checkErr(t, err, errdefs.KindUnavailable, `no available IPv4 addresses on network "p2p"`)
}

// TestSerialAllocation checks that a released address is not reused until the
// cursor wraps around.
func TestSerialAllocation(t *testing.T) {
	a := newAlloc(t, ipam.Config{})
	p := mustPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/29"), Network: "n"})
	next := func() netip.Addr { return mustAddr(t, a, ipam.AddressRequest{PoolID: p.ID}).Addr() }
	got := []netip.Addr{next(), next(), next()}
	mustRelease(t, a, p.ID, addr("10.0.0.2"))
	got = append(got, next(), next(), next())
	mustRelease(t, a, p.ID, addr("10.0.0.5"))
	got = append(got, next(), next())
	want := addrs("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.5")
	if diff := cmp.Diff(want, got, netipOpts); diff != "" {
		t.Errorf("allocation order (-want +got):\n%s", diff)
	}
}

func TestReleaseAddress(t *testing.T) {
	a := newAlloc(t, ipam.Config{})
	p := mustPool(t, a, ipam.PoolRequest{Subnet: pfx("10.0.0.0/24"), Network: "n"})
	mustAddr(t, a, ipam.AddressRequest{PoolID: p.ID, Addr: addr("10.0.0.5")})
	mustAddr(t, a, ipam.AddressRequest{PoolID: p.ID, Addr: addr("10.0.0.6")})
	mustRelease(t, a, p.ID, addr("::ffff:10.0.0.6"))

	tests := []struct {
		name, pool, addr string
		kind             errdefs.Kind
		wantErr          string
	}{
		{"never allocated", p.ID, "10.0.0.9", errdefs.KindNotFound,
			`address 10.0.0.9 is not allocated on network "n" (pool LocalDefault/10.0.0.0/24)`},
		{"already released", p.ID, "10.0.0.6", errdefs.KindNotFound,
			`address 10.0.0.6 is not allocated on network "n" (pool LocalDefault/10.0.0.0/24)`},
		{"unknown pool", "LocalDefault/10.9.0.0/24", "10.9.0.5", errdefs.KindNotFound,
			`address pool "LocalDefault/10.9.0.0/24" not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkErr(t, a.ReleaseAddress(t.Context(), tt.pool, addr(tt.addr)), tt.kind, tt.wantErr)
		})
	}
	mustRelease(t, a, p.ID, addr("10.0.0.5"))
	mustAddr(t, a, ipam.AddressRequest{PoolID: p.ID, Addr: addr("10.0.0.5")})
}
