package stack

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/plugin"
)

// pluginEnv is a test host with a plugin directory and the test plugins (written with
// Docker's plugin SDK, in driver/remote/testdata/plugins) built and ready to start.
type pluginEnv struct {
	*env
	dir, bin string
}

func newPluginEnv(t *testing.T, timeout time.Duration) *pluginEnv {
	t.Helper()
	e := newEnv(t)
	p := &pluginEnv{env: e, dir: t.TempDir(), bin: t.TempDir()}
	build := exec.Command("go", "build", "-o", p.bin+"/", "./vethnet", "./poolipam")
	build.Dir = filepath.Join("..", "driver", "remote", "testdata", "plugins")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building the test plugins: %v\n%s", err, out)
	}
	if err := e.s.Close(); err != nil {
		t.Fatal(err)
	}
	e.opts.PluginDirs = plugin.Dirs{Sockets: []string{p.dir}}
	e.opts.PluginTimeout = timeout
	e.open()
	return p
}

// start runs test plugin prog as name in the host namespace and waits for its socket.
func (p *pluginEnv) start(name, prog string, args ...string) {
	p.t.Helper()
	sock := filepath.Join(p.dir, name+".sock")
	cmd := exec.Command("nsenter", append([]string{"--net=" + p.hostPath, "--", filepath.Join(p.bin, prog), "-sock", sock}, args...)...)
	cmd.Stdout, cmd.Stderr = nstest.Writer(p.t), nstest.Writer(p.t)
	if err := cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	p.t.Cleanup(func() { cmd.Process.Kill(); <-done })
	deadline := time.Now().Add(10 * time.Second)
	for {
		if fi, err := os.Stat(sock); err == nil && fi.Mode()&os.ModeSocket != 0 {
			return
		}
		select {
		case <-done:
			p.t.Fatalf("plugin %s exited at start", name)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("plugin %s did not listen", name)
		}
	}
}

// state asks a test plugin for its state (networks and endpoints, or pools).
func (p *pluginEnv) state(name string) map[string][]string {
	p.t.Helper()
	sock := filepath.Join(p.dir, name+".sock")
	c := http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}}
	res, err := c.Post("http://plugin/Test.State", "application/json", nil)
	if err != nil {
		p.t.Fatal(err)
	}
	defer res.Body.Close()
	var out map[string][]string
	if err := json.NewDecoder(res.Body).Decode(&out); err != nil {
		p.t.Fatal(err)
	}
	return out
}

