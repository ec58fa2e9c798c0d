package portmap

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/errdefs"
)

// fakeHost models the host's sockets: ports held by other processes,
// local addresses, and the local port range. Binding follows Linux: an
// unspecified address conflicts with every address of its family.
type fakeHost struct {
	mu          sync.Mutex
	held        map[string]bool // "tcp 0.0.0.0:8080", held by other processes
	foreign     map[netip.Addr]bool
	first, last uint16
	sessions    int
}

func newFakeHost() *fakeHost {
	return &fakeHost{held: map[string]bool{}, foreign: map[netip.Addr]bool{ip("203.0.113.99"): true}, first: 40000, last: 40009}
}

func (h *fakeHost) hold(proto Proto, addr string) { h.held[string(proto)+" "+addr] = true }

func (h *fakeHost) Probe(ctx context.Context, fn func(Prober) error) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.sessions++
	return fn(h)
}

func (h *fakeHost) Bind(proto Proto, ap netip.AddrPort) error {
	if h.foreign[ap.Addr()] {
		return unix.EADDRNOTAVAIL
	}
	for k := range h.held {
		var p string
		var held netip.AddrPort
		if _, err := fmt.Sscan(k, &p); err != nil {
			panic(err)
		}
		held = netip.MustParseAddrPort(k[len(p)+1:])
		if p == string(proto) && held.Port() == ap.Port() && held.Addr().Is4() == ap.Addr().Is4() &&
			(held.Addr() == ap.Addr() || held.Addr().IsUnspecified() || ap.Addr().IsUnspecified()) {
			return unix.EADDRINUSE
		}
	}
	return nil
}

func (h *fakeHost) BindAll(proto Proto, port uint16) error {
	if err := h.Bind(proto, netip.AddrPortFrom(netip.IPv4Unspecified(), port)); err != nil {
		return err
	}
	return h.Bind(proto, netip.AddrPortFrom(netip.IPv6Unspecified(), port))
}

func (h *fakeHost) PortRange() (uint16, uint16, error) { return h.first, h.last, nil }

var (
	c4  = ip("172.17.0.2")
	c6  = ip("fd00:17::2")
	c4b = ip("172.17.0.3")
	no  = netip.Addr{}
)

func specs(t *testing.T, ss ...string) []Spec {
	t.Helper()
	var out []Spec
	for _, s := range ss {
		sp, err := ParseSpec(s)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, sp...)
	}
	return out
}

func bnd(host string, port uint16, proto Proto, ctr netip.Addr, ctrPort uint16) Binding {
	return Binding{HostIP: ip(host), HostPort: port, Proto: proto, ContainerIP: ctr, ContainerPort: ctrPort}
}

func newTestAllocator() (*Allocator, *fakeHost) {
	h := newFakeHost()
	return NewAllocator(h, nil), h
}

