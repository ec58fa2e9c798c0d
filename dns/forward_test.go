package dns

import (
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	mdns "github.com/miekg/dns"
	"github.com/piernet/pier/internal/nstest"
)

func ups(a ...netip.AddrPort) []netip.AddrPort { return a }

func TestForwardCachesAndAgesTTL(t *testing.T) {
	s := newTestServer(t, Options{})
	clock := useFakeClock(s.cache)
	f := newFakeUpstreams()
	up := f.handle("192.0.2.53:53", answerA("203.0.113.80", 60))
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(up)}, f)

	m := sb.query(t, "Example.COM.", mdns.TypeA)
	if got := answers(m); len(got) != 1 || got[0] != "203.0.113.80" || m.Answer[0].Header().Ttl != 60 {
		t.Fatalf("first reply %s", m)
	}
	clock.advance(25 * time.Second)
	m = sb.query(t, "eXample.com.", mdns.TypeA)
	if f.queries(up) != 1 {
		t.Fatalf("upstream asked %d times, want 1 (cache hit)", f.queries(up))
	}
	if m.Answer[0].Header().Ttl != 35 || m.Question[0].Name != "eXample.com." || m.Answer[0].Header().Name != "eXample.com." {
		t.Fatalf("cached reply %s: want TTL 35 and the client's spelling", m)
	}
	clock.advance(36 * time.Second)
	sb.query(t, "example.com.", mdns.TypeA)
	if f.queries(up) != 2 {
		t.Fatalf("upstream asked %d times after expiry, want 2", f.queries(up))
	}
}

func TestNegativeCaching(t *testing.T) {
	s := newTestServer(t, Options{})
	clock := useFakeClock(s.cache)
	f := newFakeUpstreams()
	up := f.handle("192.0.2.53:53", func(q *mdns.Msg) *mdns.Msg {
		r := new(mdns.Msg)
		r.SetRcode(q, mdns.RcodeNameError)
		if strings.HasPrefix(q.Question[0].Name, "soa") {
			r.Ns = []mdns.RR{&mdns.SOA{Hdr: mdns.RR_Header{Name: "example.", Rrtype: mdns.TypeSOA, Class: 1, Ttl: 300},
				Ns: "ns.example.", Mbox: "h.example.", Minttl: 30}}
		}
		return r
	})
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(up)}, f)
	for range 2 {
		if m := sb.query(t, "soa.example.", mdns.TypeA); m.Rcode != mdns.RcodeNameError {
			t.Fatalf("rcode %s", mdns.RcodeToString[m.Rcode])
		}
		sb.query(t, "nosoa.example.", mdns.TypeA)
	}
	if n := f.queries(up); n != 3 {
		t.Fatalf("upstream asked %d times, want 3 (NXDOMAIN with SOA cached, without not)", n)
	}
	clock.advance(31 * time.Second) // SOA MINIMUM 30 < SOA TTL 300
	sb.query(t, "soa.example.", mdns.TypeA)
	if n := f.queries(up); n != 4 {
		t.Fatalf("upstream asked %d times, want 4 (negative entry expired)", n)
	}
}

