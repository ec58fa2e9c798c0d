package wg

import (
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/errdefs"
)

// fake is a backend and router in memory. Its dump is sorted text: the key, each
// peer with a session number (kept while the peer is not removed, as WireGuard keeps
// a session when a peer's endpoint or AllowedIPs change), and the routes.
type fake struct {
	priv      Key
	port      int
	peers     map[Key]Peer
	sessions  map[Key]int
	next      int
	routes    map[netip.Prefix]bool
	ops       []string // what was asked, in order
	failApply bool
	failRoute netip.Prefix
}

func newFake() *fake {
	return &fake{peers: map[Key]Peer{}, sessions: map[Key]int{}, routes: map[netip.Prefix]bool{}}
}

func short(k Key) string { return k.String()[:4] }

func (f *fake) apply(c change) error {
	if f.failApply {
		return errors.New("injected apply failure")
	}
	if c.privateKey != nil {
		f.priv = *c.privateKey
		f.ops = append(f.ops, "key "+short(c.privateKey.Public()))
	}
	if c.listenPort != 0 {
		f.port = c.listenPort
	}
	for _, k := range c.remove {
		delete(f.peers, k)
		delete(f.sessions, k)
		f.ops = append(f.ops, "remove "+short(k))
	}
	for _, p := range c.set {
		if _, ok := f.sessions[p.PublicKey]; !ok {
			f.next++
			f.sessions[p.PublicKey] = f.next
		}
		f.peers[p.PublicKey] = p
		f.ops = append(f.ops, "set "+short(p.PublicKey))
	}
	return nil
}

func (f *fake) status() ([]PeerStatus, error) {
	var out []PeerStatus
	for _, p := range f.peers {
		out = append(out, PeerStatus{Peer: p})
	}
	return sortStatus(out), nil
}

func (f *fake) close() error { f.ops = append(f.ops, "close"); return nil }

func (f *fake) routeAdd(p netip.Prefix) error {
	if p == f.failRoute {
		return errors.New("injected route failure")
	}
	f.routes[p] = true
	f.ops = append(f.ops, "route add "+p.String())
	return nil
}

func (f *fake) routeDel(p netip.Prefix) error {
	delete(f.routes, p)
	f.ops = append(f.ops, "route del "+p.String())
	return nil
}