func TestAllocateBindings(t *testing.T) {
	for _, tc := range []struct {
		name           string
		specs          []string
		ip4, ip6, def4 netip.Addr
		want           []Binding
	}{
		{"IPv4 container: both families, :: proxied to IPv4", []string{"8080:80"}, c4, no, no,
			[]Binding{bnd("0.0.0.0", 8080, TCP, c4, 80), bnd("::", 8080, TCP, c4, 80)}},
		{"dual-stack container: both families", []string{"8080:80/udp"}, c4, c6, no,
			[]Binding{bnd("0.0.0.0", 8080, UDP, c4, 80), bnd("::", 8080, UDP, c6, 80)}},
		{"IPv6-only container: 0.0.0.0 proxied to IPv6", []string{"8080:80"}, no, c6, no,
			[]Binding{bnd("0.0.0.0", 8080, TCP, c6, 80), bnd("::", 8080, TCP, c6, 80)}},
		{"host IP of the family the container lacks", []string{"[::1]:8080:80"}, c4, no, no,
			[]Binding{bnd("::1", 8080, TCP, c4, 80)}},
		{"host IP", []string{"198.51.100.1:8080:80", "[2001:db8::1]:8080:80"}, c4, c6, no,
			[]Binding{bnd("198.51.100.1", 8080, TCP, c4, 80), bnd("2001:db8::1", 8080, TCP, c6, 80)}},
		{"default host IP replaces both wildcards", []string{"8080:80"}, c4, c6, ip("198.51.100.1"),
			[]Binding{bnd("198.51.100.1", 8080, TCP, c4, 80)}},
		{"default host IP 0.0.0.0 is the default", []string{"8080:80"}, c4, c6, ip("0.0.0.0"),
			[]Binding{bnd("0.0.0.0", 8080, TCP, c4, 80), bnd("::", 8080, TCP, c6, 80)}},
		{"explicit host IP beats the default", []string{"127.0.0.1:8080:80"}, c4, no, ip("198.51.100.1"),
			[]Binding{bnd("127.0.0.1", 8080, TCP, c4, 80)}},
		{"ranges map one-to-one", []string{"8000-8002:80-82"}, c4, c6, no,
			[]Binding{bnd("0.0.0.0", 8000, TCP, c4, 80), bnd("::", 8000, TCP, c6, 80), bnd("0.0.0.0", 8001, TCP, c4, 81),
				bnd("::", 8001, TCP, c6, 81), bnd("0.0.0.0", 8002, TCP, c4, 82), bnd("::", 8002, TCP, c6, 82)}},
		{"same port, other protocols and addresses", []string{"53:53/udp", "53:53/tcp", "198.51.100.1:54:53/sctp"}, c4, no, no,
			[]Binding{bnd("0.0.0.0", 53, UDP, c4, 53), bnd("::", 53, UDP, c4, 53), bnd("0.0.0.0", 53, TCP, c4, 53),
				bnd("::", 53, TCP, c4, 53), bnd("198.51.100.1", 54, SCTP, c4, 53)}},
	} {
		a, _ := newTestAllocator()
		got, err := a.Allocate(t.Context(), "c1", specs(t, tc.specs...), tc.ip4, tc.ip6, tc.def4)
		if err != nil {
			t.Errorf("%s: %v", tc.name, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, equateAddr); diff != "" {
			t.Errorf("%s (-want +got):\n%s", tc.name, diff)
		}
		if diff := cmp.Diff(got, a.Bindings("c1"), equateAddr); diff != "" {
			t.Errorf("%s: Bindings (-allocated +listed):\n%s", tc.name, diff)
		}
	}
}

// mustConflict checks err is Docker's conflict error for hostPort.
func mustConflict(t *testing.T, err error, hostPort string) {
	t.Helper()
	want := "Bind for " + hostPort + " failed: port is already allocated"
	if err == nil || err.Error() != want || !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("err = %v (%v), want Conflict %q", err, errdefs.KindOf(err), want)
	}
}

func TestAllocateConflicts(t *testing.T) {
	ctx := t.Context()
	a, h := newTestAllocator()
	h.hold(TCP, "0.0.0.0:7070")
	h.hold(TCP, "127.0.0.1:7071")
	h.hold(UDP, "[::]:7072")
	if _, err := a.Allocate(ctx, "c1", specs(t, "8080:80", "198.51.100.1:8081:81", "[::]:8082:82"), c4, c6, no); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		spec     string
		conflict string // "" = no conflict
	}{
		{"8080:80", "0.0.0.0:8080"},
		{"198.51.100.1:8080:80", "198.51.100.1:8080"}, // under the wildcard
		{"0.0.0.0:8081:80", "0.0.0.0:8081"},           // over a specific address
		{"198.51.100.1:8081:80", "198.51.100.1:8081"},
		{"[::]:8082:80", "[::]:8082"},
		{"8082:80", "[::]:8082"},      // the IPv4 half is free, the IPv6 half is not
		{"7070:80", "0.0.0.0:7070"},   // bound by another process
		{"7071:80", "0.0.0.0:7071"},   // a process holds one address
		{"8080:80/udp", ""},           // other protocol
		{"203.0.113.1:8081:80", ""},   // other address
		{"0.0.0.0:8082:80", ""},       // other family
		{"127.0.0.1:7070:80/udp", ""}, // UDP is another protocol
		{"0.0.0.0:7072:80/udp", ""},   // the process holds IPv6 only
		{"8083:80", ""},               // free
	} {
		a2, h2 := newTestAllocator() // start over from the same state
		h2.held = h.held
		if _, err := a2.Allocate(ctx, "c1", specs(t, "8080:80", "198.51.100.1:8081:81", "[::]:8082:82"), c4, c6, no); err != nil {
			t.Fatal(err)
		}
		_, err := a2.Allocate(ctx, "c2", specs(t, tc.spec), c4b, ip("fd00:17::3"), no)
		if tc.conflict == "" {
			if err != nil {
				t.Errorf("%s: %v", tc.spec, err)
			}
			continue
		}
		mustConflict(t, err, tc.conflict)
		if len(a2.Bindings("c2")) != 0 {
			t.Errorf("%s: a failed Allocate kept ports", tc.spec)
		}
	}
}

