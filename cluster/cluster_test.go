package cluster

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
	"github.com/piernet/pier/ipam"
)

func newNode(t *testing.T, kv KV, name string, i int) *Cluster {
	t.Helper()
	c, err := New(Options{KV: kv, NodeID: "id-" + name, NodeName: name, Advertise: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)}),
		TTL: 1500 * time.Millisecond, Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func stateOf(c *Cluster, name string) NodeState {
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n.State
		}
	}
	return ""
}

func TestNodeNamesAndLiveness(t *testing.T) {
	kv := NewFake()
	a := newNode(t, kv, "h1", 1)
	b := newNode(t, kv, "h2", 2)
	nstest.Eventually(t, "h1 to see h2 ready", 2*time.Second, func() bool { return stateOf(a, "h2") == Ready })
	// A live node's name cannot be taken; nothing is written by the refused start.
	before := kv.Rev()
	dup, _ := New(Options{KV: kv, NodeID: "other", NodeName: "h2", Advertise: netip.MustParseAddr("192.0.2.9")})
	if err := dup.Start(t.Context()); !errdefs.Is(err, errdefs.KindConflict) || !strings.Contains(err.Error(), "h2") {
		t.Fatalf("duplicate live name: %v", err)
	}
	if kv.Rev() != before {
		t.Fatalf("refused start wrote to the store (rev %d -> %d)", before, kv.Rev())
	}
	// h2's lease expires: h1 sees it down; its keepalive rejoins.
	kv.Expire(LeaseID(b.lease.Load()))
	nstest.Eventually(t, "h1 to see h2 down", 2*time.Second, func() bool { return stateOf(a, "h2") == Down })
	nstest.Eventually(t, "h2 to rejoin", 3*time.Second, func() bool { return stateOf(a, "h2") == Ready })
	// A graceful close shows as left at once.
	if err := b.Close(t.Context()); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "h1 to see h2 left", time.Second, func() bool { return stateOf(a, "h2") == Left })
	// A new node (new ID) may take the name of one that is not alive.
	c := newNode(t, kv, "h2", 3)
	nstest.Eventually(t, "h1 to see the new h2", time.Second, func() bool {
		for _, n := range a.Nodes() {
			if n.Name == "h2" && n.ID == c.o.NodeID && n.State == Ready {
				return true
			}
		}
		return false
	})
}

func TestNetworksAndEndpointsAcrossNodes(t *testing.T) {
	ctx := t.Context()
	kv := NewFake()
	nodes := []*Cluster{newNode(t, kv, "h1", 1), newNode(t, kv, "h2", 2), newNode(t, kv, "h3", 3)}
	_, events := nodes[2].Subscribe(ctx)
	// Three nodes create the same name at once: exactly one wins.
	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i, n := range nodes {
		wg.Go(func() {
			errs[i] = n.CreateNetwork(ctx, NetworkRecord{ID: fmt.Sprintf("net%d", i), Name: "ov", Driver: "overlay"})
		})
	}
	wg.Wait()
	won := 0
	for _, err := range errs {
		switch {
		case err == nil:
			won++
		case !errdefs.Is(err, errdefs.KindConflict):
			t.Fatalf("create: %v", err)
		}
	}
	if won != 1 {
		t.Fatalf("%d nodes created network ov, want 1 (%v)", won, errs)
	}
	var nid string
	nstest.Eventually(t, "h3 to see ov", time.Second, func() bool {
		ns := nodes[2].Networks()
		if len(ns) == 1 {
			nid = ns[0].ID
		}
		return len(ns) == 1
	})
	ep := EndpointRecord{ID: "ep1", Name: "web", NetworkID: nid, Addr4: netip.MustParsePrefix("10.0.0.2/24"), MAC: "02:42:0a:00:00:02", DNSNames: []string{"web"}}
	if err := nodes[0].PutEndpoint(ctx, ep); err != nil {
		t.Fatal(err)
	}
	dup := ep
	dup.ID = "ep2"
	if err := nodes[1].PutEndpoint(ctx, dup); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Fatalf("same endpoint name from h2: %v", err)
	}
	if err := nodes[0].PutEndpoint(ctx, EndpointRecord{ID: "x", Name: "x", NetworkID: "nope"}); !errdefs.Is(err, errdefs.KindNotFound) {
		t.Fatalf("endpoint on a missing network: %v", err)
	}
	if err := nodes[2].DeleteNetwork(ctx, nid); !errdefs.Is(err, errdefs.KindForbidden) || !strings.Contains(err.Error(), "node h1") {
		t.Fatalf("delete with an endpoint on h1: %v", err)
	}
	// h3's subscription saw, in order: the network, then the endpoint.
	want := []string{"network+ ov", "endpoint+ web@id-h1"}
	got := collect(t, events, len(want))
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("events %v, want %v", got, want)
	}
	// h1 dies: its endpoint is withdrawn from h3's view (and comes back with it).
	nodes[0].cancel() // the keepalive stops, as in a crash
	nstest.Eventually(t, "h3 to withdraw web", 4*time.Second, func() bool { return len(nodes[2].Endpoints(nid)) == 0 })
	if got := collect(t, events, 2); !contains(got, "endpoint- web@id-h1") || !contains(got, "node h1 down") {
		t.Fatalf("events after h1 died: %v", got)
	}
	// The endpoint goes; the network can be deleted from any node.
	if err := nodes[1].DeleteEndpoint(ctx, nid, "ep1"); err != nil {
		t.Fatal(err)
	}
	if err := nodes[1].DeleteNetwork(ctx, nid); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "h3 to drop ov", time.Second, func() bool { return len(nodes[2].Networks()) == 0 })
	if err := nodes[1].CreateNetwork(ctx, NetworkRecord{ID: "again", Name: "ov", Driver: "overlay"}); err != nil {
		t.Fatalf("re-using the name of a deleted network: %v", err)
	}
}

