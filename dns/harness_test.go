package dns

import (
	"context"
	"net/netip"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
)

// newTestServer returns a started Server without sandboxes.
func newTestServer(t testing.TB, opts Options) *Server {
	t.Helper()
	s := New(opts)
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

// fakeSandbox is a sandbox without sockets: queries go through handle and
// resolveReply directly, upstream exchanges through ex.
func fakeSandbox(t testing.TB, s *Server, cfg SandboxConfig, ex exchanger) *sandbox {
	t.Helper()
	sb := s.newSandbox(cfg.ID, ex)
	sb.ctx, sb.cancel = context.WithCancel(context.Background())
	t.Cleanup(func() { sb.cancel(); sb.wg.Wait() })
	s.mu.Lock()
	sb.cfg.Store(newConfig(cfg, nil, s.groupLocked(cfg.Upstreams)))
	s.mu.Unlock()
	return sb
}

// ask sends a query the way a reader does (handle, then resolveReply on a miss)
// and returns the raw reply (nil when dropped).
func (sb *sandbox) ask(pkt []byte, tcp bool) []byte {
	limit := 0
	if tcp {
		limit = maxTCPMessage
	}
	sc := newScratch()
	reply, act := sb.handle(nil, pkt, limit, sc)
	switch act {
	case actDrop:
		return nil
	case actForward:
		if limit == 0 {
			limit = sc.q.udpLimit()
		}
		return sb.resolveReply(nil, pkt, &sc.q, limit, tcp)
	}
	return reply
}

// query asks name/qtype over UDP without EDNS and unpacks the reply.
func (sb *sandbox) query(t testing.TB, name string, qtype uint16) *mdns.Msg {
	t.Helper()
	return unpack(t, sb.ask(pack(t, name, qtype, 0), false))
}

func unpack(t testing.TB, b []byte) *mdns.Msg {
	t.Helper()
	m := new(mdns.Msg)
	if err := m.Unpack(b); err != nil {
		t.Fatalf("unpacking reply %x: %v", b, err)
	}
	return m
}

// answers lists the A/AAAA/PTR answers as strings.
func answers(m *mdns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch rr := rr.(type) {
		case *mdns.A:
			out = append(out, rr.A.String())
		case *mdns.AAAA:
			out = append(out, rr.AAAA.String())
		case *mdns.PTR:
			out = append(out, rr.Ptr)
		default:
			out = append(out, rr.String())
		}
	}
	return out
}

// fakeUpstreams answers upstream queries in memory. A missing handler, or one
// returning nil, is a black hole: the exchange waits for its context.
type fakeUpstreams struct {
	mu       sync.Mutex // guards the fields below
	handlers map[netip.AddrPort]func(q *mdns.Msg) *mdns.Msg
	count    map[netip.AddrPort]int
	tcp      int
}

func newFakeUpstreams() *fakeUpstreams {
	return &fakeUpstreams{handlers: map[netip.AddrPort]func(*mdns.Msg) *mdns.Msg{}, count: map[netip.AddrPort]int{}}
}

func (f *fakeUpstreams) handle(up string, h func(q *mdns.Msg) *mdns.Msg) netip.AddrPort {
	a := netip.MustParseAddrPort(up)
	f.mu.Lock()
	defer f.mu.Unlock()
	f.handlers[a] = h
	return a
}

func (f *fakeUpstreams) queries(up netip.AddrPort) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.count[up]
}

func (f *fakeUpstreams) exchange(ctx context.Context, up netip.AddrPort, msg []byte, tcp bool, accept func([]byte) bool) ([]byte, error) {
	f.mu.Lock()
	f.count[up]++
	if tcp {
		f.tcp++
	}
	h := f.handlers[up]
	f.mu.Unlock()
	q := new(mdns.Msg)
	if err := q.Unpack(msg); err != nil {
		return nil, err
	}
	var r *mdns.Msg
	if h != nil {
		r = h(q)
	}
	if r == nil {
		<-ctx.Done()
		return nil, ctx.Err()
	}
	b, err := r.Pack()
	if err != nil {
		return nil, err
	}
	if !accept(b) {
		return nil, errMismatch
	}
	return b, nil
}

// answerA is an upstream handler answering every A query with addr and ttl.
func answerA(addr string, ttl uint32) func(q *mdns.Msg) *mdns.Msg {
	return func(q *mdns.Msg) *mdns.Msg {
		r := new(mdns.Msg)
		r.SetReply(q)
		if q.Question[0].Qtype == mdns.TypeA {
			r.Answer = append(r.Answer, &mdns.A{
				Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeA, Class: mdns.ClassINET, Ttl: ttl},
				A:   netip.MustParseAddr(addr).AsSlice(),
			})
		}
		return r
	}
}

// rcode is an upstream handler answering every query with an empty reply of rcode.
func rcode(code int) func(q *mdns.Msg) *mdns.Msg {
	return func(q *mdns.Msg) *mdns.Msg {
		r := new(mdns.Msg)
		r.SetRcode(q, code)
		return r
	}
}

// fakeClock replaces the cache clock; advance moves it.
type fakeClock struct {
	mu sync.Mutex
	t  int64
}

func useFakeClock(c *cache) *fakeClock {
	fc := &fakeClock{t: int64(time.Hour)}
	c.clock = func() int64 { fc.mu.Lock(); defer fc.mu.Unlock(); return fc.t }
	return fc
}

func (fc *fakeClock) advance(d time.Duration) {
	fc.mu.Lock()
	defer fc.mu.Unlock()
	fc.t += int64(d)
}
