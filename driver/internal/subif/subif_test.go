package subif

import (
	"context"
	"net"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/internal/drivertest"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/golden"
)

// The kinds as the macvlan and ipvlan packages define them (those import this one).
var (
	macvlanKind = &Kind{Name: "macvlan", ModeOpt: "macvlan_mode", Modes: []string{"bridge", "private", "vepa", "passthru"},
		NewLink: func(a netlink.LinkAttrs, mode string) netlink.Link {
			return &netlink.Macvlan{LinkAttrs: a, Mode: map[string]netlink.MacvlanMode{"bridge": netlink.MACVLAN_MODE_BRIDGE,
				"private": netlink.MACVLAN_MODE_PRIVATE}[mode]}
		},
		OwnMAC: true,
		DeriveMAC: func(ip netip.Addr, _ string) net.HardwareAddr {
			a := ip.As4()
			return net.HardwareAddr{2, 0x42, a[0], a[1], a[2], a[3]}
		}}
	ipvlanKind = &Kind{Name: "ipvlan", ModeOpt: "ipvlan_mode", Modes: []string{"l2", "l3", "l3s"},
		NewLink: func(a netlink.LinkAttrs, mode string) netlink.Link {
			return &netlink.IPVlan{LinkAttrs: a, Mode: map[string]netlink.IPVlanMode{"l2": netlink.IPVLAN_MODE_L2,
				"l3": netlink.IPVLAN_MODE_L3}[mode]}
		},
		Routed: func(mode string) bool { return mode != "l2" }}
)

const (
	nid  = "0123456789abcdef0123456789abcdef"
	nid2 = "abcdef0123456789abcdef0123456789"
	eid  = "fedcba9876543210fedcba9876543210"
)

var netCfg = drivertest.Network

func joinReq(addr4 string) driver.JoinRequest {
	r := driver.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: "/run/pier/netns/sb1", IfName: "eth0",
		MAC: net.HardwareAddr{2, 0x42, 192, 0, 2, 2}}
	if addr4 != "" {
		r.Addr4 = netip.MustParsePrefix(addr4)
	}
	return r
}

func TestParseOptions(t *testing.T) {
	for _, tc := range []struct {
		opts     map[string]string
		internal bool
		want     Config
		err      string
	}{
		{opts: nil, want: Config{Mode: "bridge", Internal: true, IfacePrefix: "eth"}},
		{opts: map[string]string{"parent": "eth1"}, want: Config{Parent: "eth1", Mode: "bridge", IfacePrefix: "eth"}},
		{opts: map[string]string{"parent": "eth1"}, internal: true, want: Config{Parent: "eth1", Mode: "bridge", Internal: true, IfacePrefix: "eth"}},
		{opts: map[string]string{"parent": "eth1", "macvlan_mode": "private", "com.docker.network.driver.mtu": "1400"},
			want: Config{Parent: "eth1", Mode: "private", MTU: 1400, IfacePrefix: "eth"}},
		{opts: map[string]string{"parent": "eth0.10"}, want: Config{Parent: "eth0.10", Mode: "bridge", VLAN: &VLAN{Lower: "eth0", ID: 10}, IfacePrefix: "eth"}},
		{opts: map[string]string{"parent": "eth1", "com.docker.network.internal": "true", "com.docker.network.container_iface_prefix": "mv"},
			want: Config{Parent: "eth1", Mode: "bridge", Internal: true, IfacePrefix: "mv"}},
		{opts: map[string]string{"parent": "lo"}, err: "the loopback interface cannot be a parent"},
		{opts: map[string]string{"parent": "eth0.0"}, err: "an id from 1 to 4094"},
		{opts: map[string]string{"parent": "eth0.4095"}, err: "an id from 1 to 4094"},
		{opts: map[string]string{"parent": "eth0.1.2"}, err: "e.g. eth0.10"},
		{opts: map[string]string{"parent": ".10"}, err: "e.g. eth0.10"},
		{opts: map[string]string{"parent": "a-very-long-interface"}, err: "1 to 15 characters"},
		{opts: map[string]string{"macvlan_mode": "hub"}, err: `invalid macvlan_mode "hub" (valid modes: bridge, private, vepa, passthru)`},
		{opts: map[string]string{"ipvlan_mode": "l3"}, err: `unknown macvlan driver option "ipvlan_mode" (valid options: parent, macvlan_mode,`},
		{opts: map[string]string{"com.docker.network.driver.mtu": "9"}, err: "not a valid MTU"},
		{opts: map[string]string{"com.docker.network.internal": "maybe"}, err: "not a boolean"},
		{opts: map[string]string{"com.docker.network.container_iface_prefix": "mv1"}, err: "not a valid interface prefix"},
	} {
		got, err := ParseOptions(macvlanKind, tc.internal, tc.opts)
		if tc.err != "" {
			if !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%v: err = %v, want InvalidArgument %q", tc.opts, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%v: %v", tc.opts, err)
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("%v: (-want +got)\n%s", tc.opts, d)
		}
	}
}

