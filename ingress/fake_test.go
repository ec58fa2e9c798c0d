package ingress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/vishvananda/netlink"

	"github.com/piernet/pier/errdefs"
)

// fakeConn records the operations of each batch as text ("add rule svc_a", "del
// elem slots ×7"); failNext makes the next Flush fail.
type fakeConn struct {
	queued   []string
	batches  [][]string
	failNext bool
	closed   int
}

func (f *fakeConn) q(format string, a ...any) { f.queued = append(f.queued, fmt.Sprintf(format, a...)) }

func (f *fakeConn) AddTable(t *nftables.Table) *nftables.Table { f.q("add table %s", t.Name); return t }
func (f *fakeConn) DelTable(t *nftables.Table)                 { f.q("del table %s", t.Name) }
func (f *fakeConn) AddChain(c *nftables.Chain) *nftables.Chain { f.q("add chain %s", c.Name); return c }
func (f *fakeConn) FlushChain(c *nftables.Chain)               { f.q("flush chain %s", c.Name) }
func (f *fakeConn) DelChain(c *nftables.Chain)                 { f.q("del chain %s", c.Name) }
func (f *fakeConn) AddRule(r *nftables.Rule) *nftables.Rule {
	f.q("add rule %s", r.Chain.Name)
	return r
}
func (f *fakeConn) AddSet(s *nftables.Set, v []nftables.SetElement) error {
	f.q("add set %s ×%d", s.Name, len(v))
	return nil
}
func (f *fakeConn) SetAddElements(s *nftables.Set, v []nftables.SetElement) error {
	f.q("add elem %s ×%d", s.Name, len(v))
	return nil
}
func (f *fakeConn) SetDeleteElements(s *nftables.Set, v []nftables.SetElement) error {
	f.q("del elem %s ×%d", s.Name, len(v))
	return nil
}
func (f *fakeConn) GetSetElements(*nftables.Set) ([]nftables.SetElement, error) { return nil, nil }
func (f *fakeConn) GetRules(*nftables.Table, *nftables.Chain) ([]*nftables.Rule, error) {
	return nil, nil
}
func (f *fakeConn) ListChainsOfTableFamily(nftables.TableFamily) ([]*nftables.Chain, error) {
	return nil, nil
}
func (f *fakeConn) CloseLasting() error { f.closed++; return nil }
func (f *fakeConn) Flush() error {
	b := f.queued
	f.queued = nil
	if f.failNext {
		f.failNext = false
		return errors.New("injected batch failure")
	}
	f.batches = append(f.batches, b)
	return nil
}

func (f *fakeConn) last() string { return strings.Join(f.batches[len(f.batches)-1], "\n") }