func TestRemoteDriverAndIPAM(t *testing.T) {
	t.Parallel()
	p := newPluginEnv(t, 5*time.Second)
	p.start("vethnet", "vethnet")
	p.start("poolipam", "poolipam")
	c := p.s.Controller
	n := p.network(cnm.NetworkSpec{Name: "remote", Driver: "vethnet", IPAMDriver: "poolipam"})
	if got := n.IPv4[0]; got.PoolID != "piertest/198.51.100.0/24" || got.Gateway.String() != "198.51.100.1/24" {
		t.Errorf("pool = %+v, want the plugin's pool with the gateway it chose", got)
	}
	a, b := p.sandbox("a", "remote"), p.sandbox("b", "remote")
	addrB := p.addr("b", "remote", false)
	if got := p.addr("a", "remote", false).String() + " " + addrB.String(); got != "198.51.100.10 198.51.100.11" {
		t.Errorf("addresses = %s, want the plugin's", got)
	}
	if err := nstest.Ping(a.Key, addrB); err != nil {
		t.Fatalf("a → b: %v", err)
	}
	listen(t, b.Key)
	if err := dialEcho(a.Key, addrB, 2*time.Second); err != nil {
		t.Fatalf("TCP a → b: %v", err)
	}
	checkJoinedInterface(t, p, a.Key)

	for _, sb := range []string{"a", "b"} {
		if err := c.DeleteSandbox(t.Context(), sb, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.DeleteNetwork(t.Context(), "remote"); err != nil {
		t.Fatal(err)
	}
	want := map[string][]string{"networks": {}, "endpoints": {}, "returned": {},
		"spaces": {"piertest-local 198.51.100.0/24"}} // the IPAM's own name of its local space
	if d := cmp.Diff(want, p.state("vethnet")); d != "" {
		t.Errorf("network plugin state after deleting everything (-want +got):\n%s", d)
	}
	if d := cmp.Diff(map[string][]string{}, p.state("poolipam")); d != "" {
		t.Errorf("IPAM plugin state after deleting everything (-want +got):\n%s", d)
	}
	if got := links(t, p.hostPath); len(got) != 1 {
		t.Errorf("host links = %v, want only lo", got)
	}
}

// TestRemoteDriverAssignsAddresses: with the null IPAM driver the daemon sends no
// address, and a plugin may fill it in at CreateEndpoint (Docker's fill-only-empty
// rule). pier records and configures it, keeps it across a restart and never hands it
// to an IPAM.
func TestRemoteDriverAssignsAddresses(t *testing.T) {
	t.Parallel()
	p := newPluginEnv(t, 5*time.Second)
	p.start("vethnet", "vethnet", "-assign", "192.0.2.0/24")
	c := p.s.Controller
	n := p.network(cnm.NetworkSpec{Name: "remote", Driver: "vethnet", IPAMDriver: "null"})
	if len(n.IPv4) != 0 {
		t.Fatalf("null IPAM network has pools: %+v", n.IPv4)
	}
	a, b := p.sandbox("a", "remote"), p.sandbox("b", "remote")
	for _, sb := range []string{"a", "b"} {
		ep, err := c.Endpoint(t.Context(), "remote", sb)
		if err != nil || !ep.DriverAddr4 || !netip.MustParsePrefix("192.0.2.0/24").Contains(ep.Addr4.Addr()) || ep.Addr4.Bits() != 24 {
			t.Fatalf("endpoint of %s = %+v, %v; want the plugin's 192.0.2.x/24", sb, ep, err)
		}
	}
	addrB := p.addr("b", "remote", false)
	if got := addrsOf(t, b.Key, "eth0"); len(got) != 1 || got[0] != addrB.String()+"/24" {
		t.Errorf("eth0 of b has %v, want %s/24", got, addrB)
	}
	listen(t, b.Key)
	if err := dialEcho(a.Key, addrB, 2*time.Second); err != nil {
		t.Fatalf("TCP a → b over plugin-assigned addresses: %v", err)
	}
	p.reopen()
	if got := p.addr("b", "remote", false); got != addrB {
		t.Errorf("after a restart b has %s, want %s", got, addrB)
	}
	if err := dialEcho(a.Key, addrB, 2*time.Second); err != nil {
		t.Fatalf("TCP a → b after a restart: %v", err)
	}
	p.deleteAll()
}

// TestRemoteInterfaceHandedBack: at leave, a moved-in interface goes back to the host
// namespace under the name the plugin gave it (Docker's behaviour), so a plugin that
// keeps its interfaces until DeleteEndpoint finds them there. Both a disconnect and a
// forced sandbox delete hand them back.
func TestRemoteInterfaceHandedBack(t *testing.T) {
	t.Parallel()
	p := newPluginEnv(t, 5*time.Second)
	p.start("vethnet", "vethnet", "-keep-on-leave")
	p.start("poolipam", "poolipam")
	c := p.s.Controller
	p.network(cnm.NetworkSpec{Name: "remote", Driver: "vethnet", IPAMDriver: "poolipam"})
	a, _ := p.sandbox("a", "remote"), p.sandbox("b", "remote")
	epA, err := c.Endpoint(t.Context(), "remote", "a")
	if err != nil {
		t.Fatal(err)
	}
	epB, err := c.Endpoint(t.Context(), "remote", "b")
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Disconnect(t.Context(), "remote", "a"); err != nil {
		t.Fatal(err)
	}
	if got := links(t, a.Key); len(got) != 1 {
		t.Errorf("sandbox a after disconnect has %v, want only lo", got)
	}
	if err := c.DeleteSandbox(t.Context(), "b", true); err != nil {
		t.Fatal(err)
	}
	want := []string{epA.ID, epB.ID}
	if got := p.state("vethnet")["returned"]; !cmp.Equal(got, want) {
		t.Errorf("endpoints whose interface the plugin found back on the host = %v, want %v", got, want)
	}
	if err := c.DeleteNetwork(t.Context(), "remote"); err != nil {
		t.Fatal(err)
	}
	if got := links(t, p.hostPath); len(got) != 1 {
		t.Errorf("host links = %v, want only lo", got)
	}
}

// TestRemoteIPAMRequiresMAC: an IPAM plugin declaring RequiresMACAddress gets the
// endpoint's MAC with every address request; pier picks a random one when the user
// gave none (as Docker), and the sandbox's interface carries that MAC even though the
// network plugin made the interface with another.
func TestRemoteIPAMRequiresMAC(t *testing.T) {
	t.Parallel()
	p := newPluginEnv(t, 5*time.Second)
	p.start("vethnet", "vethnet")
	p.start("poolipam", "poolipam", "-requires-mac")
	c := p.s.Controller
	p.network(cnm.NetworkSpec{Name: "remote", Driver: "vethnet", IPAMDriver: "poolipam"})
	a := p.sandbox("a", "remote")
	ep, err := c.Endpoint(t.Context(), "remote", "a")
	if err != nil {
		t.Fatal(err)
	}
	mac, err := net.ParseMAC(ep.MAC)
	if err != nil || mac[0]&0x03 != 0x02 {
		t.Fatalf("endpoint MAC %q, %v: want a locally administered unicast MAC", ep.MAC, err)
	}
	want := []string{ep.Addr4.Addr().String() + " " + ep.MAC}
	if got := p.state("poolipam")["macs"]; !cmp.Equal(got, want) {
		t.Errorf("MACs the IPAM plugin received = %v, want %v", got, want)
	}
	ns, err := netns.Open(a.Key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	l, err := ns.NL.LinkByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Attrs().HardwareAddr.String(); got != ep.MAC {
		t.Errorf("eth0 MAC = %s, want the endpoint's %s", got, ep.MAC)
	}
	p.deleteAll()
}

// TestRemoteGlobalScopeNeedsCluster: a driver declaring global data scope would get a
// "global" network that exists on this host only; without cluster mode it is refused
// with a clear error, and the plugin is never asked to create anything.
func TestRemoteGlobalScopeNeedsCluster(t *testing.T) {
	t.Parallel()
	p := newPluginEnv(t, 5*time.Second)
	p.start("vethnet", "vethnet", "-scope", "global")
	_, err := p.s.Controller.CreateNetwork(t.Context(), cnm.NetworkSpec{Name: "remote", Driver: "vethnet"})
	if !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), "cluster mode") {
		t.Fatalf("global-scope plugin network without cluster mode: %v", err)
	}
	if got := p.state("vethnet")["spaces"]; len(got) != 0 {
		t.Errorf("the plugin was asked to create a network: %v", got)
	}
	if _, err := p.s.Controller.Network(t.Context(), "remote"); !errdefs.Is(err, errdefs.KindNotFound) {
		t.Errorf("refused network exists: %v", err)
	}
}

// addrsOf lists the global addresses of interface name in the namespace at key.
func addrsOf(t *testing.T, key, name string) []string {
	t.Helper()
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	l, err := ns.NL.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	as, err := netns.Dump(func() ([]netlink.Addr, error) { return ns.NL.AddrList(l, netlink.FAMILY_ALL) })
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, a := range as {
		if a.Scope == int(netlink.SCOPE_UNIVERSE) {
			out = append(out, a.IPNet.String())
		}
	}
	return out
}

// checkJoinedInterface checks what the plugin's Join reply asked for: its veth end
// moved in as eth0 with the MAC the plugin filled in, the gateway and a static route.
func checkJoinedInterface(t *testing.T, p *pluginEnv, key string) {
	t.Helper()
	ns, err := netns.Open(key)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	l, err := ns.NL.LinkByName("eth0")
	if err != nil {
		t.Fatalf("eth0 in the sandbox: %v", err)
	}
	ep, _ := p.s.Controller.Endpoint(t.Context(), "remote", "a")
	if mac := l.Attrs().HardwareAddr.String(); !strings.HasPrefix(mac, "02:99:") || ep.MAC != mac {
		t.Errorf("MAC = %s (record %s), want the one the plugin filled in", mac, ep.MAC)
	}
	if got := defaultRoutes(t, key, netlink.FAMILY_V4); len(got) != 1 || got[0] != "eth0 via 198.51.100.1" {
		t.Errorf("default route = %v", got)
	}
	dst := netns.PrefixToIPNet(netip.MustParsePrefix("203.0.113.0/24"))
	rs, err := netns.Dump(func() ([]netlink.Route, error) {
		return ns.NL.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Dst: dst}, netlink.RT_FILTER_DST)
	})
	if err != nil || len(rs) != 1 || rs[0].Gw.String() != "198.51.100.1" {
		t.Errorf("static route to 203.0.113.0/24 = %v, %v", rs, err)
	}
}

