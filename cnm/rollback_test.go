package cnm

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/portmap"
	"github.com/piernet/pier/store"
)

// graph is everything a failed operation must leave as it found it: the fakes'
// kernel state, the records and the controller's in-memory object graph.
type graph struct {
	Kernel  string
	Stored  objects
	Memory  objects
	Indexed map[string][]string // "sandbox <id>" / "network <id>" -> endpoint IDs, from the indexes
}

type objects struct {
	Networks  []Network
	Endpoints []Endpoint
	Sandboxes []Sandbox
}

func (r *rig) graph(t *testing.T, drivers ...*fakeDriver) graph {
	t.Helper()
	ctx := t.Context()
	g := graph{Kernel: r.os.dump(), Indexed: map[string][]string{}}
	for _, d := range drivers {
		g.Kernel += "\n" + d.dump()
	}
	var err error
	if g.Stored.Networks, err = store.List[Network](ctx, r.c.store, kindNetwork); err != nil {
		t.Fatal(err)
	}
	if g.Stored.Endpoints, err = store.List[Endpoint](ctx, r.c.store, kindEndpoint); err != nil {
		t.Fatal(err)
	}
	if g.Stored.Sandboxes, err = store.List[Sandbox](ctx, r.c.store, kindSandbox); err != nil {
		t.Fatal(err)
	}
	g.Memory.Networks, g.Memory.Sandboxes = r.c.Networks(ctx), r.c.Sandboxes(ctx)
	r.c.mu.RLock()
	defer r.c.mu.RUnlock()
	for _, ep := range r.c.endpoints {
		g.Memory.Endpoints = append(g.Memory.Endpoints, *ep)
	}
	sort.Slice(g.Memory.Endpoints, func(i, j int) bool { return g.Memory.Endpoints[i].ID < g.Memory.Endpoints[j].ID })
	for key, m := range map[string]map[string]map[*Endpoint]struct{}{"sandbox": r.c.epIndex.bySandbox, "network": r.c.epIndex.byNetwork} {
		for id, eps := range m {
			for ep := range eps {
				g.Indexed[key+" "+id] = append(g.Indexed[key+" "+id], ep.ID)
			}
			slices.Sort(g.Indexed[key+" "+id])
		}
	}
	return g
}

var graphOpts = cmp.Options{
	cmp.Comparer(func(a, b netip.Addr) bool { return a == b }),
	cmp.Comparer(func(a, b netip.Prefix) bool { return a == b }),
	// An emptied index set and a missing one are the same graph.
	cmp.Transformer("dropEmpty", func(m map[string][]string) map[string][]string {
		out := map[string][]string{}
		for k, v := range m {
			if len(v) > 0 {
				out[k] = v
			}
		}
		return out
	}),
}

// failEachStep runs op with its 1st, 2nd, … step failing until it succeeds with no
// failure, and checks after each failure that the graph is the one from before. It
// returns the steps that were made to fail.
func failEachStep(t *testing.T, r *rig, op func(ctx context.Context) error, drivers ...*fakeDriver) []string {
	t.Helper()
	before := r.graph(t, drivers...)
	var failed []string
	for at := 1; ; at++ {
		r.faults.arm(at)
		ctx := faultCtx{t.Context(), r.faults}
		err := op(ctx)
		r.faults.mu.Lock()
		step, steps := r.faults.failed, slices.Clone(r.faults.steps)
		r.faults.mu.Unlock()
		r.faults.arm(0)
		if step == "" {
			if err != nil {
				t.Fatalf("operation failed without an injected failure: %v", err)
			}
			t.Logf("failed steps: %v", failed)
			return failed
		}
		if err == nil {
			t.Fatalf("step %d (%s) failed but the operation succeeded; steps: %v", at, step, steps)
		}
		if !strings.Contains(err.Error(), "injected "+step+" failure") {
			t.Errorf("step %d (%s): error %q does not carry the cause", at, step, err)
		}
		failed = append(failed, step)
		if diff := cmp.Diff(before, r.graph(t, drivers...), graphOpts); diff != "" {
			t.Fatalf("after step %d (%s) failed (steps run: %v), the state changed (-before +after):\n%s", at, step, steps, diff)
		}
	}
}

// gatewayRig is sandbox s (publishing 80/tcp) joined to network a, which provides
// its gateway; network b's endpoints ask for a higher gateway priority.
func gatewayRig(t *testing.T) *rig {
	t.Helper()
	r := newRig(t)
	ctx := t.Context()
	for i, n := range []string{"a", "b"} {
		_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: n, IPAM: []PoolSpec{{Subnet: netip.MustParsePrefix(fmt.Sprintf("10.%d.0.0/24", 40+i))}}})
		r.must(t, err)
	}
	_, err := r.c.CreateSandbox(ctx, SandboxSpec{Name: "s", Ports: []portmap.Spec{{ContainerPort: 80, Proto: portmap.TCP}}})
	r.must(t, err)
	_, err = r.c.Connect(ctx, "a", "s", EndpointSpec{})
	r.must(t, err)
	return r
}

func wantSteps(t *testing.T, got []string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !slices.Contains(got, w) {
			t.Errorf("step %s was never made to fail (failed: %v)", w, got)
		}
	}
}

