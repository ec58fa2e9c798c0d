package firewall

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/piernet/pier/internal/nstest"
)

var equatePrefix = cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})

func TestRenderGolden(t *testing.T) {
	checkGolden(t, "render.golden", Render(goldenState()))
	checkGolden(t, "render_empty.golden", Render(State{}))
}

func TestRenderIgnoresInputOrder(t *testing.T) {
	s := goldenState()
	slices.Reverse(s.Bridges)
	s.Bridges[0].Subnets6 = nstest.Prefixes("fd00:17::1/64", "fd00:17::/64") // unmasked duplicate
	if diff := cmp.Diff(Render(goldenState()), Render(s)); diff != "" {
		t.Errorf("Render depends on input order (-want +got):\n%s", diff)
	}
}

// newFake returns a Firewall on a fake kernel.
func newFake(t *testing.T) (*Firewall, *fakeKernel) {
	t.Helper()
	k := newFakeKernel()
	return newFirewall(k.seams(), nil), k
}

// fakeDumpOf returns the fake kernel dump of a fresh Firewall reconciled to s.
func fakeDumpOf(t *testing.T, s State) string {
	t.Helper()
	fw, k := newFake(t)
	for _, b := range s.Bridges {
		fw.bridges[b.Name] = mustNormalize(t, b)
	}
	for owner, bs := range s.Ports {
		nb, err := normalizePorts(owner, bs)
		if err != nil {
			t.Fatal(err)
		}
		fw.replacePortsLocked(owner, nil, nb)
	}
	if err := fw.Reconcile(t.Context()); err != nil {
		t.Fatal(err)
	}
	return k.dump()
}

func mustNormalize(t *testing.T, b Bridge) Bridge {
	t.Helper()
	nb, err := normalize(b)
	if err != nil {
		t.Fatal(err)
	}
	return nb
}

func TestFakeDumpGolden(t *testing.T) {
	checkGolden(t, "fake.golden", fakeDumpOf(t, goldenState()))
}

func TestEachChangeIsOneElementBatch(t *testing.T) {
	ctx := t.Context()
	fw, k := newFake(t)
	if err := fw.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	skeleton := k.dump()
	type step struct {
		name    string
		do      func() error
		batches int
	}
	var steps []step
	for _, b := range goldenState().Bridges {
		steps = append(steps, step{"set " + b.Name, func() error { return fw.SetBridge(ctx, b) }, 1})
	}
	changed := goldenState().Bridges[0]
	changed.ICC, changed.Subnets4 = true, nstest.Prefixes("172.28.0.0/16", "172.29.0.0/16")
	steps = append(steps,
		step{"set same again", func() error { return fw.SetBridge(ctx, goldenState().Bridges[2]) }, 0},
		step{"change one bridge", func() error { return fw.SetBridge(ctx, changed) }, 1},
		step{"remove unknown", func() error { return fw.RemoveBridge(ctx, "nope") }, 0},
		step{"remove", func() error { return fw.RemoveBridge(ctx, "pier0") }, 1},
		step{"remove", func() error { return fw.RemoveBridge(ctx, changed.Name) }, 1},
		step{"remove", func() error { return fw.RemoveBridge(ctx, "br-bbbbbbbbbbbb") }, 1},
	)
	for _, st := range steps {
		before := k.flushes()
		if err := st.do(); err != nil {
			t.Fatalf("%s: %v", st.name, err)
		}
		if got := k.flushes() - before; got != st.batches {
			t.Fatalf("%s: %d batches, want %d", st.name, got, st.batches)
		}
		if st.batches == 0 {
			continue
		}
		for _, op := range k.lastBatch() {
			if !strings.HasPrefix(op, "add element ") && !strings.HasPrefix(op, "delete element ") {
				t.Errorf("%s: batch has %q; want only element changes", st.name, op)
			}
		}
	}
	if diff := cmp.Diff(skeleton, k.dump()); diff != "" {
		t.Errorf("after removing every bridge, kernel differs from the skeleton (-want +got):\n%s", diff)
	}
}