func describe(ev Event) string {
	switch ev.Kind {
	case NetworkAdded:
		return "network+ " + ev.Network.Name
	case NetworkRemoved:
		return "network- " + ev.Network.Name
	case EndpointAdded:
		return "endpoint+ " + ev.Endpoint.Name + "@" + ev.Endpoint.NodeID
	case EndpointRemoved:
		return "endpoint- " + ev.Endpoint.Name + "@" + ev.Endpoint.NodeID
	case ServiceAdded:
		return "service+ " + ev.Service.Name
	case ServiceRemoved:
		return "service- " + ev.Service.Name
	}
	return "node " + ev.Node.Name + " " + string(ev.Node.State)
}

// collect reads n events that are not about nodes becoming ready.
func collect(t *testing.T, ch <-chan Event, n int) []string {
	t.Helper()
	var out []string
	timeout := time.After(5 * time.Second)
	for len(out) < n {
		select {
		case ev := <-ch:
			if ev.Kind == NodeChanged && ev.Node.State == Ready {
				continue
			}
			out = append(out, describe(ev))
		case <-timeout:
			t.Fatalf("got %v, want %d events", out, n)
		}
	}
	return out
}

func contains(s []string, x string) bool {
	for _, v := range s {
		if v == x {
			return true
		}
	}
	return false
}

func TestConcurrentAddressesAreDistinct(t *testing.T) {
	ctx := t.Context()
	kv := NewFake()
	nodes := []*Cluster{newNode(t, kv, "h1", 1), newNode(t, kv, "h2", 2), newNode(t, kv, "h3", 3)}
	pool, err := nodes[0].IPAM().RequestPool(ctx, ipam.PoolRequest{AddressSpace: ipam.SpaceGlobal, Network: "ov"})
	if err != nil || pool.Subnet.String() != "10.0.0.0/24" {
		t.Fatalf("first automatic pool: %v %v", pool.Subnet, err)
	}
	if _, err := nodes[1].IPAM().RequestPool(ctx, ipam.PoolRequest{Subnet: netip.MustParsePrefix("10.0.0.128/25"), Network: "x"}); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Fatalf("overlapping pool from another node: %v", err)
	}
	p2, err := nodes[1].IPAM().RequestPool(ctx, ipam.PoolRequest{Network: "ov2"})
	if err != nil || p2.Subnet.String() != "10.0.1.0/24" {
		t.Fatalf("second automatic pool: %v %v", p2.Subnet, err)
	}
	var mu sync.Mutex
	got := map[netip.Addr]int{}
	var wg sync.WaitGroup
	for _, n := range nodes {
		for range 50 {
			wg.Go(func() {
				a, err := n.IPAM().RequestAddress(ctx, ipam.AddressRequest{PoolID: pool.ID})
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				got[a.Addr()]++
				mu.Unlock()
			})
		}
	}
	wg.Wait()
	if len(got) != 150 {
		t.Fatalf("%d distinct addresses from 150 requests", len(got))
	}
	for a := range got {
		if a == pool.Subnet.Addr() || a.String() == "10.0.0.255" || !pool.Subnet.Contains(a) {
			t.Fatalf("handed out %s", a)
		}
	}
	// Released addresses are reusable cluster-wide; a taken one is refused.
	var any netip.Addr
	for a := range got {
		any = a
		break
	}
	if _, err := nodes[2].IPAM().RequestAddress(ctx, ipam.AddressRequest{PoolID: pool.ID, Addr: any}); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Fatalf("taken address: %v", err)
	}
	if err := nodes[0].IPAM().ReleaseAddress(ctx, pool.ID, any); err != nil {
		t.Fatal(err)
	}
	if _, err := nodes[2].IPAM().RequestAddress(ctx, ipam.AddressRequest{PoolID: pool.ID, Addr: any}); err != nil {
		t.Fatalf("released address on another node: %v", err)
	}
	if err := nodes[2].IPAM().ReleasePool(ctx, pool.ID); err != nil {
		t.Fatal(err)
	}
	if p, err := nodes[0].IPAM().RequestPool(ctx, ipam.PoolRequest{Network: "ov3"}); err != nil || p.Subnet != pool.Subnet {
		t.Fatalf("released pool not reused: %v %v", p.Subnet, err)
	}
}