func TestAllocateRollsBackEverything(t *testing.T) {
	ctx := t.Context()
	a, _ := newTestAllocator()
	if _, err := a.Allocate(ctx, "c1", specs(t, "8080:80"), c4, no, no); err != nil {
		t.Fatal(err)
	}
	// The first specs fit, the last does not: nothing may stay reserved.
	_, err := a.Allocate(ctx, "c2", specs(t, "9090:90", "9091-9092:91-92", "0:93", "8080:80"), c4b, no, no)
	mustConflict(t, err, "0.0.0.0:8080")
	got, err := a.Allocate(ctx, "c3", specs(t, "9090:90", "9091-9092:91-92"), c4b, no, no)
	if err != nil || len(got) != 6 { // three ports, both families
		t.Fatalf("ports of the failed request are still taken: %v, %v", got, err)
	}
	// Two specs of one request conflict with each other.
	_, err = a.Allocate(ctx, "c4", specs(t, "7000:80", "7000:81"), c4b, no, no)
	mustConflict(t, err, "0.0.0.0:7000")
	if len(a.Bindings("c4")) != 0 {
		t.Error("c4 kept ports")
	}
}

func TestAllocateEphemeral(t *testing.T) {
	ctx := t.Context()
	a, h := newTestAllocator() // range 40000-40009
	h.hold(TCP, "0.0.0.0:40001")
	h.hold(TCP, "[::]:40003")
	port := func(owner string, spec string, ip6 netip.Addr) uint16 {
		t.Helper()
		bs, err := a.Allocate(ctx, owner, specs(t, spec), c4, ip6, no)
		if err != nil {
			t.Fatalf("%s: %v", spec, err)
		}
		for _, b := range bs[1:] {
			if b.HostPort != bs[0].HostPort {
				t.Fatalf("%s: families got different ports: %v", spec, bs)
			}
		}
		return bs[0].HostPort
	}
	var got []uint16
	for i := range 4 {
		got = append(got, port(fmt.Sprint("e", i), "80", c6))
	}
	// 40001 is held (IPv4), 40003 too (IPv6, and both families need it).
	if want := []uint16{40000, 40002, 40004, 40005}; !slices.Equal(got, want) {
		t.Errorf("ephemeral ports %v, want %v", got, want)
	}
	if p := port("u", "80/udp", c6); p != 40000 {
		t.Errorf("UDP has its own ports: got %d, want 40000", p)
	}
	a.Release("e0")
	if p := port("e4", "80", no); p != 40006 { // IPv4-only: both families still
		t.Errorf("after a release: got %d, want 40006 (no immediate reuse)", p)
	}
	for i := range 3 { // 40007-40009
		port(fmt.Sprint("f", i), "80", no)
	}
	if p := port("wrap", "80", no); p != 40000 {
		t.Errorf("wrapping around: got %d, want 40000", p)
	}
	// 40003 is held for IPv6 only: a binding on 0.0.0.0 alone still fits there.
	if bs, err := a.Allocate(ctx, "last", specs(t, "0.0.0.0::80"), c4, no, no); err != nil || bs[0].HostPort != 40003 {
		t.Errorf("the last free IPv4 port: got %v, %v; want 40003", bs, err)
	}
	_, err := a.Allocate(ctx, "full", specs(t, "80"), c4, no, no)
	if !errdefs.Is(err, errdefs.KindUnavailable) {
		t.Errorf("exhausted range: %v, want Unavailable", err)
	}
}

func TestAllocateHostRangePicksFirstFree(t *testing.T) {
	ctx := t.Context()
	a, h := newTestAllocator()
	h.hold(TCP, "0.0.0.0:8001")
	if _, err := a.Allocate(ctx, "c1", specs(t, "8000:80"), c4, no, no); err != nil {
		t.Fatal(err)
	}
	bs, err := a.Allocate(ctx, "c2", specs(t, "8000-8005:80"), c4b, no, no)
	if err != nil || len(bs) != 2 || bs[0].HostPort != 8002 || bs[1].HostPort != 8002 {
		t.Fatalf("got %v, %v; want host port 8002", bs, err)
	}
	_, err = a.Allocate(ctx, "c3", specs(t, "8000-8002:80"), c4b, no, no)
	if !errdefs.Is(err, errdefs.KindConflict) {
		t.Errorf("full host range: %v, want Conflict", err)
	}
}