func TestMissingPluginFailsFast(t *testing.T) {
	p := newPluginEnv(t, time.Second)
	start := time.Now()
	_, err := p.s.Controller.CreateNetwork(t.Context(), cnm.NetworkSpec{Name: "x", Driver: "weave"})
	want := `plugin "weave" not found (looked in ` + p.dir + ")"
	if !errdefs.Is(err, errdefs.KindNotFound) || err.Error() != want {
		t.Errorf("err = %v\nwant    %s", err, want)
	}
	_, err = p.s.Controller.CreateNetwork(t.Context(), cnm.NetworkSpec{Name: "x", IPAMDriver: "infoblox"})
	if !errdefs.Is(err, errdefs.KindNotFound) || !strings.Contains(err.Error(), `plugin "infoblox" not found`) {
		t.Errorf("err = %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %s to fail", d)
	}
}

// TestMisbehavingPlugins: a plugin that hangs, answers garbage, breaks the protocol or
// dies mid-call fails the operation with a clear error, leaves no record, no interface
// and no allocation behind, and does not wedge the controller.
func TestMisbehavingPlugins(t *testing.T) {
	const timeout = 300 * time.Millisecond
	for _, tc := range []struct {
		name, fault string
		connect     bool // the fault hits Connect (else CreateNetwork)
		err         string
	}{
		{"hang in CreateNetwork", "NetworkDriver.CreateNetwork=sleep", false, `plugin "vethnet": NetworkDriver.CreateNetwork: no reply within 300ms`},
		{"dies in CreateNetwork", "NetworkDriver.CreateNetwork=exit", false, "plugin unreachable or died during the call"},
		{"garbage from Join", "NetworkDriver.Join=garbage", true, `NetworkDriver.Join: malformed reply: unexpected end of JSON input`},
		{"hang in Join", "NetworkDriver.Join=sleep", true, "NetworkDriver.Join: no reply within 300ms"},
		{"echoes the address", "NetworkDriver.CreateEndpoint=echo", true, "Address was already set to 198.51.100.10/24 and cannot be modified (reply: 198.51.100.10/24); rolled back with DeleteEndpoint"},
		{"IPAM garbage", "IpamDriver.RequestPool=garbage", false, `plugin "poolipam": IpamDriver.RequestPool: malformed reply`},
		{"IPAM dies", "IpamDriver.RequestAddress=exit", false, `plugin "poolipam": IpamDriver.RequestAddress: plugin unreachable or died during the call`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newPluginEnv(t, timeout)
			var netFault, ipamFault []string
			if strings.HasPrefix(tc.fault, "Ipam") {
				ipamFault = []string{"-fault", tc.fault, "-sleep", "5s"}
			} else {
				netFault = []string{"-fault", tc.fault, "-sleep", "5s"}
			}
			p.start("vethnet", "vethnet", netFault...)
			p.start("poolipam", "poolipam", ipamFault...)
			c := p.s.Controller
			start := time.Now()
			var err error
			if tc.connect {
				p.network(cnm.NetworkSpec{Name: "remote", Driver: "vethnet", IPAMDriver: "poolipam"})
				_, err = c.CreateSandbox(t.Context(), cnm.SandboxSpec{Name: "a"})
				if err == nil {
					_, err = c.Connect(t.Context(), "remote", "a", cnm.EndpointSpec{})
				}
			} else {
				_, err = c.CreateNetwork(t.Context(), cnm.NetworkSpec{Name: "remote", Driver: "vethnet", IPAMDriver: "poolipam"})
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("err = %v\nwant it to contain %q", err, tc.err)
			}
			t.Logf("%s after %s", err, time.Since(start).Round(time.Millisecond))
			if d := time.Since(start); d > 4*timeout+time.Second {
				t.Errorf("the failing operation took %s", d)
			}
			if tc.fault != "IpamDriver.RequestAddress=exit" {
				p.checkNoAllocations(tc.connect)
			}
			p.checkNothingLeft(tc.connect)
		})
	}
}

