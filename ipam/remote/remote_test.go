package remote

import (
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/golden"
	"github.com/piernet/pier/ipam"
	"github.com/piernet/pier/plugin"
	"github.com/piernet/pier/plugin/plugintest"
)

// newAllocator starts a scripted IPAM plugin with the given capabilities reply ("" = none).
func newAllocator(t *testing.T, caps string) (*Allocator, *plugintest.Server) {
	t.Helper()
	s := plugintest.New(t, plugin.IpamDriver)
	if caps != "" {
		s.OK("IpamDriver.GetCapabilities", caps)
	}
	s.OK("IpamDriver.GetDefaultAddressSpaces", `{"LocalDefaultAddressSpace":"myLocal","GlobalDefaultAddressSpace":"myGlobal"}`)
	a, err := New(t.Context(), s.Plugin(t, "pool", 200*time.Millisecond), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Reset()
	return a, s
}

func TestRequestShapes(t *testing.T) {
	a, s := newAllocator(t, "")
	s.OK("IpamDriver.RequestPool", `{"PoolID":"p1","Pool":"192.0.2.0/24","Data":{}}`)
	s.OK("IpamDriver.RequestAddress", `{"Address":"192.0.2.1/24"}`)
	s.OK("IpamDriver.ReleaseAddress", `{}`)
	s.OK("IpamDriver.ReleasePool", `{}`)
	ctx := t.Context()
	pool, err := a.RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("192.0.2.0/24"),
		IPRange: netip.MustParsePrefix("192.0.2.128/25"), Options: map[string]string{"opt": "v"}})
	if err != nil {
		t.Fatal(err)
	}
	want := ipam.Pool{ID: "p1", Subnet: netip.MustParsePrefix("192.0.2.0/24"), IPRange: netip.MustParsePrefix("192.0.2.128/25"), AddressSpace: "myLocal"}
	if pool != want {
		t.Errorf("pool = %+v, want %+v", pool, want)
	}
	s.OK("IpamDriver.RequestPool", `{"PoolID":"p2","Pool":"2001:db8::/64"}`)
	errs := []error{
		second(a.RequestPool(ctx, ipam.PoolRequest{AddressSpace: ipam.SpaceGlobal, V6: true})),
		second(a.RequestAddress(ctx, ipam.AddressRequest{PoolID: "p1", Gateway: true})),
		second(a.RequestAddress(ctx, ipam.AddressRequest{PoolID: "p1", Addr: netip.MustParseAddr("192.0.2.1"), Gateway: true})),
		second(a.RequestAddress(ctx, ipam.AddressRequest{PoolID: "p1"})),
		second(a.RequestAddress(ctx, ipam.AddressRequest{PoolID: "p1", Addr: netip.MustParseAddr("192.0.2.1")})),
		a.ReleaseAddress(ctx, "p1", netip.MustParseAddr("192.0.2.1")),
		a.ReleasePool(ctx, "p1"),
	}
	for i, err := range errs {
		if err != nil {
			t.Errorf("call %d: %v", i, err)
		}
	}
	golden.Check(t, "requests", s.Transcript())
}

func second[T any](_ T, err error) error { return err }

func TestCapabilities(t *testing.T) {
	a, _ := newAllocator(t, "")
	if a.Capabilities() != (Capabilities{}) {
		t.Errorf("no GetCapabilities (404): %+v, want none", a.Capabilities())
	}
	a, _ = newAllocator(t, `{"RequiresMACAddress":true,"RequiresRequestReplay":true}`)
	if a.Capabilities() != (Capabilities{true, true}) || !a.RequiresRequestReplay() {
		t.Errorf("caps = %+v", a.Capabilities())
	}
	s := plugintest.New(t, plugin.IpamDriver)
	s.Set("IpamDriver.GetCapabilities", plugintest.Reply{Status: 500, Body: `{"Err":"broken"}`})
	if _, err := New(t.Context(), s.Plugin(t, "pool", time.Second), nil); err == nil || !strings.Contains(err.Error(), "broken") {
		t.Errorf("failing GetCapabilities (not 404): %v, want an error", err)
	}
}

// TestErrorField: IPAM replies carry errors in Error; Err means nothing in a 200 reply.
func TestErrorField(t *testing.T) {
	a, s := newAllocator(t, "")
	s.OK("IpamDriver.ReleasePool", `{"Error":"pool in use"}`)
	if err := a.ReleasePool(t.Context(), "p"); err == nil || err.Error() != `plugin "pool": IpamDriver.ReleasePool: pool in use` {
		t.Errorf("Error reply: %v", err)
	}
	s.OK("IpamDriver.ReleasePool", `{"Err":"ignored"}`)
	if err := a.ReleasePool(t.Context(), "p"); err != nil {
		t.Errorf("Err field in an IPAM reply: %v, want success", err)
	}
}

func TestPoolGatewayFromData(t *testing.T) {
	a, s := newAllocator(t, "")
	s.OK("IpamDriver.RequestPool", `{"PoolID":"p1","Pool":"192.0.2.0/24","Data":{"com.docker.network.gateway":"192.0.2.254/24"}}`)
	s.OK("IpamDriver.RequestAddress", `{"Address":"192.0.2.7/24"}`)
	ctx := t.Context()
	if _, err := a.RequestPool(ctx, ipam.PoolRequest{}); err != nil {
		t.Fatal(err)
	}
	gw, err := a.RequestAddress(ctx, ipam.AddressRequest{PoolID: "p1", Gateway: true})
	if err != nil || gw.String() != "192.0.2.254/24" {
		t.Errorf("gateway = %s, %v; want the pool's 192.0.2.254/24", gw, err)
	}
	if got := s.Methods(); len(got) != 1 {
		t.Errorf("calls %v: the pool's gateway needs no RequestAddress", got)
	}
	if gw, err := a.RequestAddress(ctx, ipam.AddressRequest{PoolID: "p1", Addr: netip.MustParseAddr("192.0.2.7"), Gateway: true}); err != nil || gw.String() != "192.0.2.7/24" {
		t.Errorf("user gateway = %s, %v; want it requested", gw, err)
	}
}

