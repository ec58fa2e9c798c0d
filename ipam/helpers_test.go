package ipam_test

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

func newAlloc(t testing.TB, cfg ipam.Config) *ipam.Default {
	t.Helper()
	a, err := ipam.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return a
}

func mustPool(t testing.TB, a *ipam.Default, req ipam.PoolRequest) ipam.Pool {
	t.Helper()
	p, err := a.RequestPool(t.Context(), req)
	if err != nil {
		t.Fatalf("RequestPool(%+v): %v", req, err)
	}
	return p
}

func mustAddr(t testing.TB, a *ipam.Default, req ipam.AddressRequest) netip.Prefix {
	t.Helper()
	p, err := a.RequestAddress(t.Context(), req)
	if err != nil {
		t.Fatalf("RequestAddress(%+v): %v", req, err)
	}
	return p
}

func mustRelease(t testing.TB, a *ipam.Default, poolID string, addr netip.Addr) {
	t.Helper()
	if err := a.ReleaseAddress(t.Context(), poolID, addr); err != nil {
		t.Fatalf("ReleaseAddress(%s, %s): %v", poolID, addr, err)
	}
}

// drain requests dynamic addresses until the pool is full and returns them in order.
func drain(t testing.TB, a *ipam.Default, poolID string) []netip.Addr {
	t.Helper()
	var got []netip.Addr
	for {
		p, err := a.RequestAddress(t.Context(), ipam.AddressRequest{PoolID: poolID})
		if errdefs.Is(err, errdefs.KindUnavailable) {
			return got
		}
		if err != nil {
			t.Fatalf("RequestAddress after %v: %v", got, err)
		}
		got = append(got, p.Addr())
	}
}

// checkErr fails unless err has kind and message msg.
func checkErr(t testing.TB, err error, kind errdefs.Kind, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v %q", kind, msg)
	}
	if got := errdefs.KindOf(err); got != kind || err.Error() != msg {
		t.Errorf("got error (%v) %q\nwant      (%v) %q", got, err, kind, msg)
	}
}

func addrs(ss ...string) []netip.Addr {
	out := make([]netip.Addr, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

func prefixes(ss ...string) []netip.Prefix {
	out := make([]netip.Prefix, 0, len(ss))
	for _, s := range ss {
		out = append(out, netip.MustParsePrefix(s))
	}
	return out
}

var pfx = netip.MustParsePrefix
var addr = netip.MustParseAddr

// netipOpts lets cmp compare netip values, which have unexported fields.
var netipOpts = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})
