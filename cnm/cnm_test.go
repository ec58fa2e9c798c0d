package cnm

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/errdefs"
)

func TestLookupByIDPrefixAndName(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	n, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "app"})
	r.must(t, err)
	for _, ref := range []string{n.ID, n.ID[:5], "app"} {
		got, err := r.c.Network(ctx, ref)
		if err != nil || got.ID != n.ID {
			t.Errorf("Network(%q) = %v, %v", ref, got.ID, err)
		}
	}
	if _, err := r.c.Network(ctx, "nope"); !errdefs.Is(err, errdefs.KindNotFound) {
		t.Errorf("unknown network: %v, want NotFound", err)
	}
	if _, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "app"}); !errdefs.Is(err, errdefs.KindConflict) ||
		!strings.Contains(err.Error(), "network with name app already exists") {
		t.Errorf("duplicate name: %v", err)
	}
	for _, name := range []string{"test 01", "réseau", "a/b", strings.Repeat("n", 129)} {
		if _, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: name}); err != nil {
			t.Errorf("network name %q (Docker accepts it): %v", name, err)
		}
	}
	if _, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: " \t"}); !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), "must not be blank") {
		t.Errorf("blank name: %v", err)
	}
	_, err = r.c.CreateSandbox(ctx, SandboxSpec{Name: strings.Repeat("s", 129)})
	if !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), "129 characters is too long (at most 128") {
		t.Errorf("129-character sandbox name: %v, want told it is too long", err)
	}
}

func TestNetworkWithEndpointsCannotBeDeleted(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "app"})
	r.must(t, err)
	_, err = r.c.CreateEndpoint(ctx, "app", EndpointSpec{Name: "ep1"})
	r.must(t, err)
	err = r.c.DeleteNetwork(ctx, "app")
	if !errdefs.Is(err, errdefs.KindForbidden) || !strings.Contains(err.Error(), "network app id") {
		t.Fatalf("delete in use: %v", err)
	}
	if _, err := r.c.CreateEndpoint(ctx, "app", EndpointSpec{Name: "ep1"}); err == nil {
		t.Fatal("duplicate endpoint name accepted")
	}
	r.must(t, r.c.DeleteEndpoint(ctx, "app", "ep1"))
	r.must(t, r.c.DeleteNetwork(ctx, "app"))
}

func TestEndpointJoinsOnlyOneSandbox(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "app"})
	r.must(t, err)
	_, err = r.c.CreateEndpoint(ctx, "app", EndpointSpec{Name: "ep"})
	r.must(t, err)
	for _, name := range []string{"s1", "s2"} {
		_, err := r.c.CreateSandbox(ctx, SandboxSpec{Name: name})
		r.must(t, err)
	}
	r.must(t, r.c.Join(ctx, "s1", "app", "ep"))
	if err := r.c.Join(ctx, "s2", "app", "ep"); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("second join: %v, want Conflict", err)
	}
}

func TestFailedJoinLeavesNothingBehind(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "app", IPAM: []PoolSpec{{Subnet: netip.MustParsePrefix("10.9.0.0/29")}}})
	r.must(t, err)
	_, err = r.c.CreateSandbox(ctx, SandboxSpec{Name: "s"})
	r.must(t, err)
	r.os.failOn = "ConfigureInterface"
	if _, err := r.c.Connect(ctx, "app", "s", EndpointSpec{Addr4: netip.MustParseAddr("10.9.0.2")}); err == nil {
		t.Fatal("connect succeeded despite failing interface setup")
	}
	eps, _ := r.c.Endpoints(ctx, "app")
	if len(eps) != 0 {
		t.Fatalf("endpoints left after failed connect: %v", eps)
	}
	if got := r.drv.calls[len(r.drv.calls)-2:]; !cmp.Equal(got, []string{"Leave", "DeleteEndpoint"}) {
		t.Errorf("driver calls end with %v, want Leave then DeleteEndpoint", got)
	}
	r.os.failOn = ""
	// The static address was released: asking for it again works.
	ep, err := r.c.Connect(ctx, "app", "s", EndpointSpec{Addr4: netip.MustParseAddr("10.9.0.2")})
	r.must(t, err)
	if ep.Addr4.String() != "10.9.0.2/29" {
		t.Fatalf("address = %s", ep.Addr4)
	}
}

func TestGatewayOrder(t *testing.T) {
	mk := func(name string, prio int, internal, gw bool) gatewayCandidate {
		ep := &Endpoint{EndpointFacts: EndpointFacts{ID: name}, Priority: prio}
		if gw {
			ep.Gateway4 = netip.MustParseAddr("10.0.0.1")
		}
		return gatewayCandidate{ep: ep, internal: internal, netName: name}
	}
	cs := []gatewayCandidate{
		mk("d-plain", 0, false, true), mk("a-internal", 0, true, true), mk("b-nogw", 0, false, false),
		mk("z-prio", 5, true, true), mk("c-plain", 0, false, true),
	}
	orderGateway(cs)
	var got []string
	for _, c := range cs {
		got = append(got, c.ep.ID)
	}
	want := []string{"z-prio", "c-plain", "d-plain", "b-nogw", "a-internal"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("gateway order (-want +got):\n%s", diff)
	}
}

