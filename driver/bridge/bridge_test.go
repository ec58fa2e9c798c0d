package bridge

import (
	"context"
	"errors"
	"github.com/piernet/pier/driver/options"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/driver/internal/drivertest"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/firewall"
	"github.com/piernet/pier/internal/golden"
	"github.com/piernet/pier/portmap"
)

const (
	nid  = "0123456789abcdef0123456789abcdef" // bridge br-0123456789ab
	eid1 = "fedcba9876543210fedcba9876543210" // host veth pvfedcba987654
	eid2 = "1111222233334444aaaabbbbccccdddd"
	sb1  = "/run/pier/netns/sb1"
	sb2  = "/run/pier/netns/sb2"
)

var errInjected = errors.New("injected failure")

// fakeFirewall records the bridges the driver hands it.
type fakeFirewall struct {
	mu      sync.Mutex // guards the fields below
	bridges map[string]firewall.Bridge
	fail    error
}

func (f *fakeFirewall) SetBridge(_ context.Context, b firewall.Bridge) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.fail != nil {
		return f.fail
	}
	f.bridges[b.Name] = b
	return nil
}

func (f *fakeFirewall) RemoveBridge(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.bridges, name)
	return nil
}

func (f *fakeFirewall) SetPorts(context.Context, string, []firewall.PortBinding) error { return nil }
func (f *fakeFirewall) RemovePorts(context.Context, string) error                      { return nil }

func (f *fakeFirewall) names() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for n := range f.bridges {
		out = append(out, n)
	}
	return out
}

// newDriver returns a driver on a fake kernel and firewall; start runs its reaper.
func newDriver(t *testing.T, k *fakeKernel, start bool) (*Driver, *fakeFirewall) {
	t.Helper()
	fw := &fakeFirewall{bridges: map[string]firewall.Bridge{}}
	d := New(k, fw, Publisher{}, slog.New(slog.DiscardHandler))
	if start {
		d.Start()
	}
	t.Cleanup(func() { _ = d.Close() })
	return d, fw
}

func netCfg(opts map[string]string, subnets ...string) driver.NetworkConfig {
	return drivertest.Network(nid, opts, subnets...)
}

// iccOff is a dual-stack network with ICC off and a smaller MTU.
var iccOff = netCfg(map[string]string{OptEnableICC: "false", options.KeyMTU: "1400"}, "172.18.0.0/16", "fd00:18::/64")

func mustCreate(t *testing.T, d *Driver, nc driver.NetworkConfig) {
	t.Helper()
	if err := d.CreateNetwork(t.Context(), nc); err != nil {
		t.Fatal(err)
	}
}

// join creates endpoint eid with address addr4 and joins it as eth0 of sandbox key,
// publishing a port if ports.
func join(t *testing.T, d *Driver, eid, key, addr4 string, ports bool) (driver.JoinResult, error) {
	t.Helper()
	a := netip.MustParsePrefix(addr4)
	if _, err := d.CreateEndpoint(t.Context(), driver.EndpointConfig{NetworkID: nid, EndpointID: eid, Addr4: a}); err != nil {
		t.Fatal(err)
	}
	req := driver.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: key, IfName: "eth0", Addr4: a}
	if ports {
		req.Ports = []portmap.Spec{{HostPort: 8080, ContainerPort: 80, Proto: "tcp"}}
	}
	return d.Join(t.Context(), req)
}

func mustJoin(t *testing.T, d *Driver, eid, key, addr4 string, ports bool) driver.JoinResult {
	t.Helper()
	res, err := join(t, d, eid, key, addr4, ports)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func mustLeave(t *testing.T, d *Driver, eid string) {
	t.Helper()
	if err := d.Leave(t.Context(), nid, eid); err != nil {
		t.Fatal(err)
	}
}

// devices is the dump without sysctls: global ones (ip_forward) are not undone.
func devices(k *fakeKernel) string {
	var out []string
	for _, l := range strings.SplitAfter(k.Dump(), "\n") {
		if !strings.HasPrefix(l, "sysctl ") {
			out = append(out, l)
		}
	}
	return strings.Join(out, "")
}

func check(t *testing.T, what, want, got string) {
	t.Helper()
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("%s (-want +got):\n%s", what, d)
	}
}