// TestLifecycle creates networks of every parent sort, joins and leaves, and deletes
// them, comparing the fake kernel's state with golden dumps.
func TestLifecycle(t *testing.T) {
	k := NewFake("eth1")
	d := New(macvlanKind, k, nil)
	ctx := t.Context()
	must(t, d.CreateNetwork(ctx, netCfg(nid, map[string]string{"parent": "eth1"}, "192.0.2.0/24", "198.51.100.0/24", "2001:db8::/64")))
	must(t, d.CreateNetwork(ctx, netCfg(nid2, nil, "203.0.113.0/24")))
	info, err := d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: nid, EndpointID: eid, Addr4: netip.MustParsePrefix("198.51.100.7/24")})
	must(t, err)
	if info.MAC.String() != "02:42:c6:33:64:07" {
		t.Errorf("derived MAC = %s", info.MAC)
	}
	req := joinReq("198.51.100.7/24")
	req.Addr6, req.MAC = netip.MustParsePrefix("2001:db8::7/64"), info.MAC
	res, err := d.Join(ctx, req)
	must(t, err)
	want := driver.JoinResult{Gateway4: netip.MustParseAddr("198.51.100.1"), Gateway6: netip.MustParseAddr("2001:db8::1")}
	if d := cmp.Diff(want, res, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("join result (-want +got): %s", d)
	}
	golden.Check(t, "joined", k.Dump())
	must(t, d.Leave(ctx, nid, eid))
	must(t, d.DeleteNetwork(ctx, nid))
	must(t, d.DeleteNetwork(ctx, nid2))
	golden.Check(t, "deleted", k.Dump())
	// The contract: deleting or leaving what is already gone is not an error.
	must(t, d.Leave(ctx, nid, eid))
	must(t, d.DeleteEndpoint(ctx, nid, eid))
	must(t, d.DeleteNetwork(ctx, nid))
	golden.Check(t, "deleted", k.Dump())
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestInternalAndNoParentHaveNoGateway(t *testing.T) {
	for name, opts := range map[string]map[string]string{
		"no parent": nil,
		"internal":  {"parent": "eth1", "com.docker.network.internal": "true"},
	} {
		d := New(macvlanKind, NewFake("eth1"), nil)
		must(t, d.CreateNetwork(t.Context(), netCfg(nid, opts, "192.0.2.0/24")))
		res, err := d.Join(t.Context(), joinReq("192.0.2.2/24"))
		if err != nil || !res.DisableGateway || res.Gateway4.IsValid() {
			t.Errorf("%s: %+v, %v; want no gateway", name, res, err)
		}
	}
}

func TestOneNetworkPerParent(t *testing.T) {
	d := New(macvlanKind, NewFake("eth1"), nil)
	must(t, d.CreateNetwork(t.Context(), netCfg(nid, map[string]string{"parent": "eth1"}, "192.0.2.0/24")))
	err := d.CreateNetwork(t.Context(), netCfg(nid2, map[string]string{"parent": "eth1", "macvlan_mode": "private"}, "198.51.100.0/24"))
	if !errdefs.Is(err, errdefs.KindConflict) || !strings.Contains(err.Error(), "network 0123456789ab is already using parent interface eth1") {
		t.Errorf("err = %v", err)
	}
	must(t, d.RestoreNetwork(t.Context(), netCfg(nid, map[string]string{"parent": "eth1"}, "192.0.2.0/24")))
}

// TestVLAN exercises the 802.1q path on a fake kernel that has it, and the refusal on
// one that does not (like this machine's).
func TestVLAN(t *testing.T) {
	k := NewFake("eth1")
	d := New(macvlanKind, k, nil)
	must(t, d.CreateNetwork(t.Context(), netCfg(nid, map[string]string{"parent": "eth1.10"}, "192.0.2.0/24")))
	golden.Check(t, "vlan", k.Dump())
	must(t, d.DeleteNetwork(t.Context(), nid))
	if got := k.Dump(); got != "host eth1 device\n" {
		t.Errorf("after delete:\n%s", got)
	}

	k.Unsupported["vlan"] = true
	err := d.CreateNetwork(t.Context(), netCfg(nid, map[string]string{"parent": "eth1.10"}, "192.0.2.0/24"))
	if !errdefs.Is(err, errdefs.KindNotImplemented) || !strings.Contains(err.Error(),
		`macvlan network "n-0123": creating VLAN sub-interface eth1.10: kernel does not support 802.1q VLAN (module 8021q)`) {
		t.Errorf("err = %v", err)
	}
	err = d.CreateNetwork(t.Context(), netCfg(nid, map[string]string{"parent": "eth9.10"}, "192.0.2.0/24"))
	if !errdefs.Is(err, errdefs.KindNotFound) {
		t.Errorf("VLAN on a missing lower device: %v", err)
	}
	if got := k.Dump(); got != "host eth1 device\n" {
		t.Errorf("after refused creates:\n%s", got)
	}
}