// checkNoAllocations checks the IPAM plugin holds nothing but the network's pool and
// gateway, if the network was made.
func (p *pluginEnv) checkNoAllocations(networkMade bool) {
	want := map[string][]string{}
	if networkMade {
		want["piertest/198.51.100.0/24"] = []string{"198.51.100.1"}
	}
	if d := cmp.Diff(want, p.state("poolipam")); d != "" {
		p.t.Errorf("IPAM plugin allocations (-want +got):\n%s", d)
	}
}

// checkNothingLeft checks the controller still works and nothing of the failed
// operation remains: records, interfaces, plugin allocations.
func (p *pluginEnv) checkNothingLeft(networkMade bool) {
	t := p.t.(*testing.T)
	c := p.s.Controller
	if _, err := c.CreateNetwork(t.Context(), cnm.NetworkSpec{Name: "after"}); err != nil {
		t.Errorf("controller wedged: %v", err)
	}
	var names []string
	for _, n := range c.Networks(t.Context()) {
		names = append(names, n.Name)
		if eps, _ := c.Endpoints(t.Context(), n.ID); len(eps) > 0 {
			t.Errorf("network %s has endpoints left: %+v", n.Name, eps)
		}
	}
	wantNets, wantLinks := "after", 2 // lo, the bridge of "after"
	if networkMade {
		wantNets, wantLinks = "after remote", 3 // and the plugin's bridge
	}
	if got := strings.Join(names, " "); got != wantNets {
		t.Errorf("networks = %s, want %s", got, wantNets)
	}
	if got := links(t, p.hostPath); len(got) != wantLinks {
		t.Errorf("host links = %v", got)
	}
	if sb, err := c.Sandbox(t.Context(), "a"); err == nil {
		if got := links(t, sb.Key); len(got) != 1 {
			t.Errorf("sandbox links = %v, want only lo", got)
		}
	}
	p.deleteAll()
}

// TestRemoteNetworkAfterRestart: after pier restarts, the plugins (which keep their own
// state and do not ask for RequiresRequestReplay, so they are not asked again) still
// serve the network: old and new sandboxes talk.
func TestRemoteNetworkAfterRestart(t *testing.T) {
	t.Parallel()
	p := newPluginEnv(t, 5*time.Second)
	p.start("vethnet", "vethnet")
	p.start("poolipam", "poolipam")
	p.network(cnm.NetworkSpec{Name: "remote", Driver: "vethnet", IPAMDriver: "poolipam"})
	a := p.sandbox("a", "remote")
	p.reopen()
	p.sandbox("b", "remote")
	if err := nstest.Ping(a.Key, p.addr("b", "remote", false)); err != nil {
		t.Fatalf("a → b after a restart: %v", err)
	}
	p.deleteAll()
	if d := cmp.Diff(map[string][]string{}, p.state("poolipam")); d != "" {
		t.Errorf("IPAM plugin state after deleting everything (-want +got):\n%s", d)
	}
}