// A join that moves the gateway (route, revoke a, program b) and fails at any step
// leaves kernel, records and memory as they were; the retry then succeeds and b is
// the gateway with its published port.
func TestFailedJoinRollsBackEveryStep(t *testing.T) {
	r := gatewayRig(t)
	ctx := t.Context()
	_, err := r.c.CreateEndpoint(ctx, "b", EndpointSpec{Name: "bep", Priority: 10})
	r.must(t, err)
	failed := failEachStep(t, r, func(ctx context.Context) error { return r.c.Join(ctx, "s", "b", "bep") }, r.drv)
	wantSteps(t, failed, "Join", "ConfigureInterface", "SetDefaultRoute", "Revoke", "Program", "store")
	checkGateway(t, r, "b", "eth1")
}

// The same for Connect, which also creates the endpoint: its address is released on
// every failure (the final Connect asks for it again).
func TestFailedConnectRollsBackEveryStep(t *testing.T) {
	r := gatewayRig(t)
	failed := failEachStep(t, r, func(ctx context.Context) error {
		_, err := r.c.Connect(ctx, "b", "s", EndpointSpec{Priority: 10, Addr4: netip.MustParseAddr("10.41.0.9")})
		return err
	}, r.drv)
	wantSteps(t, failed, "CreateEndpoint", "Join", "ConfigureInterface", "SetDefaultRoute", "Revoke", "Program", "store")
	checkGateway(t, r, "b", "eth1")
}

// A plugin-style driver hands an interface over to be moved in (SrcName): the
// rollback gives it back.
func TestFailedJoinOfMovedInterfaceRollsBack(t *testing.T) {
	r := gatewayRig(t)
	ctx := t.Context()
	plug := newFakeDriver("plug", r.os, r.faults)
	plug.dstPrefix = "ens"
	r.must(t, r.c.drivers.Register(plug))
	_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "p", Driver: "plug", IPAM: []PoolSpec{{Subnet: netip.MustParsePrefix("10.49.0.0/24")}}})
	r.must(t, err)
	_, err = r.c.CreateEndpoint(ctx, "p", EndpointSpec{Name: "pep", Priority: 10})
	r.must(t, err)
	failed := failEachStep(t, r, func(ctx context.Context) error { return r.c.Join(ctx, "s", "p", "pep") }, r.drv, plug)
	wantSteps(t, failed, "Join", "ConfigureInterface", "SetDefaultRoute", "Revoke", "Program", "store")
	checkGateway(t, r, "p", "ens1") // interface numbers are shared across prefixes
}

// A leave of the gateway endpoint moves the gateway back to a (route, revoke b,
// program a), then the driver's Leave and the record; a failure at any step leaves
// b joined and the gateway, with its published port.
func TestFailedLeaveRollsBackEveryStep(t *testing.T) {
	r := gatewayRig(t)
	ctx := t.Context()
	_, err := r.c.CreateEndpoint(ctx, "b", EndpointSpec{Name: "bep", Priority: 10})
	r.must(t, err)
	r.must(t, r.c.Join(ctx, "s", "b", "bep"))
	failed := failEachStep(t, r, func(ctx context.Context) error { return r.c.Leave(ctx, "s", "b", "bep") }, r.drv)
	wantSteps(t, failed, "SetDefaultRoute", "Revoke", "Program", "Leave", "store")
	checkGateway(t, r, "a", "eth0")
}

// Disconnect is a leave and the endpoint's deletion: both roll back together.
func TestFailedDisconnectRollsBackEveryStep(t *testing.T) {
	r := gatewayRig(t)
	ctx := t.Context()
	_, err := r.c.Connect(ctx, "b", "s", EndpointSpec{Priority: 10})
	r.must(t, err)
	failed := failEachStep(t, r, func(ctx context.Context) error { return r.c.Disconnect(ctx, "b", "s") }, r.drv)
	wantSteps(t, failed, "SetDefaultRoute", "Revoke", "Program", "Leave", "DeleteEndpoint", "store")
	checkGateway(t, r, "a", "eth0")
	if eps, _ := r.c.Endpoints(ctx, "b"); len(eps) != 0 {
		t.Errorf("endpoints left on b after disconnect: %v", eps)
	}
}

// checkGateway asserts that network's endpoint in sandbox s is the gateway on ifName:
// the default route, the programmed driver state and the recorded bindings.
func checkGateway(t *testing.T, r *rig, network, ifName string) {
	t.Helper()
	ctx := t.Context()
	sb, err := r.c.Sandbox(ctx, "s")
	r.must(t, err)
	n, err := r.c.Network(ctx, network)
	r.must(t, err)
	ep := r.c.endpointOf(sb.ID, n.ID)
	if ep == nil {
		t.Fatalf("s is not on network %s", network)
	}
	if got := r.os.routes[sb.Key].IfName; got != ifName {
		t.Errorf("default route via %q, want %q\n%s", got, ifName, r.os.dump())
	}
	want := []portmap.Binding{{HostPort: 40080, Proto: portmap.TCP, ContainerIP: ep.Addr4.Addr(), ContainerPort: 80}}
	if sb.GatewayEndpoint != ep.ID || !cmp.Equal(sb.Published, want, graphOpts) {
		t.Errorf("sandbox gateway %s published %v, want %s (network %s) publishing %v", sb.GatewayEndpoint, sb.Published, ep.ID, network, want)
	}
}