func TestVNIs(t *testing.T) {
	ctx := t.Context()
	kv := NewFake()
	a, b := newNode(t, kv, "h1", 1), newNode(t, kv, "h2", 2)
	v1, err := a.AllocateVNIs(ctx, "n1", nil, 1)
	if err != nil || fmt.Sprint(v1) != "[4096]" {
		t.Fatalf("%v %v", v1, err)
	}
	if _, err := b.AllocateVNIs(ctx, "n2", []uint32{4096}, 1); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("taken VNI: %v", err)
	}
	v2, err := b.AllocateVNIs(ctx, "n2", []uint32{7000}, 2)
	if err != nil || fmt.Sprint(v2) != "[7000 4097]" {
		t.Fatalf("%v %v", v2, err)
	}
	if err := a.ReleaseVNIs(ctx, "n1"); err != nil {
		t.Fatal(err)
	}
	if v, err := b.AllocateVNIs(ctx, "n3", nil, 1); err != nil || fmt.Sprint(v) != "[4096]" {
		t.Fatalf("released VNI not reused: %v %v", v, err)
	}
}

// TestCompactionLosesNothing writes while the watch is cut and the history compacted:
// the view must end equal to a fresh list, with every change reported exactly once.
func TestCompactionLosesNothing(t *testing.T) {
	ctx := t.Context()
	kv := NewFake()
	a, b := newNode(t, kv, "h1", 1), newNode(t, kv, "h2", 2)
	if err := a.CreateNetwork(ctx, NetworkRecord{ID: "n1", Name: "ov", Driver: "overlay"}); err != nil {
		t.Fatal(err)
	}
	nstest.Eventually(t, "h2 to see ov", time.Second, func() bool { return len(b.Networks()) == 1 })
	_, events := b.Subscribe(ctx)
	for i := range 20 {
		if err := a.PutEndpoint(ctx, EndpointRecord{ID: fmt.Sprintf("e%d", i), Name: fmt.Sprintf("e%d", i), NetworkID: "n1"}); err != nil {
			t.Fatal(err)
		}
		if i == 9 {
			kv.CancelWatches(errdefs.Unavailable("connection dropped"))
			for j := range 5 {
				_ = a.DeleteEndpoint(ctx, "n1", fmt.Sprintf("e%d", j))
			}
			kv.Compact(kv.Rev())
		}
	}
	nstest.Eventually(t, "h2 to see 15 endpoints", 3*time.Second, func() bool { return len(b.Endpoints("n1")) == 15 })
	final := map[string]bool{}
	for _, ep := range b.Endpoints("n1") {
		final[ep.Name] = true
	}
	// Replaying the subscription must give exactly the final view: never an add of
	// something present, never a remove of something absent.
	set := map[string]bool{}
	timeout := time.After(5 * time.Second)
	for !sameSet(set, final) {
		select {
		case ev := <-events:
			switch ev.Kind {
			case EndpointAdded:
				if set[ev.Endpoint.Name] {
					t.Fatalf("%s added twice", ev.Endpoint.Name)
				}
				set[ev.Endpoint.Name] = true
			case EndpointRemoved:
				if !set[ev.Endpoint.Name] {
					t.Fatalf("%s removed while absent", ev.Endpoint.Name)
				}
				delete(set, ev.Endpoint.Name)
			}
		case <-timeout:
			t.Fatalf("subscription replays to %v, view has %v", set, final)
		}
	}
	if final["e0"] || !final["e19"] {
		t.Fatalf("view after compaction: %v", final)
	}
}

