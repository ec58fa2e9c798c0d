package wg

import (
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.zx2c4.com/wireguard/wgctrl/wgtypes"

	"github.com/piernet/pier/errdefs"
)

// netipCmp compares the netip values of peers, and nil slices equal to empty ones.
var netipCmp = cmp.Options{
	cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	cmpopts.EquateEmpty(),
}

func testKey(b byte) Key {
	var k Key
	for i := range k {
		k[i] = b
	}
	return k
}

func testPeer(b byte, endpoint string, ips ...string) Peer {
	p := Peer{PublicKey: testKey(b), Endpoint: netip.MustParseAddrPort(endpoint)}
	for _, s := range ips {
		p.AllowedIPs = append(p.AllowedIPs, netip.MustParsePrefix(s))
	}
	return p
}

func TestUAPIText(t *testing.T) {
	priv := testKey(1)
	p := testPeer(2, "192.0.2.12:51820", "192.0.2.12/32", "198.51.100.0/24")
	p.Keepalive = 25 * time.Second
	got := uapiText(change{privateKey: &priv, listenPort: 51820, remove: []Key{testKey(3)}, set: []Peer{p}})
	want := `private_key=0101010101010101010101010101010101010101010101010101010101010101
listen_port=51820
public_key=0202020202020202020202020202020202020202020202020202020202020202
endpoint=192.0.2.12:51820
persistent_keepalive_interval=25
replace_allowed_ips=true
allowed_ip=192.0.2.12/32
allowed_ip=198.51.100.0/24
public_key=0303030303030303030303030303030303030303030303030303030303030303
remove=true
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("uapi text (-want +got):\n%s", diff)
	}
	if got := uapiText(change{}); got != "" {
		t.Errorf("empty change renders %q", got)
	}
}

func TestKernelConfig(t *testing.T) {
	priv := testKey(1)
	p := testPeer(2, "[2001:db8::2]:51820", "192.0.2.12/32", "2001:db8::/64")
	p.Keepalive = 25 * time.Second
	got := kernelConfig(change{privateKey: &priv, listenPort: 51820, remove: []Key{testKey(3)}, set: []Peer{p}})
	wk, port, ka := wgtypes.Key(testKey(1)), 51820, 25*time.Second
	want := wgtypes.Config{PrivateKey: &wk, ListenPort: &port, Peers: []wgtypes.PeerConfig{
		{PublicKey: wgtypes.Key(testKey(2)), Endpoint: &net.UDPAddr{IP: net.ParseIP("2001:db8::2"), Port: 51820},
			PersistentKeepaliveInterval: &ka, ReplaceAllowedIPs: true, AllowedIPs: []net.IPNet{
				{IP: net.IP{192, 0, 2, 12}, Mask: net.CIDRMask(32, 32)},
				{IP: net.ParseIP("2001:db8::"), Mask: net.CIDRMask(64, 128)},
			}},
		{PublicKey: wgtypes.Key(testKey(3)), Remove: true},
	}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("kernel config (-want +got):\n%s", diff)
	}
	if got := kernelConfig(change{}); !cmp.Equal(got, wgtypes.Config{}) {
		t.Errorf("empty change renders %+v", got)
	}
}

// A kick turns a peer's keepalive off and on again, after the rest of the change:
// that sends a keepalive (a handshake when there is no session) at once.
func TestKickRendering(t *testing.T) {
	priv := testKey(1)
	p := testPeer(2, "192.0.2.12:51820", "192.0.2.12/32")
	p.Keepalive = 25 * time.Second
	got := uapiText(change{privateKey: &priv, kick: []Peer{p}})
	want := `private_key=0101010101010101010101010101010101010101010101010101010101010101
public_key=0202020202020202020202020202020202020202020202020202020202020202
update_only=true
persistent_keepalive_interval=0
persistent_keepalive_interval=25
`
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("uapi text (-want +got):\n%s", diff)
	}
	cfgs := kernelConfigs(change{privateKey: &priv, kick: []Peer{p}})
	wk, off, on := wgtypes.Key(priv), time.Duration(0), 25*time.Second
	wantK := []wgtypes.Config{
		{PrivateKey: &wk, Peers: []wgtypes.PeerConfig{{PublicKey: wgtypes.Key(testKey(2)), UpdateOnly: true, PersistentKeepaliveInterval: &off}}},
		{Peers: []wgtypes.PeerConfig{{PublicKey: wgtypes.Key(testKey(2)), UpdateOnly: true, PersistentKeepaliveInterval: &on}}},
	}
	if diff := cmp.Diff(wantK, cfgs); diff != "" {
		t.Errorf("kernel configs (-want +got):\n%s", diff)
	}
	if n := len(kernelConfigs(change{privateKey: &priv})); n != 1 {
		t.Errorf("a change without kicks renders %d kernel configs", n)
	}
}

func TestKernelStatus(t *testing.T) {
	hs := time.Unix(1700000000, 5)
	d := &wgtypes.Device{Peers: []wgtypes.Peer{
		{PublicKey: wgtypes.Key(testKey(2)), Endpoint: &net.UDPAddr{IP: net.ParseIP("192.0.2.12"), Port: 51820},
			AllowedIPs:        []net.IPNet{{IP: net.ParseIP("198.51.100.0").To4(), Mask: net.CIDRMask(24, 32)}},
			LastHandshakeTime: hs, ReceiveBytes: 10, TransmitBytes: 20},
		{PublicKey: wgtypes.Key(testKey(1)), LastHandshakeTime: time.Unix(0, 0)},
	}}
	want := []PeerStatus{
		{Peer: Peer{PublicKey: testKey(1)}},
		{Peer: testPeer(2, "192.0.2.12:51820", "198.51.100.0/24"), LastHandshake: hs, RxBytes: 10, TxBytes: 20},
	}
	if diff := cmp.Diff(want, kernelStatus(d), netipCmp); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
}

func TestParseUAPI(t *testing.T) {
	text := `private_key=0101010101010101010101010101010101010101010101010101010101010101
listen_port=51820
public_key=0303030303030303030303030303030303030303030303030303030303030303
endpoint=192.0.2.13:51820
last_handshake_time_sec=0
last_handshake_time_nsec=0
tx_bytes=0
rx_bytes=0
persistent_keepalive_interval=0
allowed_ip=192.0.2.13/32
public_key=0202020202020202020202020202020202020202020202020202020202020202
endpoint=192.0.2.12:51820
last_handshake_time_sec=1700000000
last_handshake_time_nsec=7
tx_bytes=148
rx_bytes=92
persistent_keepalive_interval=25
allowed_ip=198.51.100.0/24
allowed_ip=192.0.2.12/32
protocol_version=1
errno=0
`
	got, err := parseUAPI(text)
	if err != nil {
		t.Fatal(err)
	}
	b := testPeer(2, "192.0.2.12:51820", "192.0.2.12/32", "198.51.100.0/24")
	b.Keepalive = 25 * time.Second
	want := []PeerStatus{
		{Peer: b, LastHandshake: time.Unix(1700000000, 7), RxBytes: 92, TxBytes: 148},
		{Peer: testPeer(3, "192.0.2.13:51820", "192.0.2.13/32")},
	}
	if diff := cmp.Diff(want, got, netipCmp); diff != "" {
		t.Errorf("status (-want +got):\n%s", diff)
	}
	if _, err := parseUAPI("public_key=zz\n"); err == nil {
		t.Error("a bad key parsed")
	}
}

// TestDiffPeers checks that only what changed is rendered: an unchanged peer (even
// given with its AllowedIPs in another order) is not named, so it keeps its session.
func TestDiffPeers(t *testing.T) {
	cur, err := validatePeers(testKey(9), []Peer{
		testPeer(1, "192.0.2.11:51820", "192.0.2.11/32", "198.51.100.0/24"),
		testPeer(2, "192.0.2.12:51820", "192.0.2.12/32"),
		testPeer(3, "192.0.2.13:51820", "192.0.2.13/32"),
	})
	if err != nil {
		t.Fatal(err)
	}
	want, err := validatePeers(testKey(9), []Peer{
		testPeer(1, "192.0.2.11:51820", "198.51.100.7/24", "192.0.2.11/32"), // same, reordered, unmasked
		testPeer(2, "192.0.2.22:51820", "192.0.2.12/32"),                    // moved
		testPeer(4, "192.0.2.14:51820", "192.0.2.14/32"),                    // new
	})
	if err != nil {
		t.Fatal(err)
	}
	got := uapiText(diffPeers(cur, want))
	wantText := `public_key=0202020202020202020202020202020202020202020202020202020202020202
endpoint=192.0.2.22:51820
persistent_keepalive_interval=0
replace_allowed_ips=true
allowed_ip=192.0.2.12/32
public_key=0404040404040404040404040404040404040404040404040404040404040404
endpoint=192.0.2.14:51820
persistent_keepalive_interval=0
replace_allowed_ips=true
allowed_ip=192.0.2.14/32
public_key=0303030303030303030303030303030303030303030303030303030303030303
remove=true
`
	if diff := cmp.Diff(wantText, got); diff != "" {
		t.Errorf("diff (-want +got):\n%s", diff)
	}
	if c := diffPeers(want, want); !c.empty() {
		t.Errorf("no-op diff is %+v", c)
	}
	add, del := diffRoutes(routesOf(cur), routesOf(want))
	if diff := cmp.Diff("add [192.0.2.14/32] del [192.0.2.13/32]", fmtRoutes(add, del)); diff != "" {
		t.Errorf("routes (-want +got):\n%s", diff)
	}
}

func fmtRoutes(add, del []netip.Prefix) string {
	s := func(ps []netip.Prefix) string {
		var b []string
		for _, p := range ps {
			b = append(b, p.String())
		}
		return "[" + strings.Join(b, " ") + "]"
	}
	return "add " + s(add) + " del " + s(del)
}

func TestValidatePeers(t *testing.T) {
	self := testKey(9)
	for name, peers := range map[string][]Peer{
		"no key":      {{Endpoint: netip.MustParseAddrPort("192.0.2.1:1")}},
		"own key":     {testPeer(9, "192.0.2.1:1")},
		"no endpoint": {{PublicKey: testKey(1)}},
		"twice":       {testPeer(1, "192.0.2.1:1"), testPeer(1, "192.0.2.2:1")},
		"shared ip":   {testPeer(1, "192.0.2.1:1", "198.51.100.0/24"), testPeer(2, "192.0.2.2:1", "198.51.100.0/24")},
		"keepalive":   {{PublicKey: testKey(1), Endpoint: netip.MustParseAddrPort("192.0.2.1:1"), Keepalive: -time.Second}},
	} {
		if _, err := validatePeers(self, peers); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("%s: got %v, want an invalid-argument error", name, err)
		}
	}
}

// FuzzParseUAPI checks that no answer of wireguard-go crashes the parser and that
// what it accepts renders back to UAPI text that parses to the same peers.
func FuzzParseUAPI(f *testing.F) {
	f.Add("public_key=0202020202020202020202020202020202020202020202020202020202020202\nendpoint=192.0.2.12:51820\nallowed_ip=192.0.2.12/32\nlast_handshake_time_sec=1\n")
	f.Add("listen_port=1\nerrno=0\n")
	f.Fuzz(func(t *testing.T, text string) {
		st, err := parseUAPI(text)
		if err != nil {
			return
		}
		var c change
		for _, s := range st {
			if s.Endpoint.IsValid() {
				c.set = append(c.set, s.Peer)
			}
		}
		again, err := parseUAPI(uapiText(c))
		if err != nil || len(again) != len(c.set) {
			t.Fatalf("rendered %d peers, parsed back %d: %v", len(c.set), len(again), err)
		}
	})
}

func FuzzParseKey(f *testing.F) {
	f.Add("AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI=")
	f.Add("")
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseKey(s)
		if err != nil {
			return
		}
		if again, err := ParseKey(k.String()); err != nil || again != k {
			t.Fatalf("round trip of %q: %v", s, err)
		}
	})
}
