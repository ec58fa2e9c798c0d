package lb

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/nftables"
)

// fakeConn records the operations of each batch as text ("add rule svc_a", "del
// elem dispatch_ports ×2"); failNext makes the next Flush fail.
type fakeConn struct {
	queued   []string
	batches  [][]string
	failNext bool
	closed   int
}

func (f *fakeConn) q(format string, a ...any) { f.queued = append(f.queued, fmt.Sprintf(format, a...)) }

func (f *fakeConn) AddTable(t *nftables.Table) *nftables.Table { f.q("add table"); return t }
func (f *fakeConn) DelTable(*nftables.Table)                   { f.q("del table") }
func (f *fakeConn) AddChain(c *nftables.Chain) *nftables.Chain { f.q("add chain %s", c.Name); return c }
func (f *fakeConn) FlushChain(c *nftables.Chain)               { f.q("flush chain %s", c.Name) }
func (f *fakeConn) DelChain(c *nftables.Chain)                 { f.q("del chain %s", c.Name) }
func (f *fakeConn) AddRule(r *nftables.Rule) *nftables.Rule {
	f.q("add rule %s", r.Chain.Name)
	return r
}
func (f *fakeConn) DelSet(s *nftables.Set) { f.q("del set %s", s.Name) }
func (f *fakeConn) AddSet(s *nftables.Set, v []nftables.SetElement) error {
	name := s.Name
	if s.Anonymous {
		name = "anon"
	}
	f.q("add set %s ×%d", name, len(v))
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
func (f *fakeConn) CloseLasting() error                                         { f.closed++; return nil }
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

func fakeTable() (*Table, *fakeConn) {
	f := &fakeConn{}
	return newTable(kernel{dial: func() (conn, error) { return f, nil }}, nil), f
}

func svcN(i, backends int) Service {
	s := Service{ID: fmt.Sprintf("s%d", i), VIP: netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), Ports: []Port{{"tcp", 80}}}
	for j := range backends {
		s.Backends = append(s.Backends, netip.AddrFrom4([4]byte{10, 3, byte(i), byte(j + 1)}))
	}
	return s
}

// One backend change at 1,000 services touches that service's chain only: the
// batch's size does not depend on the number of services.
func TestChangeIsOneSmallBatch(t *testing.T) {
	tbl, f := fakeTable()
	ctx := t.Context()
	for i := range 1000 {
		if err := tbl.Set(ctx, svcN(i, 10)); err != nil {
			t.Fatal(err)
		}
	}
	s := svcN(500, 10)
	s.Backends = s.Backends[1:]
	before := len(f.batches)
	if err := tbl.Set(ctx, s); err != nil {
		t.Fatal(err)
	}
	if len(f.batches) != before+1 {
		t.Fatalf("%d batches for one change", len(f.batches)-before)
	}
	var del, add int
	if _, err := fmt.Sscanf(f.last(), "del elem slots ×%d\nadd elem slots ×%d", &del, &add); err != nil || del != add || del > 2*Slots/9 {
		t.Fatalf("batch for one backend removal (want only ≤ %d slot rewrites):\n%s", 2*Slots/9, f.last())
	}
	if err := tbl.Set(ctx, s); err != nil || len(f.batches) != before+1 {
		t.Fatalf("setting the same state again sent a batch (err %v)", err)
	}
	s.Ports = append(s.Ports, Port{"udp", 53})
	if err := tbl.Set(ctx, s); err != nil {
		t.Fatal(err)
	}
	want := "del elem vips ×1\ndel elem svc_ports ×1\nadd elem vips ×1\nadd elem svc_ports ×2"
	if got := f.last(); got != want {
		t.Fatalf("batch for a port change:\n%s\nwant:\n%s", got, want)
	}
	if err := tbl.Remove(ctx, "s500"); err != nil {
		t.Fatal(err)
	}
	want = "del elem vips ×1\ndel elem svc_ports ×2\ndel elem slots ×64"
	if got := f.last(); got != want {
		t.Fatalf("batch for a removal:\n%s\nwant:\n%s", got, want)
	}
}