func TestFirstChangeWritesWholeTableOnce(t *testing.T) {
	fw, k := newFake(t)
	b := goldenState().Bridges[2]
	if err := fw.SetBridge(t.Context(), b); err != nil {
		t.Fatal(err)
	}
	if k.flushes() != 1 {
		t.Fatalf("%d batches, want 1", k.flushes())
	}
	if got := k.lastBatch()[:3]; !slices.Equal(got, []string{"add table inet pier", "delete table inet pier", "add table inet pier"}) {
		t.Errorf("first batch starts with %q, want the delete-if-exists idiom", got)
	}
	if diff := cmp.Diff(fakeDumpOf(t, State{Bridges: []Bridge{b}}), k.dump()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// testStates exercise every set, overlapping and duplicate subnets, flag and
// owner changes.
func testStates() []State {
	g := goldenState().Bridges
	flipped := slices.Clone(g)
	for i := range flipped {
		flipped[i].ICC, flipped[i].Internal = !flipped[i].ICC, !flipped[i].Internal
		flipped[i].Owner = strings.Repeat(fmt.Sprint(i+4), 64)
	}
	overlap := []Bridge{
		{Name: "br-x", Owner: "x", Subnets4: nstest.Prefixes("10.0.0.0/8"), Masquerade: true, ICC: true},
		{Name: "br-y", Owner: "y", Subnets4: nstest.Prefixes("10.1.0.0/16", "10.2.0.0/24", "192.168.7.7/32"), Subnets6: nstest.Prefixes("fd00::/48"), Masquerade: true},
		{Name: "br-z", Owner: "z", Subnets4: nstest.Prefixes("10.1.0.0/16", "10.2.1.0/24"), Subnets6: nstest.Prefixes("fd00::/56", "::/0"), Masquerade: true},
	}
	remapped := goldenState().Ports
	remapped[ownerWeb] = []PortBinding{pb("0.0.0.0", 8080, "tcp", "172.17.0.9", 8080), pb("203.0.113.7", 80, "tcp", "172.17.0.9", 80)}
	remapped[ownerDNS] = remapped[ownerDNS][:2]
	moved := map[string][]PortBinding{"new-owner": goldenState().Ports[ownerWeb]}
	return []State{
		goldenState(),
		{Bridges: g, Ports: remapped},
		{Bridges: g[:1], Ports: moved},
		{Bridges: g[:1]},
		{Bridges: flipped},
		{Bridges: overlap},
		{Bridges: overlap[1:]},
		{Bridges: append(slices.Clone(overlap[2:]), g...)},
		{},
	}
}

// applyState moves fw to s with SetBridge/RemoveBridge/SetPorts/RemovePorts
// calls in random order. Port moves between owners can conflict in some
// orders, so ports are removed before they are set.
func applyState(t *testing.T, fw *Firewall, s State, rng *rand.Rand) {
	t.Helper()
	ctx := t.Context()
	var ops, portOps []func() error
	cur := fw.State()
	for _, b := range cur.Bridges {
		if !slices.ContainsFunc(s.Bridges, func(n Bridge) bool { return n.Name == b.Name }) {
			ops = append(ops, func() error { return fw.RemoveBridge(ctx, b.Name) })
		}
	}
	for _, b := range s.Bridges {
		ops = append(ops, func() error { return fw.SetBridge(ctx, b) })
	}
	for owner := range cur.Ports {
		if _, ok := s.Ports[owner]; !ok {
			ops = append(ops, func() error { return fw.RemovePorts(ctx, owner) })
		}
	}
	for owner, bs := range s.Ports {
		portOps = append(portOps, func() error { return fw.SetPorts(ctx, owner, bs) })
	}
	rng.Shuffle(len(portOps), func(i, j int) { portOps[i], portOps[j] = portOps[j], portOps[i] })
	rng.Shuffle(len(ops), func(i, j int) { ops[i], ops[j] = ops[j], ops[i] })
	for _, op := range append(ops, portOps...) {
		if err := op(); err != nil {
			t.Fatal(err)
		}
	}
}

// normalized returns s as State() reports it.
func normalized(t *testing.T, s State) State {
	t.Helper()
	out := State{Bridges: []Bridge{}}
	for _, b := range s.Bridges {
		out.Bridges = append(out.Bridges, mustNormalize(t, b))
	}
	for owner, bs := range s.Ports {
		nb, err := normalizePorts(owner, bs)
		if err != nil {
			t.Fatal(err)
		}
		if out.Ports == nil {
			out.Ports = map[string][]PortBinding{}
		}
		out.Ports[owner] = nb
	}
	slices.SortFunc(out.Bridges, func(a, b Bridge) int { return strings.Compare(a.Name, b.Name) })
	return out
}

func TestRandomOrderIsIdempotent(t *testing.T) {
	states := testStates()
	want := make([]string, len(states))
	for i, s := range states {
		want[i] = fakeDumpOf(t, s)
	}
	for seed := range uint64(30) {
		rng := rand.New(rand.NewPCG(seed, 0))
		fw, k := newFake(t)
		if seed%2 == 0 { // else the first change writes the table
			if err := fw.Reconcile(t.Context()); err != nil {
				t.Fatal(err)
			}
		}
		for _, i := range rng.Perm(len(states)) {
			applyState(t, fw, states[i], rng)
			applyState(t, fw, states[i], rng) // again: no-op
			if k.flushes() == 0 {
				continue // nothing written yet: the state was empty
			}
			if diff := cmp.Diff(want[i], k.dump()); diff != "" {
				t.Fatalf("seed %d, state %d: kernel (-want +got):\n%s", seed, i, diff)
			}
			if diff := cmp.Diff(normalized(t, states[i]), fw.State(), equatePrefix); diff != "" {
				t.Fatalf("seed %d, state %d: State() (-want +got):\n%s", seed, i, diff)
			}
		}
		if n := k.flushes(); n > 60 {
			t.Errorf("seed %d: %d batches; no-op re-applies should send nothing", seed, n)
		}
	}
}

func TestFailedBatchKeepsDesiredState(t *testing.T) {
	ctx := t.Context()
	fw, k := newFake(t)
	g := goldenState().Bridges
	if err := fw.SetBridge(ctx, g[0]); err != nil {
		t.Fatal(err)
	}
	before, beforeDump := fw.State(), k.dump()
	boom := errors.New("boom")
	k.setFail(boom)

	err := fw.SetBridge(ctx, g[1])
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), `programming bridge "br-bbbbbbbbbbbb"`) {
		t.Errorf("SetBridge error = %v, want wrapped boom", err)
	}
	err = fw.RemoveBridge(ctx, g[0].Name)
	if !errors.Is(err, boom) || !strings.Contains(err.Error(), `removing bridge "br-aaaaaaaaaaaa"`) {
		t.Errorf("RemoveBridge error = %v, want wrapped boom", err)
	}
	if err := fw.Reconcile(ctx); !errors.Is(err, boom) {
		t.Errorf("Reconcile error = %v, want boom", err)
	}
	if diff := cmp.Diff(before, fw.State(), equatePrefix); diff != "" {
		t.Errorf("desired state changed (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(beforeDump, k.dump()); diff != "" {
		t.Errorf("kernel changed (-before +after):\n%s", diff)
	}

	k.setFail(nil)
	dials := k.dialCount()
	if err := fw.SetBridge(ctx, g[1]); err != nil {
		t.Fatal(err)
	}
	if k.dialCount() != dials+1 {
		t.Errorf("the connection was reused after a failed batch")
	}
	if diff := cmp.Diff(fakeDumpOf(t, State{Bridges: g[:2]}), k.dump()); diff != "" {
		t.Errorf("after recovery (-want +got):\n%s", diff)
	}
}

func TestInvalidBridgeIsRejected(t *testing.T) {
	for _, b := range []Bridge{
		{},
		{Name: "a-name-longer-than-15"},
		{Name: "br/x"},
		{Name: "br0", Subnets4: nstest.Prefixes("fd00::/64")},
		{Name: "br0", Subnets6: nstest.Prefixes("10.0.0.0/8")},
		{Name: "br0", Subnets6: nstest.Prefixes("::ffff:10.0.0.0/104")},
		{Name: "br0", Owner: strings.Repeat("x", 129)},
	} {
		fw, k := newFake(t)
		if err := fw.SetBridge(t.Context(), b); err == nil {
			t.Errorf("SetBridge(%+v) succeeded, want error", b)
		}
		if k.flushes() != 0 || len(fw.State().Bridges) != 0 {
			t.Errorf("SetBridge(%+v) changed something", b)
		}
	}
}

func TestTableDeletedBehindOurBack(t *testing.T) {
	ctx := t.Context()
	fw, k := newFake(t)
	g := goldenState().Bridges
	if err := fw.SetBridge(ctx, g[0]); err != nil {
		t.Fatal(err)
	}
	k.deleteTable("inet pier")
	if ok, err := fw.Installed(ctx); err != nil || ok {
		t.Fatalf("Installed = %v, %v; want false", ok, err)
	}

	// The incremental batch fails; the firewall rewrites the table.
	if err := fw.SetBridge(ctx, g[1]); err != nil {
		t.Fatal(err)
	}
	if ok, err := fw.Installed(ctx); err != nil || !ok {
		t.Fatalf("Installed = %v, %v; want true", ok, err)
	}
	if diff := cmp.Diff(fakeDumpOf(t, State{Bridges: g[:2]}), k.dump()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}

	k.deleteTable("inet pier")
	if err := fw.Reconcile(ctx); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(fakeDumpOf(t, State{Bridges: g[:2]}), k.dump()); diff != "" {
		t.Errorf("after Reconcile (-want +got):\n%s", diff)
	}
}

func TestStateIsACopy(t *testing.T) {
	fw, _ := newFake(t)
	if err := fw.SetBridge(t.Context(), goldenState().Bridges[2]); err != nil {
		t.Fatal(err)
	}
	s := fw.State()
	s.Bridges[0].Subnets4[0] = nstest.Prefixes("1.0.0.0/8")[0]
	if got := fw.State().Bridges[0].Subnets4[0]; got != nstest.Prefixes("172.17.0.0/16")[0] {
		t.Errorf("State() shares memory with the firewall: %v", got)
	}
}

func TestClosed(t *testing.T) {
	ctx := t.Context()
	fw, k := newFake(t)
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := fw.SetBridge(ctx, goldenState().Bridges[0]); !errors.Is(err, ErrClosed) {
		t.Errorf("SetBridge after Close = %v", err)
	}
	if err := fw.Reconcile(ctx); !errors.Is(err, ErrClosed) {
		t.Errorf("Reconcile after Close = %v", err)
	}
	if k.flushes() != 0 {
		t.Errorf("closed firewall sent %d batches", k.flushes())
	}
}

func TestCanceledContext(t *testing.T) {
	fw, k := newFake(t)
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := fw.SetBridge(ctx, goldenState().Bridges[0]); !errors.Is(err, context.Canceled) {
		t.Errorf("SetBridge = %v, want context.Canceled", err)
	}
	if k.flushes() != 0 {
		t.Errorf("sent %d batches", k.flushes())
	}
}

func TestConcurrentChanges(t *testing.T) {
	fw, k := newFake(t)
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			b := benchBridge(i)
			for range 5 {
				if err := fw.SetBridge(t.Context(), b); err != nil {
					t.Error(err)
				}
				if err := fw.RemoveBridge(t.Context(), b.Name); err != nil {
					t.Error(err)
				}
			}
			if i%2 == 0 {
				if err := fw.SetBridge(t.Context(), b); err != nil {
					t.Error(err)
				}
			}
		})
	}
	wg.Wait()
	var want State
	for i := 0; i < 20; i += 2 {
		want.Bridges = append(want.Bridges, benchBridge(i))
	}
	if diff := cmp.Diff(fakeDumpOf(t, want), k.dump()); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