func (f *fake) dump() string {
	lines := []string{fmt.Sprintf("device key %s port %d", short(f.priv.Public()), f.port)}
	for k, p := range f.peers {
		lines = append(lines, fmt.Sprintf("peer %s endpoint %s allowed %v keepalive %v session %d", short(k), p.Endpoint, p.AllowedIPs, p.Keepalive, f.sessions[k]))
	}
	for r := range f.routes {
		lines = append(lines, "route "+r.String())
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n")
}

// takeOps returns the operations since the last call.
func (f *fake) takeOps() []string {
	ops := f.ops
	f.ops = nil
	return ops
}

func fakeTunnel(t *testing.T) (*Tunnel, *fake) {
	f := newFake()
	tun := newTunnel("pierwg0", slog.New(slog.DiscardHandler), testKey(9))
	tun.be, tun.rt = f, f
	priv := testKey(9)
	if err := f.apply(change{privateKey: &priv, listenPort: DefaultListenPort}); err != nil {
		t.Fatal(err)
	}
	f.takeOps()
	return tun, f
}

// TestSetPeersFake walks a tunnel through peer changes and failures against the fake:
// only changed peers are applied, routes are removed before their peer and added
// after it, and a failed step is finished by the next SetPeers.
func TestSetPeersFake(t *testing.T) {
	tun, f := fakeTunnel(t)
	ctx := t.Context()
	b, c := testPeer(2, "192.0.2.12:51820", "192.0.2.12/32"), testPeer(3, "192.0.2.13:51820", "192.0.2.13/32")
	c2 := testPeer(3, "192.0.2.23:51820", "192.0.2.13/32", "198.51.100.0/24")
	c2.Keepalive = 25 * time.Second
	d := testPeer(4, "192.0.2.14:51820", "192.0.2.14/32")
	steps := []struct {
		name    string
		peers   []Peer
		setup   func()
		wantErr bool
		ops     []string
		dump    string
	}{
		{name: "add two", peers: []Peer{b, c},
			ops: []string{"set AgIC", "set AwMD", "route add 192.0.2.12/32", "route add 192.0.2.13/32"},
			dump: `device key V9tL port 51820
peer AgIC endpoint 192.0.2.12:51820 allowed [192.0.2.12/32] keepalive 0s session 1
peer AwMD endpoint 192.0.2.13:51820 allowed [192.0.2.13/32] keepalive 0s session 2
route 192.0.2.12/32
route 192.0.2.13/32`},
		{name: "same again", peers: []Peer{c, b}},
		{name: "change one", peers: []Peer{b, c2},
			ops: []string{"set AwMD", "route add 198.51.100.0/24"},
			dump: `device key V9tL port 51820
peer AgIC endpoint 192.0.2.12:51820 allowed [192.0.2.12/32] keepalive 0s session 1
peer AwMD endpoint 192.0.2.23:51820 allowed [192.0.2.13/32 198.51.100.0/24] keepalive 25s session 2
route 192.0.2.12/32
route 192.0.2.13/32
route 198.51.100.0/24`},
		{name: "apply fails", peers: []Peer{b, d}, setup: func() { f.failApply = true }, wantErr: true,
			ops: []string{"route del 192.0.2.13/32", "route del 198.51.100.0/24"},
			dump: `device key V9tL port 51820
peer AgIC endpoint 192.0.2.12:51820 allowed [192.0.2.12/32] keepalive 0s session 1
peer AwMD endpoint 192.0.2.23:51820 allowed [192.0.2.13/32 198.51.100.0/24] keepalive 25s session 2
route 192.0.2.12/32`},
		{name: "route fails", peers: []Peer{b, d}, setup: func() { f.failApply, f.failRoute = false, d.AllowedIPs[0] }, wantErr: true,
			ops: []string{"remove AwMD", "set BAQE"},
			dump: `device key V9tL port 51820
peer AgIC endpoint 192.0.2.12:51820 allowed [192.0.2.12/32] keepalive 0s session 1
peer BAQE endpoint 192.0.2.14:51820 allowed [192.0.2.14/32] keepalive 0s session 3
route 192.0.2.12/32`},
		{name: "retried", peers: []Peer{b, d}, setup: func() { f.failRoute = netip.Prefix{} },
			ops: []string{"route add 192.0.2.14/32"},
			dump: `device key V9tL port 51820
peer AgIC endpoint 192.0.2.12:51820 allowed [192.0.2.12/32] keepalive 0s session 1
peer BAQE endpoint 192.0.2.14:51820 allowed [192.0.2.14/32] keepalive 0s session 3
route 192.0.2.12/32
route 192.0.2.14/32`},
	}
	for _, s := range steps {
		if s.setup != nil {
			s.setup()
		}
		before := f.dump()
		err := tun.SetPeers(ctx, s.peers)
		if (err != nil) != s.wantErr {
			t.Fatalf("%s: error %v, want error %v", s.name, err, s.wantErr)
		}
		if s.dump == "" {
			s.dump = before
		}
		if diff := cmp.Diff(s.ops, f.takeOps()); diff != "" {
			t.Errorf("%s: operations (-want +got):\n%s", s.name, diff)
		}
		if diff := cmp.Diff(s.dump, f.dump()); diff != "" {
			t.Errorf("%s: state (-want +got):\n%s", s.name, diff)
		}
	}

	if err := tun.SetPrivateKey(ctx, testKey(7)); err != nil || tun.PublicKey() != testKey(7).Public() {
		t.Errorf("rotating: %v", err)
	}
	e := testPeer(5, "192.0.2.15:51820")
	e.PublicKey = testKey(5).Public()
	if err := tun.SetPeers(ctx, []Peer{b, e}); err != nil {
		t.Fatal(err)
	}
	if err := tun.SetPrivateKey(ctx, testKey(5)); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("taking a peer's key: %v, want an invalid-argument error", err)
	}
	if err := tun.SetPeers(ctx, []Peer{{PublicKey: testKey(7).Public(), Endpoint: e.Endpoint}}); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("a peer with the tunnel's own key: %v", err)
	}
	if err := tun.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tun.SetPeers(ctx, nil); !errdefs.Is(err, errdefs.KindUnavailable) {
		t.Errorf("SetPeers after Close: %v", err)
	}
	if err := tun.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