// TestExistingVLANParentIsKept: a user's eth1.10 is used, not created, and not deleted.
func TestExistingVLANParentIsKept(t *testing.T) {
	k := NewFake("eth1", "eth1.10")
	k.Unsupported["vlan"] = true
	d := New(macvlanKind, k, nil)
	must(t, d.CreateNetwork(t.Context(), netCfg(nid, map[string]string{"parent": "eth1.10"}, "192.0.2.0/24")))
	must(t, d.DeleteNetwork(t.Context(), nid))
	if got := k.Dump(); got != "host eth1 device\nhost eth1.10 device\n" {
		t.Errorf("state:\n%s", got)
	}
}

func TestUnsupportedKind(t *testing.T) {
	k := NewFake("eth1")
	k.Unsupported["ipvlan"] = true
	d := New(ipvlanKind, k, nil)
	for _, opts := range []map[string]string{{"parent": "eth1"}, nil} {
		err := d.CreateNetwork(t.Context(), netCfg(nid, opts, "192.0.2.0/24"))
		if !errdefs.Is(err, errdefs.KindNotImplemented) || !strings.HasSuffix(err.Error(), "kernel does not support ipvlan (module ipvlan)") {
			t.Errorf("%v: err = %v", opts, err)
		}
	}
	if got := k.Dump(); got != "host eth1 device\n" {
		t.Errorf("left behind:\n%s", got)
	}
}

func TestIPvlanL3(t *testing.T) {
	k := NewFake("eth1")
	d := New(ipvlanKind, k, nil)
	ctx := t.Context()
	must(t, d.CreateNetwork(ctx, netCfg(nid, map[string]string{"parent": "eth1", "ipvlan_mode": "l3"}, "192.0.2.0/24", "2001:db8::/64")))
	if _, err := d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: nid, EndpointID: eid, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 1}}); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("ipvlan endpoint with a MAC: %v", err)
	}
	req := joinReq("192.0.2.2/24")
	req.Addr6 = netip.MustParsePrefix("2001:db8::2/64")
	res, err := d.Join(ctx, req)
	must(t, err)
	want := driver.JoinResult{DisableGateway: true, StaticRoutes: []driver.StaticRoute{
		{Destination: netip.MustParsePrefix("0.0.0.0/0")}, {Destination: netip.MustParsePrefix("::/0")}}}
	if d := cmp.Diff(want, res, cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
		cmp.Comparer(func(a, b netip.Prefix) bool { return a == b })); d != "" {
		t.Errorf("join result (-want +got): %s", d)
	}
	golden.Check(t, "ipvlan-l3", k.Dump())
}

func TestRestoreAndCleanup(t *testing.T) {
	k := NewFake("eth1")
	d := New(macvlanKind, k, nil)
	ctx := t.Context()
	must(t, d.CreateNetwork(ctx, netCfg(nid, nil, "192.0.2.0/24")))
	must(t, d.CreateNetwork(ctx, netCfg(nid2, map[string]string{"parent": "eth1.20"}, "198.51.100.0/24")))
	_, err := d.Join(ctx, joinReq("192.0.2.2/24"))
	must(t, err)

	// A restart: a new driver knows only what the controller tells it.
	d = New(macvlanKind, k, nil)
	must(t, d.RestoreNetwork(ctx, netCfg(nid, nil, "192.0.2.0/24")))
	jr := joinReq("192.0.2.2/24")
	intact, err := d.RestoreEndpoint(ctx, driver.EndpointConfig{NetworkID: nid, EndpointID: eid}, &jr)
	if err != nil || !intact {
		t.Errorf("RestoreEndpoint = %v, %v; want intact", intact, err)
	}
	jr.IfName = "eth1"
	if intact, _ := d.RestoreEndpoint(ctx, driver.EndpointConfig{NetworkID: nid, EndpointID: "other"}, &jr); intact {
		t.Error("an endpoint without its interface is intact")
	}
	must(t, d.Cleanup(ctx, driver.Live{Networks: map[string]bool{nid: true}}))
	golden.Check(t, "restored", k.Dump())
	must(t, d.Leave(ctx, nid, eid))
	must(t, d.DeleteNetwork(ctx, nid))
	if got := k.Dump(); got != "host eth1 device\n" {
		t.Errorf("after deleting everything:\n%s", got)
	}
}

// TestJoinReplacesLeftover: a sub-interface left by an interrupted join under the same
// name is replaced; any other interface of that name is a conflict.
func TestJoinReplacesLeftover(t *testing.T) {
	k := NewFake("eth1")
	d := New(macvlanKind, k, nil)
	ctx := context.Background()
	must(t, d.CreateNetwork(ctx, netCfg(nid, map[string]string{"parent": "eth1"}, "192.0.2.0/24")))
	_, err := d.Join(ctx, joinReq("192.0.2.2/24"))
	must(t, err)
	_, err = d.Join(ctx, joinReq("192.0.2.2/24"))
	must(t, err)
	k.put("/run/pier/netns/sb1", &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: "eth5"}})
	r := joinReq("192.0.2.2/24")
	r.IfName = "eth5"
	if _, err := d.Join(ctx, r); err == nil {
		t.Error("join over a foreign eth5 succeeded")
	}
}