func TestGatewayFollowsLeaveAndExternalConnectivityMoves(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	for _, n := range []string{"a", "b", "c"} {
		_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: n, Internal: n == "a"})
		r.must(t, err)
	}
	sb, err := r.c.CreateSandbox(ctx, SandboxSpec{Name: "s"})
	r.must(t, err)
	var ids []string
	for _, n := range []string{"a", "c", "b"} {
		ep, err := r.c.Connect(ctx, n, "s", EndpointSpec{})
		r.must(t, err)
		ids = append(ids, ep.ID)
	}
	// a is internal, so b (network name order) provides the gateway on eth2.
	if got := r.os.routes[sb.Key].IfName; got != "eth2" {
		t.Fatalf("gateway interface = %q, want eth2 (network b)\n%s", got, r.os.dump())
	}
	r.drv.calls = nil
	r.must(t, r.c.Disconnect(ctx, "b", "s"))
	if got := r.os.routes[sb.Key].IfName; got != "eth1" {
		t.Fatalf("after b left: gateway = %q, want eth1 (network c)", got)
	}
	want := []string{"Revoke " + ids[2][:4], "Program " + ids[1][:4], "Leave", "DeleteEndpoint"}
	if diff := cmp.Diff(want, r.drv.calls); diff != "" {
		t.Errorf("driver calls (-want +got):\n%s", diff)
	}
}

func TestRestartRebuildsIPAMFromRecords(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "app", IPAM: []PoolSpec{{Subnet: netip.MustParsePrefix("10.7.0.0/30")}}})
	r.must(t, err)
	_, err = r.c.CreateEndpoint(ctx, "app", EndpointSpec{Name: "only"})
	r.must(t, err)
	c2, err := New(ctx, Config{ExecRoot: r.c.execRoot, Store: r.c.store, Drivers: r.c.drivers, IPAM: mustIPAM(t), OS: r.os, HostResolvConf: "/dev/null"})
	r.must(t, err)
	// A /30 has one address besides the gateway: the restored endpoint holds it.
	_, err = c2.CreateEndpoint(ctx, "app", EndpointSpec{Name: "second"})
	if !errdefs.Is(err, errdefs.KindUnavailable) || !strings.Contains(err.Error(), "app") {
		t.Fatalf("pool should be full after restore: %v", err)
	}
}

func TestPluginDstPrefixNamesTheInterface(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	r.drv.dstPrefix = "ens"
	_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "plug"})
	r.must(t, err)
	sb, err := r.c.CreateSandbox(ctx, SandboxSpec{Name: "s"})
	r.must(t, err)
	ep, err := r.c.Connect(ctx, "plug", "s", EndpointSpec{})
	r.must(t, err)
	if ep.IfName != "ens0" || !ep.Moved {
		t.Fatalf("endpoint ifname %q moved=%v, want ens0 moved in", ep.IfName, ep.Moved)
	}
	if _, ok := r.os.ns[sb.Key]["ens0"]; !ok {
		t.Fatalf("sandbox interfaces:\n%s", r.os.dump())
	}
}

func TestDeleteSandboxWithProcesses(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	sb, err := r.c.CreateSandbox(ctx, SandboxSpec{Name: "s"})
	r.must(t, err)
	r.os.procs[sb.Key] = 2
	if n, err := r.c.Processes(ctx, sb); n != 2 || err != nil {
		t.Errorf("Processes = %d, %v; want 2", n, err)
	}
	err = r.c.DeleteSandbox(ctx, "s", false)
	if !errdefs.Is(err, errdefs.KindConflict) || !strings.Contains(err.Error(), "sandbox s has 2 process(es) running in it") {
		t.Fatalf("delete without force: %v, want Conflict naming the processes", err)
	}
	if _, err := r.c.Sandbox(ctx, "s"); err != nil || !r.os.Exists(sb.Key) {
		t.Fatalf("refused delete removed the sandbox: %v", err)
	}
	r.os.failOn = "StopProcesses"
	if err := r.c.DeleteSandbox(ctx, "s", true); err == nil || !r.os.Exists(sb.Key) {
		t.Fatalf("forced delete with failing process stop: %v; the namespace must stay", err)
	}
	r.os.failOn = ""
	r.os.procs[sb.Key] = 2
	r.must(t, r.c.DeleteSandbox(ctx, "s", true))
	if r.os.procs[sb.Key] != 0 || r.os.Exists(sb.Key) {
		t.Errorf("after forced delete: %d processes, namespace exists %v", r.os.procs[sb.Key], r.os.Exists(sb.Key))
	}
}

// The controller's rules come from capabilities, not driver names: a singleton
// driver gets no user network, a no-interface network is combined with no other.
func TestCapabilitiesDecideTheRules(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	solo := newFakeDriver("solo", r.os, nil)
	solo.capa = driver.Capability{Singleton: true, NoInterface: true}
	r.must(t, r.c.drivers.Register(solo))
	if _, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "mine", Driver: "solo"}); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Fatalf("user network of a singleton driver: %v, want Forbidden", err)
	}
	n, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "quiet", Driver: "solo", Predefined: true})
	r.must(t, err)
	if n.IPAMDriver != IPAMNull {
		t.Errorf("no-interface network IPAM = %q, want null", n.IPAMDriver)
	}
	_, err = r.c.CreateNetwork(ctx, NetworkSpec{Name: "app"})
	r.must(t, err)
	_, err = r.c.CreateSandbox(ctx, SandboxSpec{Name: "s"})
	r.must(t, err)
	_, err = r.c.Connect(ctx, "quiet", "s", EndpointSpec{})
	r.must(t, err)
	if _, err := r.c.Connect(ctx, "app", "s", EndpointSpec{}); !errdefs.Is(err, errdefs.KindInvalidArgument) ||
		!strings.Contains(err.Error(), "network quiet cannot be combined") {
		t.Fatalf("second network after a no-interface one: %v", err)
	}
	if r.c.UsesHostNamespace(n) {
		t.Error("UsesHostNamespace without the capability")
	}
}
