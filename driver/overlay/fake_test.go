package overlay

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/options"
	"github.com/piernet/pier/errdefs"
)

// fakeKernel keeps devices and entries in memory and prints them like `ip`/`bridge`.
type fakeKernel struct {
	links map[string]string // name -> description
	owner map[string]string // name -> network ID
	peers map[string]string // vxlan/mac -> entry
	mtu   int

	mu      sync.Mutex            // guards the fields below (the probe goroutine reads them)
	answers map[netip.Addr]string // what dst answers: "icmp", "tcp", "icmp tcp"
	probes  []string              // the probes sent, "sandbox dst proto"
}

func newFakeKernel() *fakeKernel {
	return &fakeKernel{links: map[string]string{}, owner: map[string]string{}, peers: map[string]string{}, mtu: 1500, answers: map[netip.Addr]string{}}
}

func (k *fakeKernel) EnsureNetwork(ctx context.Context, d Devices) error {
	k.links[d.Bridge], k.owner[d.Bridge] = fmt.Sprintf("bridge mtu %d", d.MTU), d.NetworkID
	k.links[d.VXLAN], k.owner[d.VXLAN] = fmt.Sprintf("vxlan id %d local %s dstport %d nolearning proxy master %s mtu %d", d.VNI, d.Local, d.Port, d.Bridge, d.MTU), d.NetworkID
	if d.Encrypted {
		k.links[d.VXLAN] += " socket in the tunnel namespace"
	}
	return nil
}

func (k *fakeKernel) DeleteNetwork(ctx context.Context, d Devices) error {
	for _, n := range []string{d.Bridge, d.VXLAN} {
		delete(k.links, n)
		delete(k.owner, n)
	}
	for key := range k.peers {
		if strings.HasPrefix(key, d.VXLAN+" ") {
			delete(k.peers, key)
		}
	}
	return nil
}

func (k *fakeKernel) AddPort(ctx context.Context, p Port) error {
	if _, ok := k.links[p.Bridge]; !ok {
		return fmt.Errorf("no bridge %s", p.Bridge)
	}
	k.links[p.Name], k.owner[p.Name] = fmt.Sprintf("veth peer %s master %s mtu %d", p.IfName, p.Bridge, p.MTU), p.NetworkID
	return nil
}

func (k *fakeKernel) DeletePort(ctx context.Context, name string) error {
	delete(k.links, name)
	delete(k.owner, name)
	return nil
}

func (k *fakeKernel) PortAttached(ctx context.Context, name, bridge string) bool {
	return strings.Contains(k.links[name], "master "+bridge)
}

func (k *fakeKernel) SetPeer(ctx context.Context, vxlan string, p PeerEntry, add bool) error {
	if _, ok := k.links[vxlan]; !ok {
		return fmt.Errorf("no device %s", vxlan)
	}
	key := vxlan + " " + p.MAC.String()
	if add {
		k.peers[key] = fmt.Sprintf("dst %s %v", p.VTEP, p.Addrs)
	} else {
		delete(k.peers, key)
	}
	return nil
}

func (k *fakeKernel) SetBridgeAddr(ctx context.Context, bridge string, addr netip.Prefix, mac net.HardwareAddr, add bool) error {
	desc, ok := k.links[bridge]
	if !ok {
		return fmt.Errorf("no bridge %s", bridge)
	}
	desc, _, _ = strings.Cut(desc, " router ")
	if add {
		desc += fmt.Sprintf(" router %s %s", addr, mac)
	}
	k.links[bridge] = desc
	return nil
}

func (k *fakeKernel) Owned(ctx context.Context) ([]OwnedLink, error) {
	var out []OwnedLink
	for n, nid := range k.owner {
		out = append(out, OwnedLink{Name: n, NetworkID: nid})
	}
	return out, nil
}

func (k *fakeKernel) UnderlayMTU(ctx context.Context, addr netip.Addr) (int, error) {
	return k.mtu, nil
}

func (k *fakeKernel) UnderlayIface(ctx context.Context, addr netip.Addr) (string, error) {
	return "eth0", nil
}

