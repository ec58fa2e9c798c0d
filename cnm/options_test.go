package cnm

import (
	"context"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/driver/bridge"
	"github.com/piernet/pier/driver/options"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

// countingIPAM counts the pools requested of an allocator.
type countingIPAM struct {
	ipam.Allocator
	pools atomic.Int32
}

func (a *countingIPAM) RequestPool(ctx context.Context, req ipam.PoolRequest) (ipam.Pool, error) {
	a.pools.Add(1)
	return a.Allocator.RequestPool(ctx, req)
}

// TestInvalidDriverOptionsAllocateNothing: a network the driver's options validator
// refuses (the real bridge one) is refused before any pool is requested or anything
// created, and the subnet it asked for is free for the next create.
func TestInvalidDriverOptionsAllocateNothing(t *testing.T) {
	ctx := t.Context()
	counted := &countingIPAM{}
	r := newRigIPAM(t, func(a ipam.Allocator) ipam.Allocator { counted.Allocator = a; return counted })
	r.drv.decode = (*bridge.Driver)(nil).DecodeOptions // pure: it needs no driver state
	subnet := []PoolSpec{{Subnet: netip.MustParsePrefix("10.20.0.0/24")}}
	before := r.graph(t, r.drv)
	for _, tc := range []struct{ name, key, val, msg string }{
		{"MTU", options.KeyMTU, "9", `option com.docker.network.driver.mtu: "9" is not a valid MTU (68 to 65535)`},
		{"bool", bridge.OptEnableICC, "maybe", "is not a boolean"},
		{"bridge name", bridge.OptBridgeName, "a/b", `invalid bridge name "a/b"`},
		{"interface prefix", options.KeyIfacePrefix, "e:", "not a valid interface prefix"},
		{"unknown key", "com.docker.network.bridge.nmae", "x", `unknown bridge driver option "com.docker.network.bridge.nmae"`},
	} {
		_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "app", Options: map[string]string{tc.key: tc.val}, IPAM: subnet})
		if !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("bad %s: %v, want InvalidArgument containing %q", tc.name, err, tc.msg)
		}
	}
	if n := counted.pools.Load(); n != 0 {
		t.Errorf("%d pools requested for refused networks, want none", n)
	}
	if len(r.drv.calls) != 0 {
		t.Errorf("driver calls for refused networks: %v", r.drv.calls)
	}
	if diff := cmp.Diff(before, r.graph(t, r.drv), graphOpts); diff != "" {
		t.Errorf("refused creates changed the graph (-before +after):\n%s", diff)
	}
	n, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "app", IPAM: subnet,
		Options: map[string]string{options.KeyMTU: "1400", options.KeyIfacePrefix: "ens"}})
	if err != nil {
		t.Fatalf("the same subnet after refused creates: %v", err)
	}
	if got := n.IPv4[0].Subnet.String(); got != "10.20.0.0/24" {
		t.Errorf("subnet %s, want 10.20.0.0/24", got)
	}
	// The driver decoded the interface prefix; the controller names interfaces by it.
	_, err = r.c.CreateSandbox(ctx, SandboxSpec{Name: "web"})
	r.must(t, err)
	_, err = r.c.CreateEndpoint(ctx, "app", EndpointSpec{Name: "ep"})
	r.must(t, err)
	r.must(t, r.c.Join(ctx, "web", "app", "ep"))
	if dump := r.os.dump(); !strings.Contains(dump, " ens0 10.20.0.") {
		t.Errorf("sandbox interfaces, want ens0 on 10.20.0.0/24:\n%s", dump)
	}
}

// TestRestoredRecordGetsIfacePrefix: a network record from before the driver decoded
// container_iface_prefix (IfacePrefix empty, the key in Options) names interfaces by
// it after a restart.
func TestRestoredRecordGetsIfacePrefix(t *testing.T) {
	ctx := t.Context()
	r := newRig(t)
	r.drv.decode = (*bridge.Driver)(nil).DecodeOptions
	n, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: "app", Options: map[string]string{options.KeyIfacePrefix: "ens"}})
	r.must(t, err)
	n.IfacePrefix = ""
	r.must(t, r.c.store.Put(ctx, kindNetwork, n.ID, n))
	c2, err := New(ctx, Config{ExecRoot: r.c.execRoot, Store: r.c.store, Drivers: r.c.drivers, IPAM: mustIPAM(t), OS: r.os, HostResolvConf: "/dev/null"})
	r.must(t, err)
	_, err = c2.CreateSandbox(ctx, SandboxSpec{Name: "s"})
	r.must(t, err)
	ep, err := c2.Connect(ctx, "app", "s", EndpointSpec{})
	r.must(t, err)
	if ep.IfName != "ens0" {
		t.Errorf("interface of a restored network: %q, want ens0", ep.IfName)
	}
}