func TestBadReplies(t *testing.T) {
	for name, tc := range map[string]struct {
		method, reply string
		call          func(*Allocator) error
		err           string
		undo          string // the call undoing what pier refused, if any
	}{
		"wrong family": {method: "RequestPool", reply: `{"PoolID":"x","Pool":"192.0.2.0/24"}`, err: `invalid Pool "192.0.2.0/24" (want an IPv6 CIDR)`,
			undo: "IpamDriver.ReleasePool",
			call: func(a *Allocator) error { return second(a.RequestPool(t.Context(), ipam.PoolRequest{V6: true})) }},
		"no PoolID": {method: "RequestPool", reply: `{"Pool":"192.0.2.0/24"}`, err: "reply has no PoolID",
			call: func(a *Allocator) error { return second(a.RequestPool(t.Context(), ipam.PoolRequest{})) }},
		"bad pool": {method: "RequestPool", reply: `{"PoolID":"x","Pool":"192.0.2.0"}`, err: `invalid Pool "192.0.2.0"`, undo: "IpamDriver.ReleasePool",
			call: func(a *Allocator) error { return second(a.RequestPool(t.Context(), ipam.PoolRequest{})) }},
		"bad gateway": {method: "RequestPool", reply: `{"PoolID":"x","Pool":"192.0.2.0/24","Data":{"com.docker.network.gateway":"198.51.100.1/24"}}`,
			err: `invalid gateway "198.51.100.1/24"`, undo: "IpamDriver.ReleasePool",
			call: func(a *Allocator) error { return second(a.RequestPool(t.Context(), ipam.PoolRequest{})) }},
		"no address": {method: "RequestAddress", reply: `{}`, err: "no address returned",
			call: func(a *Allocator) error {
				return second(a.RequestAddress(t.Context(), ipam.AddressRequest{PoolID: "x"}))
			}},
		"plain address": {method: "RequestAddress", reply: `{"Address":"192.0.2.9"}`, err: `invalid Address "192.0.2.9"`,
			call: func(a *Allocator) error {
				return second(a.RequestAddress(t.Context(), ipam.AddressRequest{PoolID: "x"}))
			}},
		"hang": {method: "RequestAddress", reply: "hang", err: "no reply within 200ms",
			call: func(a *Allocator) error {
				return second(a.RequestAddress(t.Context(), ipam.AddressRequest{PoolID: "x"}))
			}},
	} {
		a, s := newAllocator(t, "")
		if tc.reply == "hang" {
			s.Set("IpamDriver."+tc.method, plugintest.Reply{Hang: true})
		} else {
			s.OK("IpamDriver."+tc.method, tc.reply)
		}
		s.OK("IpamDriver.ReleasePool", `{}`)
		err := tc.call(a)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: err = %v, want %q", name, err, tc.err)
		}
		if m := s.Methods(); tc.undo != "" && (len(m) != 2 || m[1] != tc.undo) || tc.undo == "" && len(m) != 1 {
			t.Errorf("%s: calls %v, want the call then %q", name, m, tc.undo)
		}
	}
}

func TestAddressOutsidePoolIsReleased(t *testing.T) {
	a, s := newAllocator(t, "")
	s.OK("IpamDriver.RequestPool", `{"PoolID":"p1","Pool":"192.0.2.0/24"}`)
	s.OK("IpamDriver.RequestAddress", `{"Address":"203.0.113.5/24"}`)
	s.OK("IpamDriver.ReleaseAddress", `{}`)
	if _, err := a.RequestPool(t.Context(), ipam.PoolRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err := a.RequestAddress(t.Context(), ipam.AddressRequest{PoolID: "p1"})
	if !errdefs.Is(err, errdefs.KindInternal) || !strings.Contains(err.Error(), "203.0.113.5/24 is not in pool 192.0.2.0/24") {
		t.Errorf("err = %v", err)
	}
	if got := s.Methods(); strings.Join(got, " ") != "IpamDriver.RequestPool IpamDriver.RequestAddress IpamDriver.ReleaseAddress" {
		t.Errorf("calls = %v", got)
	}
}

func FuzzReplies(f *testing.F) {
	f.Add([]byte(`{"PoolID":"p","Pool":"192.0.2.0/24","Data":{"com.docker.network.gateway":"192.0.2.1/24"}}`), false)
	f.Add([]byte(`{"Address":"2001:db8::5/64"}`), true)
	sub := netip.MustParsePrefix("192.0.2.0/24")
	f.Fuzz(func(t *testing.T, b []byte, v6 bool) {
		var pr requestPoolResponse
		if json.Unmarshal(b, &pr) == nil {
			if info, err := parsePool(pr, v6); err == nil && (info.subnet.Addr().Is6() != v6 || pr.PoolID == "") {
				t.Errorf("accepted %s as an IPv6=%v pool", b, v6)
			}
		}
		var ar requestAddressResponse
		if json.Unmarshal(b, &ar) == nil {
			if p, err := parseAddress(ar.Address, sub, true); err == nil && !sub.Contains(p.Addr()) {
				t.Errorf("accepted %s outside %s", p, sub)
			}
		}
	})
}
