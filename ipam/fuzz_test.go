package ipam_test

import (
	"maps"
	"net/netip"
	"slices"
	"testing"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

func FuzzParsePrefix(f *testing.F) {
	for _, s := range []string{"10.1.2.3/16", "fd00::1/64", "::ffff:1.2.3.4/120", "1.2.3.4", "a/b", "fe80::1%x/64", " 0.0.0.0/0 "} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ipam.ParsePrefix(s)
		if err != nil {
			if errdefs.KindOf(err) != errdefs.KindInvalidArgument {
				t.Fatalf("ParsePrefix(%q) error of kind %v: %v", s, errdefs.KindOf(err), err)
			}
			return
		}
		if !p.IsValid() || p != p.Masked() || p.Addr().Is4In6() || p.Addr().Zone() != "" {
			t.Fatalf("ParsePrefix(%q) = %s, not canonical", s, p)
		}
		again, err := ipam.ParsePrefix(p.String())
		if err != nil || again != p {
			t.Fatalf("ParsePrefix(%q) = %s, %v; want it to round-trip", p, again, err)
		}
	})
}

func FuzzParsePredefinedPool(f *testing.F) {
	for _, s := range []string{"base=10.10.0.0/16,size=24", "SIZE=64,base=fd00::/48", "base=1.2.3.4/8,size=32", "base=,size=", "size=-1", ","} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ipam.ParsePredefinedPool(s)
		if err != nil {
			if errdefs.KindOf(err) != errdefs.KindInvalidArgument {
				t.Fatalf("ParsePredefinedPool(%q) error of kind %v: %v", s, errdefs.KindOf(err), err)
			}
			return
		}
		if p.Base != p.Base.Masked() || p.Size < p.Base.Bits() || p.Size > p.Base.Addr().BitLen() {
			t.Fatalf("ParsePredefinedPool(%q) = %v, invalid", s, p)
		}
		again, err := ipam.ParsePredefinedPool(p.String())
		if err != nil || again != p {
			t.Fatalf("ParsePredefinedPool(%q) = %v, %v; want it to round-trip", p, again, err)
		}
		if _, err := ipam.New(ipam.Config{LocalPools: []ipam.PredefinedPool{p}}); err != nil {
			t.Fatalf("New rejects parsed pool %v: %v", p, err)
		}
	})
}

// FuzzAllocate drives random request/release sequences on a small pool and checks
// the allocator against a model: no address is handed out twice, reserved addresses
// never are, dynamic addresses stay in the ip-range, and "full" means full.
func FuzzAllocate(f *testing.F) {
	f.Add(false, uint8(3), uint8(5), uint8(0), []byte{0, 0, 0, 0, 3, 1, 0, 0, 2, 5, 1, 0})
	f.Add(true, uint8(1), uint8(0), uint8(0), []byte{0, 0, 0, 0, 0, 0})
	f.Add(false, uint8(5), uint8(2), uint8(3), []byte{2, 0, 2, 31, 2, 7, 0, 0, 3, 0, 1, 0})
	f.Fuzz(func(t *testing.T, v6 bool, hostBits, rangeBits, rangeOff uint8, ops []byte) {
		m := newAllocModel(t, v6, int(hostBits%6), int(rangeBits), int(rangeOff))
		for i := 0; i+1 < len(ops); i += 2 {
			m.step(ops[i]%4, int(ops[i+1]))
		}
		if err := m.a.ReleasePool(t.Context(), m.pool.ID); err != nil {
			t.Fatalf("ReleasePool: %v", err)
		}
	})
}

// allocModel is the reference the fuzzer compares the allocator with.
type allocModel struct {
	t       *testing.T
	a       *ipam.Default
	pool    ipam.Pool
	all     []netip.Addr // every address of the subnet, in order
	usable  []netip.Addr // those that may be handed out
	dynamic []netip.Addr // those zero-Addr requests may return
	used    map[netip.Addr]bool
}