func fakePublisher(t *testing.T) (*Publisher, *fakeConn) {
	f := &fakeConn{}
	p, err := start(t.Context(), kernel{dial: func() (conn, error) { return f, nil }}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p, f
}

func svcN(i, backends int) Service {
	s := Service{ID: fmt.Sprintf("s%d", i), Ports: []Port{{"tcp", uint16(10000 + i), 80}}}
	for j := range backends {
		s.Backends = append(s.Backends, netip.AddrFrom4([4]byte{10, 255, byte(i), byte(j + 1)}))
	}
	return s
}

func TestNewWritesTheEmptyTable(t *testing.T) {
	_, f := fakePublisher(t)
	want := `add table pier_ingress
del table pier_ingress
add table pier_ingress
add set snat ×0
add set services ×0
add set targets ×0
add set slots ×0
add chain nat_pre
add rule nat_pre
add rule nat_pre
add chain nat_post
add rule nat_post
add chain filter_in
add rule filter_in
add rule filter_in
add chain filter_fwd
add rule filter_fwd`
	if got := f.last(); got != want {
		t.Fatalf("New's batch:\n%s\nwant:\n%s", got, want)
	}
}

// One change at 1,000 services touches that service's elements only, never a rule
// or chain (the rules are fixed); the batch's size does not depend on the number of
// services.
func TestChangeIsOneSmallBatch(t *testing.T) {
	p, f := fakePublisher(t)
	ctx := t.Context()
	for i := range 1000 {
		if err := p.Set(ctx, svcN(i, 10)); err != nil {
			t.Fatal(err)
		}
	}
	want := "add elem slots ×64\nadd elem targets ×1\nadd elem services ×1"
	if got := f.last(); got != want {
		t.Fatalf("batch for a new service:\n%s\nwant:\n%s", got, want)
	}
	s := svcN(500, 10)
	s.Backends = s.Backends[1:]
	before := len(f.batches)
	if err := p.Set(ctx, s); err != nil {
		t.Fatal(err)
	}
	var del, add int
	if _, err := fmt.Sscanf(f.last(), "del elem slots ×%d\nadd elem slots ×%d", &del, &add); err != nil || del != add || del > 7 {
		t.Fatalf("batch for one backend removal (want only the ≤ 7 slots of the removed backend):\n%s", f.last())
	}
	if err := p.Set(ctx, s); err != nil || len(f.batches) != before+1 {
		t.Fatalf("setting the same state again sent a batch (err %v)", err)
	}
	for _, c := range []struct {
		name   string
		change func(*Service)
		want   string
	}{
		{"a new port", func(s *Service) { s.Ports = append(s.Ports, Port{"udp", 53, 5353}) },
			"add elem slots ×64\nadd elem targets ×1\nadd elem services ×1"},
		{"a changed target", func(s *Service) { s.Ports[0].Target = 81 },
			"del elem targets ×1\nadd elem targets ×1"},
		{"SNAT on", func(s *Service) { s.SNAT = true }, "add elem snat ×2"},
		{"a port gone with SNAT", func(s *Service) { s.Ports = s.Ports[:1] },
			"del elem snat ×1\ndel elem services ×1\ndel elem targets ×1\ndel elem slots ×64"},
		{"no backend", func(s *Service) { s.Backends = nil }, "del elem slots ×64"},
	} {
		c.change(&s)
		if err := p.Set(ctx, s); err != nil {
			t.Fatal(err)
		}
		if got := f.last(); got != c.want {
			t.Errorf("batch for %s:\n%s\nwant:\n%s", c.name, got, c.want)
		}
	}
	if err := p.Remove(ctx, "s500"); err != nil {
		t.Fatal(err)
	}
	want = "del elem snat ×1\ndel elem services ×1\ndel elem targets ×1"
	if got := f.last(); got != want {
		t.Fatalf("batch for a removal:\n%s\nwant:\n%s", got, want)
	}
	if err := p.Close(); err != nil || f.last() != "add table pier_ingress\ndel table pier_ingress" {
		t.Fatalf("Close: %v, batch:\n%s", err, f.last())
	}
}

// A failed batch leaves the desired state as it was; the next change rewrites the
// whole table in one batch.
func TestFailedBatchRewritesTheTable(t *testing.T) {
	p, f := fakePublisher(t)
	ctx := t.Context()
	for i := range 3 {
		if err := p.Set(ctx, svcN(i, 2)); err != nil {
			t.Fatal(err)
		}
	}
	f.failNext = true
	if err := p.Set(ctx, svcN(3, 2)); err == nil {
		t.Fatal("injected failure not reported")
	}
	if got := len(p.Services()); got != 3 {
		t.Fatalf("after a failed change the publisher wants %d services, want 3", got)
	}
	if err := p.Set(ctx, Service{ID: "x", Ports: svcN(3, 0).Ports}); err != nil {
		t.Fatalf("the port of the failed service is still taken: %v", err)
	}
	got := f.last()
	if !strings.HasPrefix(got, "add table pier_ingress\ndel table pier_ingress\nadd table") ||
		!strings.HasSuffix(got, "add elem slots ×192\nadd elem targets ×4\nadd elem services ×4") {
		t.Fatalf("the change after a failure is not a rewrite of 4 services, 3 with backends, one message a map:\n%s", got)
	}
	if ok, err := p.Intact(ctx); err != nil || ok {
		t.Fatalf("Intact on a fake kernel with no table: %v, %v", ok, err)
	}
}

func TestInvalidServicesAndConflicts(t *testing.T) {
	p, f := fakePublisher(t)
	for _, s := range []Service{
		{ID: ""},
		{ID: "a-b"},
		{ID: "a", Backends: []netip.Addr{netip.MustParseAddr("fd00::2")}},
		{ID: "a", Ports: []Port{{"sctp", 1, 1}}},
		{ID: "a", Ports: []Port{{"tcp", 0, 1}}},
		{ID: "a", Ports: []Port{{"tcp", 80, 80}, {"tcp", 80, 81}}},
	} {
		if err := p.Set(t.Context(), s); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("%+v: %v, want InvalidArgument", s, err)
		}
	}
	if err := p.Set(t.Context(), Service{ID: "a", Ports: []Port{{"tcp", 80, 80}}}); err != nil {
		t.Fatal(err)
	}
	err := p.Set(t.Context(), Service{ID: "b", Ports: []Port{{"udp", 80, 80}, {"tcp", 80, 8080}}})
	if !errdefs.Is(err, errdefs.KindConflict) || !strings.Contains(err.Error(), "80/tcp is already published by service a") {
		t.Fatalf("a port taken by another service: %v", err)
	}
	if len(f.batches) != 2 {
		t.Fatalf("refused services sent %d batches", len(f.batches)-2)
	}
}

// fakeNet is the routing side of a task namespace as text: "rule 0x10000/0xfff0000
// table 40001", "route table 40001 via 10.255.0.1".
type fakeNet struct{ state map[string]bool }