// A failed batch leaves the desired state as it was; the next change rewrites the
// whole table in one batch.
func TestFailedBatchRewritesTheTable(t *testing.T) {
	tbl, f := fakeTable()
	ctx := t.Context()
	for i := range 3 {
		if err := tbl.Set(ctx, svcN(i, 2)); err != nil {
			t.Fatal(err)
		}
	}
	f.failNext = true
	if err := tbl.Set(ctx, svcN(3, 2)); err == nil {
		t.Fatal("injected failure not reported")
	}
	if got := len(tbl.Services()); got != 3 {
		t.Fatalf("after a failed change the table wants %d services, want 3", got)
	}
	if f.closed != 1 {
		t.Fatalf("connection closed %d times after the failure, want 1", f.closed)
	}
	if err := tbl.Set(ctx, svcN(3, 2)); err != nil {
		t.Fatal(err)
	}
	got := f.last()
	if !strings.HasPrefix(got, "add table\ndel table\nadd table") || strings.Count(got, "add elem slots ×64") != 4 {
		t.Fatalf("the change after a failure is not a rewrite of 4 services:\n%s", got)
	}
}

func TestInvalidServicesAreRefused(t *testing.T) {
	tbl, f := fakeTable()
	for _, s := range []Service{
		{ID: "", VIP: vip},
		{ID: "a-b", VIP: vip},
		{ID: "a", VIP: netip.MustParseAddr("fd00::1")},
		{ID: "a", VIP: vip, Backends: []netip.Addr{netip.MustParseAddr("fd00::2")}},
		{ID: "a", VIP: vip, Ports: []Port{{"sctp", 1}}},
		{ID: "a", VIP: vip, Sticky: 1},
	} {
		if err := tbl.Set(t.Context(), s); err == nil {
			t.Errorf("%+v accepted", s)
		}
	}
	if len(f.batches) != 0 {
		t.Fatalf("refused services sent %d batches", len(f.batches))
	}
}

func TestParsePort(t *testing.T) {
	for in, want := range map[string]Port{"80": {"tcp", 80}, "53/udp": {"udp", 53}, "443/TCP": {"tcp", 443}} {
		if got, err := ParsePort(in); err != nil || got != want {
			t.Errorf("ParsePort(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "65536", "80/sctp", "x", "08", "80/"} {
		if _, err := ParsePort(in); err == nil {
			t.Errorf("ParsePort(%q) accepted", in)
		}
	}
}

func FuzzParsePort(f *testing.F) {
	for _, s := range []string{"80", "53/udp", "1/tcp", "65535/udp"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePort(s)
		if err != nil {
			return
		}
		back, err := ParsePort(p.String())
		if err != nil || back != p {
			t.Fatalf("%q → %v → %v, %v", s, p, back, err)
		}
	})
}

func TestSlotAssignmentIsFairAndMovesLittle(t *testing.T) {
	bs := svcN(0, 10).Backends
	for n := 1; n <= 10; n++ {
		counts := map[netip.Addr]int{}
		for _, a := range Assign(nil, bs[:n]) {
			counts[a]++
		}
		for _, b := range bs[:n] {
			if c := counts[b]; c != Slots/n && c != Slots/n+1 {
				t.Errorf("%d backends: %v has %d slots", n, b, c)
			}
		}
	}
	old := Assign(nil, bs[:3])
	now := Assign(old, bs[1:3]) // bs[0] removed: only its slots move
	moved := 0
	for i := range old {
		if old[i] != now[i] {
			moved++
			if old[i] != bs[0] {
				t.Errorf("slot %d moved from %v, which stays", i, old[i])
			}
		}
	}
	if moved != 22 {
		t.Errorf("%d slots moved, want bs[0]'s 22", moved)
	}
	if Assign(old, nil) != nil {
		t.Error("no backends: want no slot table")
	}
}