func TestBridgeCreateDeleteNetwork(t *testing.T) {
	k := newFakeKernel()
	d, fw := newDriver(t, k, false)
	mustCreate(t, d, iccOff)
	golden.Check(t, "network", k.Dump())
	check(t, "firewall bridges", "br-0123456789ab", strings.Join(fw.names(), ","))
	if fw.bridges["br-0123456789ab"].ICC {
		t.Error("firewall got ICC on")
	}

	// Restoring after a restart reuses the bridge and changes nothing.
	d2, _ := newDriver(t, k, false)
	before := k.Dump()
	if err := d2.RestoreNetwork(t.Context(), iccOff); err != nil {
		t.Fatal(err)
	}
	check(t, "after RestoreNetwork", before, k.Dump())

	for range 2 { // deletes are idempotent
		if err := d.DeleteNetwork(t.Context(), nid); err != nil {
			t.Fatal(err)
		}
		check(t, "after DeleteNetwork", "", devices(k))
		check(t, "firewall bridges", "", strings.Join(fw.names(), ","))
	}
}

func TestBridgeJoinLeave(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDriver(t, k, false)
	mustCreate(t, d, iccOff)
	created := k.Dump()
	res := mustJoin(t, d, eid1, sb1, "172.18.0.2/16", true)
	if want := netip.MustParseAddr("172.18.0.1"); res.Gateway4 != want || res.DisableGateway {
		t.Errorf("join result %+v, want gateway %s", res, want)
	}
	mustJoin(t, d, eid2, sb2, "172.18.0.3/16", false)
	golden.Check(t, "joined", k.Dump())

	for range 2 { // the second Leave finds the veth gone
		mustLeave(t, d, eid1)
		mustLeave(t, d, eid2)
	}
	check(t, "after Leave", created, k.Dump())
}

func TestBridgeICCOnPortsAreNotIsolated(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDriver(t, k, false)
	mustCreate(t, d, netCfg(nil, "172.18.0.0/16"))
	mustJoin(t, d, eid1, sb1, "172.18.0.2/16", false)
	l, _ := k.LinkByName("", HostVethName(eid1))
	if got := k.Dump(); strings.Contains(got, "isolated") || strings.Contains(got, "hairpin") || l.Attrs().MTU != 0 {
		t.Errorf("ICC on, no ports, default MTU:\n%s", got)
	}
}

func TestBridgeJoinReplacesLeftoverVeth(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDriver(t, k, false)
	mustCreate(t, d, iccOff)
	k.addHostLink("veth", HostVethName(eid1), "", 0) // an interrupted run's
	mustJoin(t, d, eid1, sb1, "172.18.0.2/16", false)
	if got := k.Dump(); strings.Count(got, "pvfedcba987654") != 2 || !strings.Contains(got, "pvfedcba987654 veth peer="+sb1+"/eth0 master=br-") {
		t.Errorf("want one veth pvfedcba987654 on the bridge:\n%s", got)
	}
}

func TestBridgeUserBridgeIsKept(t *testing.T) {
	k := newFakeKernel()
	k.addHostLink("bridge", "mybr", "", 0)
	k.addHostLink("dummy", "eth9", "", 0)
	d, _ := newDriver(t, k, false)
	err := d.CreateNetwork(t.Context(), netCfg(map[string]string{OptBridgeName: "eth9"}, "172.18.0.0/16"))
	if !errdefs.Is(err, errdefs.KindConflict) {
		t.Errorf("bridge on a non-bridge device: %v, want a conflict", err)
	}
	mustCreate(t, d, netCfg(map[string]string{OptBridgeName: "mybr"}, "172.18.0.0/16"))
	if err := d.DeleteNetwork(t.Context(), nid); err != nil {
		t.Fatal(err)
	}
	// The bridge stays (with the gateway address pier gave it); eth9 is untouched.
	check(t, "devices after delete", "host eth9 dummy\nhost mybr bridge up\nhost mybr inet 172.18.0.1/16\n", devices(k))
}