func TestAllocateInvalid(t *testing.T) {
	ctx := t.Context()
	for _, tc := range []struct {
		name           string
		specs          []Spec
		ip4, ip6, def4 netip.Addr
		kind           errdefs.Kind
	}{
		{"no container address", specs(t, "80"), no, no, no, errdefs.KindInvalidArgument},
		{"host IP, no container address", specs(t, "127.0.0.1:80:80"), no, no, no, errdefs.KindInvalidArgument},
		{"address not on the host", specs(t, "203.0.113.99:80:80"), c4, no, no, errdefs.KindInvalidArgument},
		{"swapped container addresses", specs(t, "80"), c6, c4, no, errdefs.KindInvalidArgument},
		{"IPv6 default host IP", specs(t, "80"), c4, no, c6, errdefs.KindInvalidArgument},
		{"unknown protocol", []Spec{{ContainerPort: 80, Proto: "icmp"}}, c4, no, no, errdefs.KindInvalidArgument},
		{"no container port", []Spec{{Proto: TCP}}, c4, no, no, errdefs.KindInvalidArgument},
		{"ranges of different lengths", []Spec{{HostPort: 1, HostPortEnd: 2, ContainerPort: 1, ContainerPortEnd: 3, Proto: TCP}}, c4, no, no, errdefs.KindInvalidArgument},
	} {
		a, _ := newTestAllocator()
		_, err := a.Allocate(ctx, "c", tc.specs, tc.ip4, tc.ip6, tc.def4)
		if errdefs.KindOf(err) != tc.kind {
			t.Errorf("%s: %v (%v), want %v", tc.name, err, errdefs.KindOf(err), tc.kind)
		}
	}
}

func TestAllocateUnexpandedRange(t *testing.T) {
	a, _ := newTestAllocator()
	bs, err := a.Allocate(t.Context(), "c", []Spec{{HostPort: 9000, HostPortEnd: 9001, ContainerPort: 80, ContainerPortEnd: 81, Proto: UDP}}, c4, no, no)
	want := []Binding{bnd("0.0.0.0", 9000, UDP, c4, 80), bnd("::", 9000, UDP, c4, 80), bnd("0.0.0.0", 9001, UDP, c4, 81), bnd("::", 9001, UDP, c4, 81)}
	if diff := cmp.Diff(want, bs, equateAddr); err != nil || diff != "" {
		t.Errorf("%v (-want +got):\n%s", err, diff)
	}
}

func TestAllocateProbesInOneSession(t *testing.T) {
	a, h := newTestAllocator()
	if _, err := a.Allocate(t.Context(), "c", specs(t, "1-50", "8000-8049:1-50/udp"), c4, c6, no); err == nil {
		t.Fatal("want exhaustion of the 10-port ephemeral range")
	}
	h.last = 40099
	if _, err := a.Allocate(t.Context(), "c", specs(t, "1-50", "8000-8049:1-50/udp"), c4, c6, no); err != nil {
		t.Fatal(err)
	}
	if h.sessions != 2 {
		t.Errorf("%d namespace switches for 2 Allocate calls", h.sessions)
	}
}

func TestReleaseAndReserve(t *testing.T) {
	ctx := t.Context()
	a, _ := newTestAllocator()
	bs, err := a.Allocate(ctx, "c1", specs(t, "8080:80", "0:81"), c4, c6, no)
	if err != nil {
		t.Fatal(err)
	}
	released := a.Release("c1")
	if diff := cmp.Diff(bs, released, equateAddr); diff != "" {
		t.Errorf("Release (-allocated +released):\n%s", diff)
	}
	if a.Release("c1") != nil {
		t.Error("second Release returned bindings")
	}
	// After a restart the records are reserved again without probing.
	b, h := newTestAllocator()
	h.hold(TCP, "0.0.0.0:8080") // our own DNAT serves it; a probe would fail
	if err := b.Reserve("c1", bs); err != nil {
		t.Fatal(err)
	}
	_, err = b.Allocate(ctx, "c2", specs(t, "8080:80"), c4b, no, no)
	mustConflict(t, err, "0.0.0.0:8080")
	if err := b.Reserve("c3", bs[:1]); !errdefs.Is(err, errdefs.KindConflict) {
		t.Errorf("reserving a held port: %v", err)
	}
	if err := b.Reserve("c4", []Binding{bnd("0.0.0.0", 9, TCP, c4, 9), bnd("198.51.100.1", 9, TCP, c4, 9)}); !errdefs.Is(err, errdefs.KindConflict) {
		t.Errorf("reserving overlapping ports at once: %v", err)
	}
	if len(b.Bindings("c4")) != 0 {
		t.Error("a failed Reserve kept ports")
	}
}
