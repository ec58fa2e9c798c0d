package remote

import (
	"encoding/json"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/golden"
	"github.com/piernet/pier/plugin"
	"github.com/piernet/pier/plugin/plugintest"
)

func newDriver(t *testing.T, s *plugintest.Server) *Driver {
	t.Helper()
	s.OK("NetworkDriver.GetCapabilities", `{"Scope":"local"}`)
	d, err := New(t.Context(), s.Plugin(t, "vnet", 200*time.Millisecond), nil)
	if err != nil {
		t.Fatal(err)
	}
	s.Reset()
	return d
}

var (
	nid = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	eid = "fedcba9876543210fedcba9876543210fedcba9876543210fedcba9876543210"
)

func netConfig() driver.NetworkConfig {
	return driver.NetworkConfig{ID: nid, Name: "n", Options: map[string]string{"mtu": "1400"}, Internal: true,
		EnableIPv6: true,
		IPv4: []driver.IPAMData{{AddressSpace: "LocalDefault", Pool: netip.MustParsePrefix("192.0.2.0/24"),
			Gateway: netip.MustParsePrefix("192.0.2.1/24"), Aux: map[string]netip.Addr{"router": netip.MustParseAddr("192.0.2.254")}}},
		IPv6: []driver.IPAMData{{AddressSpace: "LocalDefault", Pool: netip.MustParsePrefix("2001:db8::/64")}}}
}