func newAllocModel(t *testing.T, v6 bool, hostBits, rangeBits, rangeOff int) *allocModel {
	base := addr("10.0.0.0")
	if v6 {
		base = addr("fd00::")
	}
	subnet := netip.PrefixFrom(base, base.BitLen()-hostBits)
	req := ipam.PoolRequest{Subnet: subnet, Network: "fuzz"}
	if rb := rangeBits % (hostBits + 2); rb <= hostBits {
		start := nth(base, (rangeOff%(1<<(hostBits-rb)))<<rb)
		req.IPRange = netip.PrefixFrom(start, base.BitLen()-rb)
	}
	m := &allocModel{t: t, a: newAlloc(t, ipam.Config{}), used: map[netip.Addr]bool{}}
	m.pool = mustPool(t, m.a, req)
	for i := range 1 << hostBits {
		m.all = append(m.all, nth(base, i))
	}
	m.usable = usableModel(m.all, v6)
	m.dynamic = m.usable
	if req.IPRange.IsValid() {
		m.dynamic = slices.DeleteFunc(slices.Clone(m.usable), func(a netip.Addr) bool { return !req.IPRange.Contains(a) })
	}
	return m
}

func usableModel(all []netip.Addr, v6 bool) []netip.Addr {
	if len(all) <= 2 {
		return all
	}
	if v6 {
		return all[1:]
	}
	return all[1 : len(all)-1]
}

func nth(a netip.Addr, n int) netip.Addr {
	for range n {
		a = a.Next()
	}
	return a
}

func (m *allocModel) step(op byte, arg int) {
	switch op {
	case 0:
		m.request(ipam.AddressRequest{}, m.dynamic)
	case 1:
		m.request(ipam.AddressRequest{Gateway: true}, m.usable)
	case 2:
		m.requestExplicit(m.all[arg%len(m.all)])
	case 3:
		m.release(arg)
	}
}

// request checks a zero-Addr request, which must come from candidates.
func (m *allocModel) request(req ipam.AddressRequest, candidates []netip.Addr) {
	req.PoolID = m.pool.ID
	got, err := m.a.RequestAddress(m.t.Context(), req)
	if err != nil {
		if !errdefs.Is(err, errdefs.KindUnavailable) || slices.ContainsFunc(candidates, m.free) {
			m.t.Fatalf("RequestAddress(%+v) with %d used: %v", req, len(m.used), err)
		}
		return
	}
	if !slices.Contains(candidates, got.Addr()) || got.Bits() != m.pool.Subnet.Bits() {
		m.t.Fatalf("RequestAddress(%+v) = %s, not among %v", req, got, candidates)
	}
	m.take(got.Addr())
}

func (m *allocModel) requestExplicit(a netip.Addr) {
	_, err := m.a.RequestAddress(m.t.Context(), ipam.AddressRequest{PoolID: m.pool.ID, Addr: a})
	want := errdefs.KindUnknown
	switch {
	case !slices.Contains(m.usable, a):
		want = errdefs.KindInvalidArgument
	case m.used[a]:
		want = errdefs.KindForbidden
	}
	if errdefs.KindOf(err) != want || (err == nil) != (want == errdefs.KindUnknown) {
		m.t.Fatalf("RequestAddress(%s) = %v, want kind %v", a, err, want)
	}
	if err == nil {
		m.take(a)
	}
}

func (m *allocModel) release(arg int) {
	a := m.all[arg%len(m.all)]
	if len(m.used) > 0 {
		used := m.sortedUsed()
		a = used[arg%len(used)]
	}
	err := m.a.ReleaseAddress(m.t.Context(), m.pool.ID, a)
	if m.used[a] != (err == nil) || (err != nil && !errdefs.Is(err, errdefs.KindNotFound)) {
		m.t.Fatalf("ReleaseAddress(%s) with used %v: %v", a, m.sortedUsed(), err)
	}
	delete(m.used, a)
}

func (m *allocModel) take(a netip.Addr) {
	if m.used[a] {
		m.t.Fatalf("address %s handed out twice", a)
	}
	m.used[a] = true
}

func (m *allocModel) free(a netip.Addr) bool { return !m.used[a] }

func (m *allocModel) sortedUsed() []netip.Addr {
	return slices.SortedFunc(maps.Keys(m.used), netip.Addr.Compare)
}