func (n *fakeNet) LinkByName(string) (netlink.Link, error) {
	return &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Index: 2, Name: "eth0"}}, nil
}
func (n *fakeNet) RuleAdd(r *netlink.Rule) error { n.state[ruleText(r)] = true; return nil }
func (n *fakeNet) RuleDel(r *netlink.Rule) error { delete(n.state, ruleText(r)); return nil }
func (n *fakeNet) RouteReplace(r *netlink.Route) error {
	for k := range n.state {
		if strings.HasPrefix(k, fmt.Sprintf("route table %d ", r.Table)) {
			delete(n.state, k)
		}
	}
	n.state[routeText(r)] = true
	return nil
}
func (n *fakeNet) RouteDel(r *netlink.Route) error { delete(n.state, routeText(r)); return nil }

func ruleText(r *netlink.Rule) string {
	return fmt.Sprintf("rule %d: fwmark %#x/%#x table %d", r.Priority, r.Mark, *r.Mask, r.Table)
}
func routeText(r *netlink.Route) string {
	return fmt.Sprintf("route table %d via %v dev %d", r.Table, r.Gw, r.LinkIndex)
}

func (n *fakeNet) dump() string { return strings.Join(slices.Sorted(mapKeys(n.state)), "\n") }

func mapKeys(m map[string]bool) func(func(string) bool) {
	return func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func mac(last byte) net.HardwareAddr { return net.HardwareAddr{2, 0, 0, 0, 0, last} }

func TestReturnAppliesOnlyDifferences(t *testing.T) {
	f, n := &fakeConn{}, &fakeNet{state: map[string]bool{}}
	sys := map[string]string{rpFilterKey("eth0"): "1"}
	k := rtKernel{nft: f, nl: n, close: func() {}, sysctl: func(key, val string) (string, error) {
		old := sys[key]
		if val != "" {
			sys[key] = val
		}
		return old, nil
	}}
	r, err := newReturn(t.Context(), k, "eth0", nil)
	if err != nil {
		t.Fatal(err)
	}
	if sys[rpFilterKey("eth0")] != "2" {
		t.Fatalf("rp_filter: %s", sys[rpFilterKey("eth0")])
	}
	r1 := Router{MAC: mac(1), Addr: netip.MustParseAddr("10.255.0.1")}
	r2 := Router{MAC: mac(2), Addr: netip.MustParseAddr("10.255.0.2")}
	r3 := Router{MAC: mac(3), Addr: netip.MustParseAddr("10.255.0.3")}
	set := func(rs ...Router) {
		t.Helper()
		if err := r.SetRouters(t.Context(), rs); err != nil {
			t.Fatal(err)
		}
	}
	set(r1, r2)
	want := `route table 40001 via 10.255.0.1 dev 2
route table 40002 via 10.255.0.2 dev 2
rule 9000: fwmark 0x10000/0xfff0000 table 40001
rule 9000: fwmark 0x20000/0xfff0000 table 40002`
	if got := n.dump(); got != want {
		t.Fatalf("routing for r1, r2:\n%s\nwant:\n%s", got, want)
	}
	if got, want := f.last(), "flush chain routers_in\nflush chain routers_out\nadd rule routers_in\nadd rule routers_out\nadd rule routers_in\nadd rule routers_out"; got != want {
		t.Fatalf("nft batch for r1, r2:\n%s\nwant:\n%s", got, want)
	}
	batches := len(f.batches)
	set(r2, r1)
	if len(f.batches) != batches {
		t.Fatal("the same routers in another order sent a batch")
	}
	// r1 leaves, r3 comes in one call: r2 keeps number 2; r3 gets 3, as r1's number
	// is freed only after r3's rule is in place.
	set(r2, r3)
	want = `route table 40002 via 10.255.0.2 dev 2
route table 40003 via 10.255.0.3 dev 2
rule 9000: fwmark 0x20000/0xfff0000 table 40002
rule 9000: fwmark 0x30000/0xfff0000 table 40003`
	if got := n.dump(); got != want {
		t.Fatalf("routing for r2, r3:\n%s\nwant:\n%s", got, want)
	}
	// A router's new address: one route replaced, no nft batch.
	batches = len(f.batches)
	r2.Addr = netip.MustParseAddr("10.255.0.22")
	set(r2, r3)
	if len(f.batches) != batches || !strings.Contains(n.dump(), "route table 40002 via 10.255.0.22") {
		t.Fatalf("a router's new address: %d batches, routing:\n%s", len(f.batches)-batches, n.dump())
	}
	if err := r.SetRouters(t.Context(), []Router{r2, r2}); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Fatalf("a router listed twice: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if n.dump() != "" || sys[rpFilterKey("eth0")] != "1" || f.last() != "add table pier_ingress_rt\ndel table pier_ingress_rt" {
		t.Fatalf("after Close: routing %q, rp_filter %s, last batch:\n%s", n.dump(), sys[rpFilterKey("eth0")], f.last())
	}
}