// TestRequestShapes drives every method once and compares the request bodies with
// Docker's, byte for byte.
func TestRequestShapes(t *testing.T) {
	s := plugintest.New(t, plugin.NetworkDriver)
	d := newDriver(t, s)
	for _, m := range []string{"CreateNetwork", "DeleteNetwork", "CreateEndpoint", "DeleteEndpoint", "Leave",
		"ProgramExternalConnectivity", "RevokeExternalConnectivity", "AllocateNetwork", "FreeNetwork", "DiscoverNew", "DiscoverDelete"} {
		s.OK("NetworkDriver."+m, `{}`)
	}
	s.OK("NetworkDriver.Join", `{"InterfaceName":{"SrcName":"veth1","DstPrefix":"eth"}}`)
	s.OK("NetworkDriver.EndpointOperInfo", `{"Value":{"k":"v"}}`)
	ctx := t.Context()
	mac, _ := net.ParseMAC("02:42:c0:00:02:02")
	ec := driver.EndpointConfig{NetworkID: nid, EndpointID: eid, Addr4: netip.MustParsePrefix("192.0.2.2/24"),
		Addr6: netip.MustParsePrefix("2001:db8::2/64"), MAC: mac}
	errs := []error{
		d.CreateNetwork(ctx, netConfig()),
		d.CreateNetwork(ctx, driver.NetworkConfig{ID: nid}),
		second(d.CreateEndpoint(ctx, ec)),
		second(d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: nid, EndpointID: eid})),
		second(d.Join(ctx, driver.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/run/pier/netns/sb", IfName: "eth0"})),
		second(d.EndpointInfo(ctx, nid, eid)),
		d.ProgramExternalConnectivity(ctx, nid, eid),
		d.RevokeExternalConnectivity(ctx, nid, eid),
		d.Leave(ctx, nid, eid),
		d.DeleteEndpoint(ctx, nid, eid),
		d.DeleteNetwork(ctx, nid),
		second(d.AllocateNetwork(ctx, netConfig())),
		d.FreeNetwork(ctx, nid),
		d.DiscoverNew(ctx, DiscoveryNotification{DiscoveryType: 1, DiscoveryData: map[string]any{"Address": "192.0.2.7", "BindAddress": "192.0.2.7", "Self": true}}),
		d.DiscoverDelete(ctx, DiscoveryNotification{DiscoveryType: 1, DiscoveryData: map[string]any{"Address": "192.0.2.7"}}),
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
	for body, want := range map[string]string{
		`{"Scope":"local"}`: "local/local",
		`{"Scope":"global","ConnectivityScope":"local"}`: "global/local",
		`{"Scope":"moon"}`:  `invalid scope "moon"`,
		`{"Err":"not now"}`: "not now",
	} {
		s := plugintest.New(t, plugin.NetworkDriver)
		s.OK("NetworkDriver.GetCapabilities", body)
		d, err := New(t.Context(), s.Plugin(t, "vnet", time.Second), nil)
		got := ""
		if err != nil {
			got = err.Error()
		} else {
			got = string(d.Capability().DataScope) + "/" + string(d.Capability().ConnectivityScope)
		}
		if !strings.Contains(got, want) {
			t.Errorf("%s: got %q, want %q", body, got, want)
		}
	}
}

// TestErrField: network driver replies carry errors in Err; an IPAM-style Error field
// means nothing to them.
func TestErrField(t *testing.T) {
	s := plugintest.New(t, plugin.NetworkDriver)
	d := newDriver(t, s)
	s.OK("NetworkDriver.DeleteNetwork", `{"Err":"network busy"}`)
	err := d.DeleteNetwork(t.Context(), nid)
	if err == nil || err.Error() != `plugin "vnet": NetworkDriver.DeleteNetwork: network busy` || !plugin.Refused(err) {
		t.Errorf("Err reply: %v", err)
	}
	s.OK("NetworkDriver.DeleteNetwork", `{"Error":"ignored"}`)
	if err := d.DeleteNetwork(t.Context(), nid); err != nil {
		t.Errorf("Error field in a network reply: %v, want success", err)
	}
}

func TestExternalConnectivity404Tolerated(t *testing.T) {
	s := plugintest.New(t, plugin.NetworkDriver)
	d := newDriver(t, s) // nothing else scripted: every other method is a 404
	if err := d.ProgramExternalConnectivity(t.Context(), nid, eid); err != nil {
		t.Errorf("Program 404: %v", err)
	}
	if err := d.RevokeExternalConnectivity(t.Context(), nid, eid); err != nil {
		t.Errorf("Revoke 404: %v", err)
	}
	if err := d.Leave(t.Context(), nid, eid); !plugin.IsNotFound(err) {
		t.Errorf("Leave 404: %v, want an error", err)
	}
	s.Set("NetworkDriver.ProgramExternalConnectivity", plugintest.Reply{Status: 500, Body: `{"Err":"no ports"}`})
	if err := d.ProgramExternalConnectivity(t.Context(), nid, eid); err == nil {
		t.Error("Program 500: no error")
	}
}

func TestFillOnlyEmpty(t *testing.T) {
	mac, _ := net.ParseMAC("02:42:c0:00:02:02")
	full := driver.EndpointConfig{NetworkID: nid, EndpointID: eid, Addr4: netip.MustParsePrefix("192.0.2.2/24"), MAC: mac}
	empty := driver.EndpointConfig{NetworkID: nid, EndpointID: eid}
	for name, tc := range map[string]struct {
		ec       driver.EndpointConfig
		reply    string
		wantMAC  string
		wantAddr string // Addr4 and Addr6 the driver assigned, space-separated
		err      string
	}{
		"nothing":        {ec: full, reply: `{}`, wantMAC: ""},
		"null interface": {ec: full, reply: `{"Interface":null}`},
		"fills MAC":      {ec: empty, reply: `{"Interface":{"MacAddress":"02:99:00:00:00:01"}}`, wantMAC: "02:99:00:00:00:01"},
		"echoes MAC": {ec: full, reply: `{"Interface":{"MacAddress":"02:42:c0:00:02:02"}}`,
			err: "driver modified the endpoint's interface: MacAddress was already set to 02:42:c0:00:02:02 and cannot be modified (reply: 02:42:c0:00:02:02); rolled back with DeleteEndpoint"},
		"echoes address": {ec: full, reply: `{"Interface":{"Address":"192.0.2.9/24"}}`,
			err: "Address was already set to 192.0.2.2/24 and cannot be modified (reply: 192.0.2.9/24); rolled back"},
		"fills addresses": {ec: empty, reply: `{"Interface":{"Address":"192.0.2.9/24","AddressIPv6":"2001:db8::9/64"}}`,
			wantAddr: "192.0.2.9/24 2001:db8::9/64"},
		"fills IPv6 only": {ec: full, reply: `{"Interface":{"AddressIPv6":"2001:db8::9/64"}}`,
			wantAddr: "invalid Prefix 2001:db8::9/64"},
		"bad MAC":     {ec: empty, reply: `{"Interface":{"MacAddress":"zz"}}`, err: `invalid MacAddress "zz"`},
		"bad address": {ec: empty, reply: `{"Interface":{"AddressIPv6":"192.0.2.9/24"}}`, err: `invalid IPv6 address "192.0.2.9/24"`},
	} {
		s := plugintest.New(t, plugin.NetworkDriver)
		d := newDriver(t, s)
		s.OK("NetworkDriver.CreateEndpoint", tc.reply)
		s.OK("NetworkDriver.DeleteEndpoint", `{}`)
		info, err := d.CreateEndpoint(t.Context(), tc.ec)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err = %v, want %q", name, err, tc.err)
			}
			if got := s.Methods(); len(got) != 2 || got[1] != "NetworkDriver.DeleteEndpoint" {
				t.Errorf("%s: calls %v, want CreateEndpoint then DeleteEndpoint", name, got)
			}
			continue
		}
		if tc.wantAddr == "" {
			tc.wantAddr = "invalid Prefix invalid Prefix"
		}
		if err != nil || info.MAC.String() != tc.wantMAC || info.Addr4.String()+" "+info.Addr6.String() != tc.wantAddr {
			t.Errorf("%s: info = %+v, %v; want MAC %q, addresses %q", name, info, err, tc.wantMAC, tc.wantAddr)
		}
	}
}