func TestCacheTTL(t *testing.T) {
	a := func(ttl uint32) mdns.RR { return &mdns.A{Hdr: mdns.RR_Header{Rrtype: mdns.TypeA, Ttl: ttl}} }
	soa := func(ttl, minttl uint32) mdns.RR {
		return &mdns.SOA{Hdr: mdns.RR_Header{Rrtype: mdns.TypeSOA, Ttl: ttl}, Minttl: minttl}
	}
	tests := []struct {
		name string
		m    mdns.Msg
		want uint32
	}{
		{"lowest answer TTL", mdns.Msg{Answer: []mdns.RR{a(300), a(20)}}, 20},
		{"capped", mdns.Msg{Answer: []mdns.RR{a(86400)}}, maxPositiveTTL},
		{"zero", mdns.Msg{Answer: []mdns.RR{a(0)}}, 0},
		{"NODATA: SOA minimum", mdns.Msg{Ns: []mdns.RR{soa(300, 60)}}, 60},
		{"NXDOMAIN: SOA TTL", mdns.Msg{MsgHdr: mdns.MsgHdr{Rcode: mdns.RcodeNameError}, Ns: []mdns.RR{soa(10, 60)}}, 10},
		{"negative capped", mdns.Msg{MsgHdr: mdns.MsgHdr{Rcode: mdns.RcodeNameError}, Ns: []mdns.RR{soa(86400, 86400)}}, maxNegativeTTL},
		{"NODATA without SOA", mdns.Msg{}, 0},
		{"SERVFAIL", mdns.Msg{MsgHdr: mdns.MsgHdr{Rcode: mdns.RcodeServerFailure}, Ns: []mdns.RR{soa(60, 60)}}, 0},
	}
	for _, tt := range tests {
		if got := cacheTTL(&tt.m); got != tt.want {
			t.Errorf("%s: cacheTTL = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestCacheEvictsLeastRecentlyUsed(t *testing.T) {
	c := newCache(cacheShards) // one entry per shard
	e := &entry{msg: make([]byte, headerLen), expiry: 1 << 62}
	for i := range 200 {
		c.put(string(rune(i)), e)
	}
	if n := c.len(); n > cacheShards {
		t.Fatalf("cache holds %d entries, capacity %d", n, cacheShards)
	}
	if newCache(-1).put("k", e); newCache(-1).len() != 0 {
		t.Fatal("disabled cache stored an entry")
	}
}

func TestHedgingSkipsBlackholedUpstream(t *testing.T) {
	s := newTestServer(t, Options{HedgeDelay: 20 * time.Millisecond})
	f := newFakeUpstreams()
	dead := f.handle("192.0.2.1:53", nil)
	live := f.handle("192.0.2.2:53", answerA("203.0.113.1", 60))
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(dead, live)}, f)
	if got := answers(sb.query(t, "one.example.", mdns.TypeA)); len(got) != 1 {
		t.Fatalf("answers %v", got)
	}
	sb.query(t, "two.example.", mdns.TypeA)
	if f.queries(dead) != 1 || f.queries(live) != 2 {
		t.Fatalf("dead asked %d times, live %d: the slow upstream should move back", f.queries(dead), f.queries(live))
	}
}

func TestFailingUpstreamHandsOverAtOnce(t *testing.T) {
	s := newTestServer(t, Options{HedgeDelay: time.Hour, UpstreamTimeout: 5 * time.Second})
	f := newFakeUpstreams()
	bad := f.handle("192.0.2.1:53", rcode(mdns.RcodeServerFailure))
	good := f.handle("192.0.2.2:53", answerA("203.0.113.1", 60))
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(bad, good)}, f)
	start := time.Now()
	if got := answers(sb.query(t, "one.example.", mdns.TypeA)); len(got) != 1 {
		t.Fatalf("answers %v", got)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("took %v: SERVFAIL from the first upstream should start the next at once", d)
	}
	order := rank(sb.cfg.Load().upstreams, time.Now())
	if order[0].addr != good {
		t.Fatalf("failing upstream still ranked first")
	}
}

func TestAllUpstreamsFailIsServfailInTime(t *testing.T) {
	s := newTestServer(t, Options{UpstreamTimeout: 300 * time.Millisecond, HedgeDelay: 50 * time.Millisecond})
	f := newFakeUpstreams()
	a, b := f.handle("192.0.2.1:53", nil), f.handle("192.0.2.2:53", nil)
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(a, b)}, f)
	start := time.Now()
	if m := sb.query(t, "x.example.", mdns.TypeA); m.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("rcode %s", mdns.RcodeToString[m.Rcode])
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("SERVFAIL after %v, timeout 300ms", d)
	}
	if f.queries(a) != 1 || f.queries(b) != 1 {
		t.Fatalf("asked %d and %d times, want both once", f.queries(a), f.queries(b))
	}
}

func TestIdenticalQuestionsShareOneUpstreamQuery(t *testing.T) {
	s := newTestServer(t, Options{})
	f := newFakeUpstreams()
	release := make(chan struct{})
	up := f.handle("192.0.2.1:53", func(q *mdns.Msg) *mdns.Msg {
		<-release
		return answerA("203.0.113.1", 60)(q)
	})
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(up)}, f)
	var wg sync.WaitGroup
	for range 10 {
		wg.Go(func() { sb.query(t, "same.example.", mdns.TypeA) })
	}
	nstest.Eventually(t, "one flight and one upstream query", 5*time.Second, func() bool {
		s.flights.mu.Lock()
		defer s.flights.mu.Unlock()
		return len(s.flights.m) == 1 && f.queries(up) == 1
	})
	close(release)
	wg.Wait()
	if n := f.queries(up); n != 1 {
		t.Fatalf("upstream asked %d times, want 1", n)
	}
}

func TestMaxInFlightAnswersServfail(t *testing.T) {
	s := newTestServer(t, Options{MaxInFlight: 1})
	f := newFakeUpstreams()
	up := f.handle("192.0.2.1:53", answerA("203.0.113.1", 60))
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(up)}, f)
	sb.sem <- struct{}{} // the only slot is taken
	reply, _ := sb.answerTCP(nil, pack(t, "x.example.", mdns.TypeA, 0), newScratch())
	if m := unpack(t, reply); m.Rcode != mdns.RcodeServerFailure || f.queries(up) != 0 {
		t.Fatalf("rcode %s, upstream asked %d times", mdns.RcodeToString[m.Rcode], f.queries(up))
	}
	<-sb.sem
	reply, _ = sb.answerTCP(nil, pack(t, "x.example.", mdns.TypeA, 0), newScratch())
	if m := unpack(t, reply); m.Rcode != 0 || len(sb.sem) != 0 {
		t.Fatalf("after release: %s, %d slots held", m, len(sb.sem))
	}
}