// TestBridgeFailedStepsLeaveNothing fails each kernel step of CreateNetwork and Join
// in turn: nothing half-made stays behind, and the retry succeeds.
func TestBridgeFailedStepsLeaveNothing(t *testing.T) {
	for _, step := range []string{"add bridge", "alias", "addr", "up", "sysctl", "firewall"} {
		t.Run("create/"+step, func(t *testing.T) {
			k := newFakeKernel()
			d, fw := newDriver(t, k, false)
			k.failOn(step, errInjected)
			if step == "firewall" {
				fw.fail = errInjected
			}
			if err := d.CreateNetwork(t.Context(), iccOff); !errors.Is(err, errInjected) {
				t.Fatalf("CreateNetwork: %v, want the injected failure", err)
			}
			check(t, "devices", "", devices(k))
			check(t, "firewall bridges", "", strings.Join(fw.names(), ","))
			if _, err := d.CreateEndpoint(t.Context(), driver.EndpointConfig{NetworkID: nid, EndpointID: eid1}); !errdefs.Is(err, errdefs.KindNotFound) {
				t.Errorf("the failed network was recorded: %v", err)
			}
			k.failOn(step, nil)
			fw.fail = nil
			mustCreate(t, d, iccOff)
		})
	}
	for _, step := range []string{"open sandbox", "add veth", "isolated", "hairpin", "addrgenmode", "up"} {
		t.Run("join/"+step, func(t *testing.T) {
			k := newFakeKernel()
			d, _ := newDriver(t, k, false)
			mustCreate(t, d, iccOff)
			created := k.Dump()
			k.failOn(step, errInjected)
			if _, err := join(t, d, eid1, sb1, "172.18.0.2/16", true); !errors.Is(err, errInjected) {
				t.Fatalf("Join: %v, want the injected failure", err)
			}
			check(t, "after the failed join", created, k.Dump())
			k.failOn(step, nil)
			mustJoin(t, d, eid1, sb1, "172.18.0.2/16", true)
		})
	}
}

// TestBridgeReaperTombstones: with the reaper running, Leave takes both ends down,
// renames them out of the way and puts the host end in the reap group, which one
// request deletes later.
func TestBridgeReaperTombstones(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDriver(t, k, true)
	mustCreate(t, d, iccOff)
	created := k.Dump()
	mustJoin(t, d, eid1, sb1, "172.18.0.2/16", true)
	mustJoin(t, d, eid2, sb2, "172.18.0.3/16", false)
	k.failOn("delete group", errInjected) // the tombstones stay until it works again
	mustLeave(t, d, eid1)
	mustLeave(t, d, eid2)
	golden.Check(t, "tombstones", k.Dump())

	// The names are free at once: the endpoint joins again beside its tombstone.
	mustJoin(t, d, eid1, sb1, "172.18.0.2/16", true)
	if got := k.Dump(); !strings.Contains(got, "host pvfedcba987654 veth peer="+sb1+"/eth0") {
		t.Errorf("rejoined endpoint missing:\n%s", got)
	}
	k.failOn("delete group", nil)
	mustLeave(t, d, eid1)
	if err := d.Close(); err != nil { // Close finishes the pending deletion
		t.Fatal(err)
	}
	check(t, "after Close", created, k.Dump())
}

func TestBridgeReaperDeletesBridge(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDriver(t, k, true)
	mustCreate(t, d, iccOff)
	k.failOn("delete group", errInjected)
	if err := d.DeleteNetwork(t.Context(), nid); err != nil {
		t.Fatal(err)
	}
	check(t, "bridge tombstone", "host pv-TOMBSTONE bridge mtu=1400 alias=pier:"+nid+" group=0x70696572\n"+
		"host pv-TOMBSTONE inet 172.18.0.1/16\nhost pv-TOMBSTONE inet fd00:18::1/64 nodad\n", devices(k))
	k.failOn("delete group", nil)
	mustCreate(t, d, iccOff) // a queued deletion for Close to finish
	if err := d.DeleteNetwork(t.Context(), nid); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	check(t, "after Close", "", devices(k))
}