func TestParseJoin(t *testing.T) {
	ok := &interfaceName{SrcName: "veth9", DstPrefix: "eth"}
	for name, tc := range map[string]struct {
		in   joinResponse
		want driver.JoinResult
		err  string
	}{
		"minimal": {in: joinResponse{InterfaceName: ok}, want: driver.JoinResult{SrcName: "veth9"}},
		"full": {in: joinResponse{InterfaceName: ok, Gateway: "192.0.2.1", GatewayIPv6: "2001:db8::1", DisableGatewayService: true,
			StaticRoutes: []staticRoute{{Destination: "203.0.113.7/24", RouteType: 0, NextHop: "192.0.2.1"},
				{Destination: "198.51.100.0/24", RouteType: 1, NextHop: "ignored"}}},
			want: driver.JoinResult{SrcName: "veth9", Gateway4: netip.MustParseAddr("192.0.2.1"),
				Gateway6: netip.MustParseAddr("2001:db8::1"), DisableGateway: true, StaticRoutes: []driver.StaticRoute{
					{Destination: netip.MustParsePrefix("203.0.113.0/24"), NextHop: netip.MustParseAddr("192.0.2.1")},
					{Destination: netip.MustParsePrefix("198.51.100.0/24")}}}},
		"no interface":   {in: joinResponse{}, err: "InterfaceName.SrcName is empty"},
		"CIDR gateway":   {in: joinResponse{InterfaceName: ok, Gateway: "192.0.2.1/24"}, err: `invalid Gateway "192.0.2.1/24"`},
		"v4 gateway6":    {in: joinResponse{InterfaceName: ok, GatewayIPv6: "192.0.2.1"}, err: `invalid GatewayIPv6 "192.0.2.1"`},
		"bad route type": {in: joinResponse{InterfaceName: ok, StaticRoutes: []staticRoute{{Destination: "0.0.0.0/0", RouteType: 7}}}, err: "unknown RouteType 7"},
		"no next hop":    {in: joinResponse{InterfaceName: ok, StaticRoutes: []staticRoute{{Destination: "0.0.0.0/0"}}}, err: `invalid NextHop ""`},
		"bad dest":       {in: joinResponse{InterfaceName: ok, StaticRoutes: []staticRoute{{Destination: "x", RouteType: 1}}}, err: `destination "x"`},
	} {
		got, err := parseJoin(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%s: err = %v, want %q", name, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if d := cmp.Diff(tc.want, got.Result, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
			cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
			t.Errorf("%s: (-want +got)\n%s", name, d)
		}
	}
}