func TestInternalSandboxNeverForwards(t *testing.T) {
	s := newTestServer(t, Options{})
	world(s)
	f := newFakeUpstreams()
	up := f.handle("192.0.2.1:53", answerA("203.0.113.1", 60))
	cfg := SandboxConfig{ID: "sb-client", Upstreams: ups(up), Internal: true}
	sb := fakeSandbox(t, s, cfg, f)
	s.mu.Lock()
	s.sandboxes[cfg.ID] = sb
	s.mu.Unlock()
	for _, name := range []string{"example.com.", "1.2.0.192.in-addr.arpa."} {
		if m := sb.query(t, name, mdns.TypeA); m.Rcode != mdns.RcodeNameError {
			t.Fatalf("%s: rcode %s, want NXDOMAIN", name, mdns.RcodeToString[m.Rcode])
		}
	}
	if got := answers(sb.query(t, "web.", mdns.TypeA)); len(got) != 1 {
		t.Fatalf("local name: %v", got)
	}
	cfg.Internal = false // e.g. connected to a non-internal network
	if err := s.UpdateSandbox(cfg); err != nil {
		t.Fatal(err)
	}
	if got := answers(sb.query(t, "example.com.", mdns.TypeA)); len(got) != 1 {
		t.Fatalf("after update: %v", got)
	}
	if n := f.queries(up); n != 1 {
		t.Fatalf("upstream asked %d times, want 1 (only after the update)", n)
	}
}

// bigTXT answers with enough TXT data to exceed 1232 bytes; over UDP it
// behaves like a real server and truncates.
func bigTXT(f *fakeUpstreams, size int) func(q *mdns.Msg) *mdns.Msg {
	return func(q *mdns.Msg) *mdns.Msg {
		r := new(mdns.Msg)
		r.SetReply(q)
		for i := 0; i < size/200; i++ {
			r.Answer = append(r.Answer, &mdns.TXT{Hdr: mdns.RR_Header{Name: q.Question[0].Name, Rrtype: mdns.TypeTXT, Class: 1, Ttl: 60},
				Txt: []string{strings.Repeat(string(rune('a'+i%26)), 200)}})
		}
		f.mu.Lock()
		tcp := f.tcp > 0
		f.mu.Unlock()
		if !tcp && r.Len() > ownUDPSize {
			r.Truncate(ownUDPSize)
		}
		return r
	}
}

func TestTruncatedUpstreamReplyRetriedOverTCP(t *testing.T) {
	s := newTestServer(t, Options{})
	f := newFakeUpstreams()
	up := f.handle("192.0.2.1:53", nil)
	f.handle(up.String(), bigTXT(f, 3000))
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(up)}, f)
	m := unpack(t, sb.ask(pack(t, "big.example.", mdns.TypeTXT, 4096), false))
	if !m.Truncated {
		t.Fatalf("UDP reply not truncated: %d answers", len(m.Answer))
	}
	m = unpack(t, sb.ask(pack(t, "big.example.", mdns.TypeTXT, 0), true))
	if m.Truncated || len(m.Answer) != 15 {
		t.Fatalf("TCP reply: TC=%v, %d answers", m.Truncated, len(m.Answer))
	}
	// Now cached whole: UDP clients get it cut to their size.
	for _, size := range []uint16{0, 1232} {
		b := sb.ask(pack(t, "big.example.", mdns.TypeTXT, size), false)
		if m := unpack(t, b); !m.Truncated || len(b) > max(int(size), 512) {
			t.Fatalf("EDNS %d: %d bytes, TC=%v", size, len(b), m.Truncated)
		}
	}
}

func TestRemovedSandboxStopsWaiting(t *testing.T) {
	s := newTestServer(t, Options{UpstreamTimeout: time.Minute})
	f := newFakeUpstreams()
	up := f.handle("192.0.2.1:53", nil)
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(up)}, f)
	done := make(chan *mdns.Msg)
	go func() { done <- sb.query(t, "x.example.", mdns.TypeA) }()
	nstest.Eventually(t, "one upstream query", 5*time.Second, func() bool { return f.queries(up) == 1 })
	sb.cancel()
	if m := <-done; m.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("rcode %s", mdns.RcodeToString[m.Rcode])
	}
	sb.wg.Wait()
}