func sameSet(a, b map[string]bool) bool {
	if len(a) != len(b) {
		return false
	}
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

// replayingKV applies every transaction that puts an endpoint record twice, as a
// client that retries a request whose answer was lost would: the second attempt's
// comparisons fail against the first attempt's own writes.
type replayingKV struct {
	KV
	replays int
}

func (k *replayingKV) Txn(ctx context.Context, cmps []Cmp, ops []Op) (TxnResult, error) {
	r, err := k.KV.Txn(ctx, cmps, ops)
	if err == nil && r.Succeeded && len(ops) > 0 && strings.HasPrefix(ops[0].Key, prefEndpoints) {
		k.replays++
		return k.KV.Txn(ctx, cmps, ops)
	}
	return r, err
}

// PutEndpoint whose transaction was applied but reported failed (a retried request)
// still succeeds: the name is the endpoint's own. Another endpoint's name is refused.
func TestPutEndpointSurvivesAReplayedTransaction(t *testing.T) {
	ctx := t.Context()
	kv := &replayingKV{KV: NewFake()}
	n := newNode(t, kv, "h1", 1)
	if err := n.CreateNetwork(ctx, NetworkRecord{ID: "net1", Name: "ov", Driver: "overlay"}); err != nil {
		t.Fatal(err)
	}
	rec := EndpointRecord{ID: "ep1", Name: "t1", NetworkID: "net1", SandboxID: "sb1"}
	if err := n.PutEndpoint(ctx, rec); err != nil || kv.replays == 0 {
		t.Fatalf("a replayed endpoint put: %v (replays %d)", err, kv.replays)
	}
	if got := n.Endpoints("net1"); len(got) != 1 || got[0].Name != "t1" {
		// The view follows the watch: poll briefly.
		nstest.Eventually(t, "the endpoint in the view", 5*time.Second, func() bool { got = n.Endpoints("net1"); return len(got) == 1 && got[0].Name == "t1" })
	}
	if err := n.PutEndpoint(ctx, EndpointRecord{ID: "ep2", Name: "t1", NetworkID: "net1"}); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Fatalf("another endpoint taking name t1: %v", err)
	}
}

// One node rotates its key at a time: a second node waits for the lock, gets an
// Unavailable error naming the holder when it waits too long, and takes the lock
// once it is released — or once the holder's lease expires (a node that died).
func TestKeyRotationLock(t *testing.T) {
	kv := NewFake()
	a := newNode(t, kv, "h1", 1)
	b := newNode(t, kv, "h2", 2)
	nstest.Eventually(t, "h2 to see h1 ready", 2*time.Second, func() bool { return stateOf(b, "h1") == Ready })
	unlock, err := a.LockKeyRotation(t.Context(), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.LockKeyRotation(t.Context(), 50*time.Millisecond); !errdefs.Is(err, errdefs.KindUnavailable) || !strings.Contains(err.Error(), "h1") {
		t.Fatalf("second lock while h1 holds it: %v", err)
	}
	got := make(chan error, 1)
	go func() {
		u, err := b.LockKeyRotation(t.Context(), 5*time.Second)
		if err == nil {
			u()
		}
		got <- err
	}()
	select {
	case err := <-got:
		t.Fatalf("h2 took the lock while h1 held it: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	unlock()
	if err := <-got; err != nil {
		t.Fatalf("h2 waiting for the released lock: %v", err)
	}
	// A holder that dies: its lease expires and the lock with it.
	if _, err := a.LockKeyRotation(t.Context(), time.Second); err != nil {
		t.Fatal(err)
	}
	kv.Expire(LeaseID(a.lease.Load()))
	u, err := b.LockKeyRotation(t.Context(), 5*time.Second)
	if err != nil {
		t.Fatalf("lock after the holder's lease expired: %v", err)
	}
	u()
}