func (k *fakeKernel) Reach(ctx context.Context, sandboxKey string, dst netip.Addr, tcp bool) error {
	proto := map[bool]string{false: "icmp", true: "tcp"}[tcp]
	k.mu.Lock()
	defer k.mu.Unlock()
	k.probes = append(k.probes, fmt.Sprintf("%s %s %s", sandboxKey, dst, proto))
	if slices.Contains(strings.Fields(k.answers[dst]), proto) {
		return nil
	}
	return fmt.Errorf("no %s answer from %s", proto, dst)
}

func (k *fakeKernel) dump() string {
	var lines []string
	for n, d := range k.links {
		lines = append(lines, n+": "+d)
	}
	for key, e := range k.peers {
		lines = append(lines, "fdb "+key+" "+e)
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}

func fakeDriver(t *testing.T) (*Driver, *fakeKernel, driver.NetworkConfig) {
	k := newFakeKernel()
	d := New(Options{Kernel: k, Advertise: netip.MustParseAddr("192.0.2.1")})
	nc := driver.NetworkConfig{ID: "net1", Name: "ov", VNIs: []uint32{4096}}
	if err := d.CreateNetwork(t.Context(), nc); err != nil {
		t.Fatal(err)
	}
	return d, k, nc
}

func TestLazyExtensionAndPeers(t *testing.T) {
	ctx := t.Context()
	d, k, nc := fakeDriver(t)
	peer := driver.Peer{NetworkID: nc.ID, EndpointID: "remote1", Node: netip.MustParseAddr("192.0.2.2"),
		Addr4: netip.MustParsePrefix("10.0.0.5/24"), MAC: net.HardwareAddr{2, 0x42, 10, 0, 0, 5}}
	if err := d.AddPeer(ctx, peer); err != nil {
		t.Fatal(err)
	}
	if got := k.dump(); got != "" {
		t.Fatalf("devices before any local join:\n%s", got)
	}
	if _, err := d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: nc.ID, EndpointID: "local1aaaaaaaa", Addr4: netip.MustParsePrefix("10.0.0.2/24")}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Join(ctx, driver.JoinRequest{NetworkID: nc.ID, EndpointID: "local1aaaaaaaa", IfName: "eth0"}); err != nil {
		t.Fatal(err)
	}
	want := `fdb ovvx4096 02:42:0a:00:00:05 dst 192.0.2.2 [10.0.0.5]
ovbr4096: bridge mtu 1450
ovhlocal1aaaaa: veth peer eth0 master ovbr4096 mtu 1450
ovvx4096: vxlan id 4096 local 192.0.2.1 dstport 4789 nolearning proxy master ovbr4096 mtu 1450`
	if got := k.dump(); got != want {
		t.Fatalf("after join:\n%s\nwant:\n%s", got, want)
	}
	// A peer that moved host is re-programmed; removing it twice is fine.
	peer.Node = netip.MustParseAddr("192.0.2.3")
	if err := d.AddPeer(ctx, peer); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(k.dump(), "dst 192.0.2.3") {
		t.Fatalf("moved peer:\n%s", k.dump())
	}
	for range 2 {
		if err := d.RemovePeer(ctx, peer); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Contains(k.dump(), "fdb") {
		t.Fatalf("removed peer still programmed:\n%s", k.dump())
	}
	if err := d.Leave(ctx, nc.ID, "local1aaaaaaaa"); err != nil {
		t.Fatal(err)
	}
	if got := k.dump(); got != "" {
		t.Fatalf("after the last leave:\n%s", got)
	}
}

func TestOptionsAndMTU(t *testing.T) {
	ctx := t.Context()
	d, k, _ := fakeDriver(t)
	for opts, kind := range map[string]errdefs.Kind{
		options.KeyMTU + "=abc":        errdefs.KindInvalidArgument,
		options.KeyMTU + "=1279":       errdefs.KindInvalidArgument,
		options.KeyMTU + "=0":          errdefs.KindUnknown, // accepted: derived from the underlay
		"some.other.key=x":             errdefs.KindUnknown, // ignored, as Docker does
		options.KeyIfacePrefix + "=a:": errdefs.KindInvalidArgument,
		optVXLANIDs + "=0":             errdefs.KindInvalidArgument,
		optVXLANIDs + "=1,x":           errdefs.KindInvalidArgument,
		optEncrypted + "=":             errdefs.KindUnknown, // Docker's -o encrypted
		optEncrypted + "=yes":          errdefs.KindUnknown,
		optEncrypted + "=maybe":        errdefs.KindInvalidArgument,
	} {
		key, val, _ := strings.Cut(opts, "=")
		if _, err := d.DecodeOptions(map[string]string{key: val}); !errdefs.Is(err, kind) {
			t.Errorf("%s: %v, want %v", opts, err, kind)
		}
	}
	if o, err := d.DecodeOptions(map[string]string{options.KeyIfacePrefix: "ov"}); err != nil || o.IfacePrefix != "ov" {
		t.Errorf("container_iface_prefix: %+v %v, want ov", o, err)
	}
	if want, n, err := d.VNIRequest(map[string]string{optVXLANIDs: "5000,5001"}, 1); err != nil || fmt.Sprint(want, n) != "[5000 5001] 2" {
		t.Errorf("vxlanid_list: %v %d %v", want, n, err)
	}
	nc := driver.NetworkConfig{ID: "big", Name: "big", VNIs: []uint32{7}, Options: map[string]string{options.KeyMTU: "1460"}}
	if err := d.CreateNetwork(ctx, nc); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: "big", EndpointID: "ep"}); err != nil {
		t.Fatal(err)
	}
	_, err := d.Join(ctx, driver.JoinRequest{NetworkID: "big", EndpointID: "ep", IfName: "eth0"})
	if !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), "1450") {
		t.Fatalf("MTU above the underlay's limit: %v", err)
	}
	if got := k.dump(); got != "" {
		t.Fatalf("failed join left:\n%s", got)
	}
}