// TestBridgeReaperFallsBackToDelete: when a tombstone step fails, Leave deletes the
// pair at once instead; when the sandbox went first (taking the pair), Leave succeeds.
func TestBridgeReaperFallsBackToDelete(t *testing.T) {
	for _, step := range []string{"down", "rename", "group", "sandbox down", "sandbox rename", "sandbox gone"} {
		t.Run(step, func(t *testing.T) {
			k := newFakeKernel()
			d, _ := newDriver(t, k, true)
			mustCreate(t, d, iccOff)
			created := k.Dump()
			mustJoin(t, d, eid1, sb1, "172.18.0.2/16", false)
			if step == "sandbox gone" {
				k.removeSandbox(sb1)
			} else {
				k.failOn(step, errInjected)
			}
			mustLeave(t, d, eid1)
			check(t, "after Leave", created, k.Dump())
		})
	}
}

func TestBridgeRestartRestoresEndpoints(t *testing.T) {
	k := newFakeKernel()
	d, _ := newDriver(t, k, false)
	mustCreate(t, d, iccOff)
	mustJoin(t, d, eid1, sb1, "172.18.0.2/16", false)
	mustJoin(t, d, eid2, sb2, "172.18.0.3/16", false)
	before := k.Dump()

	d2, _ := newDriver(t, k, false) // pierd restarted
	if err := d2.RestoreNetwork(t.Context(), iccOff); err != nil {
		t.Fatal(err)
	}
	if err := k.LinkDel("", &netlink.Device{LinkAttrs: netlink.LinkAttrs{Name: HostVethName(eid2)}}); err != nil { // lost while pierd was down
		t.Fatal(err)
	}
	for eid, want := range map[string]bool{eid1: true, eid2: false} {
		join := &driver.JoinRequest{NetworkID: nid, EndpointID: eid, SandboxKey: sb1, IfName: "eth0"}
		intact, err := d2.RestoreEndpoint(t.Context(), driver.EndpointConfig{NetworkID: nid, EndpointID: eid}, join)
		if err != nil || intact != want {
			t.Errorf("RestoreEndpoint(%s) = %v, %v; want %v", eid[:4], intact, err, want)
		}
	}
	var want []string // before, without the lost pair
	for _, l := range strings.SplitAfter(before, "\n") {
		if !strings.Contains(l, HostVethName(eid2)) {
			want = append(want, l)
		}
	}
	check(t, "after restore", strings.Join(want, ""), k.Dump())
}

// TestBridgeCleanupRemovesLeftovers: bridges and veths pier made for networks and
// endpoints that no longer exist go; everything else stays.
func TestBridgeCleanupRemovesLeftovers(t *testing.T) {
	k := newFakeKernel()
	k.addHostLink("bridge", "br-live", ownerAlias+nid, OwnerGroup)
	k.addHostLink("bridge", "br-dead", ownerAlias+"deadbeef", OwnerGroup)
	k.addHostLink("bridge", "br-unmarked", "", OwnerGroup) // its creator died before the alias
	k.addHostLink("bridge", "docker0", "", 0)
	k.addHostLink("veth", HostVethName(eid1), "", 0)
	k.addHostLink("veth", HostVethName(eid2), "", 0)
	k.addHostLink("veth", "pv-0123456789a", "", reapGroup) // a tombstone
	k.addHostLink("veth", "veth1234", "", 0)
	d, _ := newDriver(t, k, false)
	live := driver.Live{Networks: map[string]bool{nid: true}, Endpoints: map[string]bool{eid1: true}}
	if err := d.Cleanup(t.Context(), live); err != nil {
		t.Fatal(err)
	}
	golden.Check(t, "cleanup", k.Dump())
}