// TestUndoOnDoubt: a call with an unknown outcome is undone on the plugin; a refused
// one is not (the plugin did nothing).
func TestUndoOnDoubt(t *testing.T) {
	for name, tc := range map[string]struct {
		reply plugintest.Reply
		calls string
		kind  errdefs.Kind
	}{
		"refused": {reply: plugintest.Reply{Status: 500, Body: `{"Err":"no"}`}, calls: "NetworkDriver.Join"},
		"Err":     {reply: plugintest.Reply{Body: `{"Err":"no"}`}, calls: "NetworkDriver.Join"},
		"hang":    {reply: plugintest.Reply{Hang: true}, calls: "NetworkDriver.Join NetworkDriver.Leave", kind: errdefs.KindUnavailable},
		"drop":    {reply: plugintest.Reply{Drop: true}, calls: "NetworkDriver.Join NetworkDriver.Leave", kind: errdefs.KindUnavailable},
		"garbage": {reply: plugintest.Reply{Body: `{"InterfaceName":`}, calls: "NetworkDriver.Join NetworkDriver.Leave", kind: errdefs.KindInternal},
		"invalid": {reply: plugintest.Reply{Body: `{"InterfaceName":{"SrcName":""}}`}, calls: "NetworkDriver.Join NetworkDriver.Leave", kind: errdefs.KindInternal},
	} {
		s := plugintest.New(t, plugin.NetworkDriver)
		d := newDriver(t, s)
		s.Set("NetworkDriver.Join", tc.reply)
		s.OK("NetworkDriver.Leave", `{}`)
		_, err := d.Join(t.Context(), driver.JoinRequest{NetworkID: nid, EndpointID: eid, IfName: "eth0"})
		if err == nil || errdefs.KindOf(err) != tc.kind {
			t.Errorf("%s: err = %v (kind %v), want kind %v", name, err, errdefs.KindOf(err), tc.kind)
		}
		if got := strings.Join(s.Methods(), " "); got != tc.calls {
			t.Errorf("%s: calls %q, want %q", name, got, tc.calls)
		}
	}
}

func FuzzJoinReply(f *testing.F) {
	f.Add([]byte(`{"InterfaceName":{"SrcName":"v","DstPrefix":"eth"},"Gateway":"192.0.2.1","StaticRoutes":[{"Destination":"0.0.0.0/0","RouteType":1}]}`))
	f.Add([]byte(`{"Interface":{"Address":"192.0.2.2/24","MacAddress":"02:42:00:00:00:01"}}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var jr joinResponse
		if decode(b, &jr) {
			if r, err := parseJoin(jr); err == nil && r.Result.SrcName == "" {
				t.Error("accepted a join without SrcName")
			}
		}
		var cr createEndpointResponse
		if decode(b, &cr) {
			sent := endpointInterface{Address: "192.0.2.2/24"}
			if f, err := mergeInterface(sent, cr.Interface); err == nil && f.Addr4.IsValid() {
				t.Error("accepted a reply overwriting the address")
			}
		}
	})
}

func decode(b []byte, v any) bool { return json.Unmarshal(b, v) == nil }