// An encrypted network's VXLAN device is made from the tunnel namespace, and its MTU
// leaves room for WireGuard too: 1500 - 50 - 60.
func TestEncryptedNetworkDevicesAndMTU(t *testing.T) {
	ctx := t.Context()
	d, k, _ := fakeDriver(t)
	nc := driver.NetworkConfig{ID: "sec", Name: "sec", VNIs: []uint32{8}, Options: map[string]string{optEncrypted: ""}}
	if err := d.CreateNetwork(ctx, nc); err != nil {
		t.Fatal(err)
	}
	if _, err := d.CreateEndpoint(ctx, driver.EndpointConfig{NetworkID: "sec", EndpointID: "ep"}); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Join(ctx, driver.JoinRequest{NetworkID: "sec", EndpointID: "ep", IfName: "eth0", SandboxKey: "/sb"}); err != nil {
		t.Fatal(err)
	}
	if got := k.links["ovvx8"]; !strings.Contains(got, "mtu 1390 socket in the tunnel namespace") {
		t.Fatalf("encrypted VXLAN device: %q", got)
	}
}

func TestCleanupRemovesLeftovers(t *testing.T) {
	ctx := t.Context()
	d, k, nc := fakeDriver(t)
	_ = k.EnsureNetwork(ctx, Devices{NetworkID: "gone", Bridge: "ovbr9", VXLAN: "ovvx9", VNI: 9})
	_ = k.EnsureNetwork(ctx, Devices{NetworkID: nc.ID, Bridge: "ovbr4096", VXLAN: "ovvx4096", VNI: 4096})
	_ = k.AddPort(ctx, Port{Name: "ovhstale000000", Bridge: "ovbr4096", NetworkID: nc.ID})
	if err := d.Cleanup(ctx, driver.Live{Networks: map[string]bool{nc.ID: true}, Endpoints: map[string]bool{}}); err != nil {
		t.Fatal(err)
	}
	if got := k.dump(); got != "" {
		t.Fatalf("after cleanup (no local endpoints anywhere):\n%s", got)
	}
}
