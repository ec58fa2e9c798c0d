package dns

import (
	"net/netip"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	mdns "github.com/miekg/dns"
)

// world is two networks: frontend (web, client, api1-3 sharing the alias "api")
// and backend (web again, db).
func world(s *Server) {
	rec := func(ep, nid, nname, sb string, names []string, a4, a6 string) {
		r := Record{NetworkID: nid, NetworkName: nname, EndpointID: ep, SandboxID: sb, Names: names}
		if a4 != "" {
			r.Addr4 = netip.MustParseAddr(a4)
		}
		if a6 != "" {
			r.Addr6 = netip.MustParseAddr(a6)
		}
		s.Upsert(r)
	}
	rec("ep-web1", "n1", "Frontend", "sb-web", []string{"web", "www", "0123456789ab"}, "172.20.0.2", "fd00:1::2")
	rec("ep-web2", "n2", "backend", "sb-web", []string{"web"}, "172.21.0.2", "")
	rec("ep-db", "n2", "backend", "sb-db", []string{"db"}, "172.21.0.3", "")
	rec("ep-client", "n1", "frontend", "sb-client", []string{"client"}, "172.20.0.3", "")
	for i, a := range []string{"172.20.0.4", "172.20.0.5", "172.20.0.6"} {
		n := string(rune('1' + i))
		rec("ep-api"+n, "n1", "frontend", "sb-api"+n, []string{"api" + n, "api"}, a, "")
	}
}

func TestLocalNames(t *testing.T) {
	s := newTestServer(t, Options{})
	world(s)
	client := fakeSandbox(t, s, SandboxConfig{ID: "sb-client", Internal: true, Search: []string{"corp.example."},
		Links: map[string]string{"Webby": "web", "dbx": "db"}}, nil)
	web := fakeSandbox(t, s, SandboxConfig{ID: "sb-web", Internal: true}, nil)
	tests := []struct {
		sb    *sandbox
		name  string
		qtype uint16
		rcode int
		want  []string
	}{
		{client, "web.", mdns.TypeA, 0, []string{"172.20.0.2"}},
		{client, "WeB.", mdns.TypeA, 0, []string{"172.20.0.2"}},
		{client, "www.", mdns.TypeA, 0, []string{"172.20.0.2"}},
		{client, "0123456789AB.", mdns.TypeA, 0, []string{"172.20.0.2"}},
		{client, "web.frontend.", mdns.TypeA, 0, []string{"172.20.0.2"}},
		{client, "web.corp.example.", mdns.TypeA, 0, []string{"172.20.0.2"}},
		{client, "web.backend.", mdns.TypeA, mdns.RcodeNameError, nil},
		{client, "db.", mdns.TypeA, mdns.RcodeNameError, nil}, // scoping: db is only on backend
		{client, "web.", mdns.TypeAAAA, 0, []string{"fd00:1::2"}},
		{client, "api.", mdns.TypeAAAA, 0, nil}, // known name without IPv6: NOERROR, empty
		{client, "web.", mdns.TypeMX, 0, nil},
		{client, "web.", mdns.TypeTXT, 0, nil},
		{client, "2.0.20.172.in-addr.arpa.", mdns.TypePTR, 0, []string{"web.frontend."}},
		{client, reverse6("fd00:1::2") + ".", mdns.TypePTR, 0, []string{"web.frontend."}},
		{client, "3.0.21.172.in-addr.arpa.", mdns.TypePTR, mdns.RcodeNameError, nil},
		{web, "web.", mdns.TypeA, 0, []string{"172.21.0.2", "172.20.0.2"}}, // on both networks
		{web, "db.", mdns.TypeA, 0, []string{"172.21.0.3"}},
		{web, "db.backend.", mdns.TypeA, 0, []string{"172.21.0.3"}},
		{web, "2.0.21.172.in-addr.arpa.", mdns.TypePTR, 0, []string{"web.backend."}},
		{client, "webby.", mdns.TypeA, 0, []string{"172.20.0.2"}}, // a link alias
		{client, "dbx.", mdns.TypeA, mdns.RcodeNameError, nil},    // links do not cross network scope
		{web, "webby.", mdns.TypeA, mdns.RcodeNameError, nil},     // only the linking sandbox has it
	}
	for _, tt := range tests {
		t.Run(tt.sb.id+"/"+tt.name+"/"+mdns.TypeToString[tt.qtype], func(t *testing.T) {
			m := tt.sb.query(t, tt.name, tt.qtype)
			if m.Rcode != tt.rcode {
				t.Fatalf("rcode = %s, want %s", mdns.RcodeToString[m.Rcode], mdns.RcodeToString[tt.rcode])
			}
			if diff := cmp.Diff(tt.want, answers(m), cmpopts.SortSlices(func(a, b string) bool { return a < b })); diff != "" {
				t.Errorf("answers (-want +got):\n%s", diff)
			}
			if m.Rcode == 0 && (!m.Authoritative || m.Question[0].Name != tt.name) {
				t.Errorf("reply not authoritative or question %q changed", m.Question[0].Name)
			}
			for _, rr := range m.Answer {
				if rr.Header().Ttl != localTTL {
					t.Errorf("TTL %d, want %d", rr.Header().Ttl, localTTL)
				}
			}
		})
	}
}

func TestSharedAliasRotates(t *testing.T) {
	s := newTestServer(t, Options{})
	world(s)
	client := fakeSandbox(t, s, SandboxConfig{ID: "sb-client", Internal: true}, nil)
	var firsts []string
	for range 3 {
		got := answers(client.query(t, "api.", mdns.TypeA))
		if len(got) != 3 {
			t.Fatalf("answers = %v, want all three", got)
		}
		firsts = append(firsts, got[0])
	}
	slices.Sort(firsts)
	if diff := cmp.Diff([]string{"172.20.0.4", "172.20.0.5", "172.20.0.6"}, firsts); diff != "" {
		t.Fatalf("first answers of three queries should rotate (-want +got):\n%s", diff)
	}
}

func TestUpsertAndRemoveAreImmediate(t *testing.T) {
	s := newTestServer(t, Options{})
	world(s)
	client := fakeSandbox(t, s, SandboxConfig{ID: "sb-client", Internal: true}, nil)
	r := Record{NetworkID: "n1", NetworkName: "frontend", EndpointID: "ep-new", SandboxID: "sb-new", Names: []string{"new"}, Addr4: netip.MustParseAddr("172.20.0.9")}
	s.Upsert(r)
	if got := answers(client.query(t, "new.", mdns.TypeA)); !slices.Equal(got, []string{"172.20.0.9"}) {
		t.Fatalf("after Upsert: %v", got)
	}
	r.Addr4 = netip.MustParseAddr("172.20.0.10")
	s.Upsert(r)
	if got := answers(client.query(t, "new.", mdns.TypeA)); !slices.Equal(got, []string{"172.20.0.10"}) {
		t.Fatalf("after re-Upsert: %v", got)
	}
	s.Remove("ep-new")
	if m := client.query(t, "new.", mdns.TypeA); m.Rcode != mdns.RcodeNameError {
		t.Fatalf("after Remove: %s", m)
	}
	s.Remove("ep-client") // the sandbox leaves its only network: it sees nothing
	if m := client.query(t, "web.", mdns.TypeA); m.Rcode != mdns.RcodeNameError {
		t.Fatalf("after the client left: %s", m)
	}
}

func TestNoUpstreamsIsServfail(t *testing.T) {
	s := newTestServer(t, Options{})
	world(s)
	client := fakeSandbox(t, s, SandboxConfig{ID: "sb-client"}, nil)
	if m := client.query(t, "example.com.", mdns.TypeA); m.Rcode != mdns.RcodeServerFailure {
		t.Fatalf("rcode = %s, want SERVFAIL", mdns.RcodeToString[m.Rcode])
	}
}

func TestMalformedQueries(t *testing.T) {
	s := newTestServer(t, Options{})
	client := fakeSandbox(t, s, SandboxConfig{ID: "sb-client", Internal: true}, nil)
	q := pack(t, "web.", mdns.TypeA, 0)
	if r := client.ask(flip(q, 2, 0x80), false); r != nil {
		t.Fatalf("answered a response: %x", r)
	}
	if m := unpack(t, client.ask(flip(q, 2, 4<<3), false)); m.Rcode != mdns.RcodeNotImplemented || m.Id != 0x1234 {
		t.Fatalf("NOTIFY got %s", m)
	}
	if m := unpack(t, client.ask(set(q, 5, 2), false)); m.Rcode != mdns.RcodeFormatError {
		t.Fatalf("two questions got %s", m)
	}
	m := unpack(t, client.ask(set(pack(t, "web.", mdns.TypeA, 1232), len(q)+optLen-5, 1), false))
	if m.Rcode != mdns.RcodeBadVers {
		t.Fatalf("EDNS version 1 got %s", m)
	}
}

// TestTruncation: 40 addresses fit neither 512 bytes nor a small EDNS size; the
// reply is cut at whole records with TC set, and TCP gets them all.
func TestTruncation(t *testing.T) {
	s := newTestServer(t, Options{})
	for i := range 40 {
		s.Upsert(Record{NetworkID: "n", NetworkName: "net", EndpointID: string(rune('A' + i)), SandboxID: "sb",
			Names: []string{"many"}, Addr4: netip.AddrFrom4([4]byte{10, 0, 0, byte(i + 1)})})
	}
	sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Internal: true}, nil)
	tests := []struct {
		name    string
		edns    uint16
		tcp     bool
		max     int
		wantAll bool
	}{
		{"udp plain", 0, false, 512, false},
		{"udp edns 600", 600, false, 600, false},
		{"udp edns 100 means 512", 100, false, 512, false},
		{"udp edns 4096", 4096, false, 4096, true},
		{"tcp", 0, true, maxTCPMessage, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := sb.ask(pack(t, "many.", mdns.TypeA, tt.edns), tt.tcp)
			m := unpack(t, b)
			if len(b) > tt.max {
				t.Fatalf("reply is %d bytes, limit %d", len(b), tt.max)
			}
			if got := len(m.Answer) == 40; got != tt.wantAll || m.Truncated == tt.wantAll {
				t.Fatalf("%d answers, TC=%v", len(m.Answer), m.Truncated)
			}
			if tt.edns > 0 && m.IsEdns0() == nil {
				t.Fatal("no OPT record in the reply to an EDNS query")
			}
		})
	}
}

// TestLocalAnswerAllocatesNothing is the allocation budget of the hot path.
func TestLocalAnswerAllocatesNothing(t *testing.T) {
	s := newTestServer(t, Options{})
	world(s)
	client := fakeSandbox(t, s, SandboxConfig{ID: "sb-client", Upstreams: []netip.AddrPort{netip.MustParseAddrPort("192.0.2.1:53")}}, nil)
	sc := newScratch()
	out := make([]byte, 0, maxUDPReply)
	for _, name := range []string{"api.", "web.frontend.", "2.0.20.172.in-addr.arpa."} {
		pkt := pack(t, name, mdns.TypeA, 1232)
		if name[0] == '2' {
			pkt = pack(t, name, mdns.TypePTR, 0)
		}
		client.handle(out[:0], pkt, 0, sc) // builds the view
		allocs := testing.AllocsPerRun(1000, func() {
			if _, act := client.handle(out[:0], pkt, 0, sc); act != actReply {
				t.Fatal("not answered locally")
			}
		})
		if allocs != 0 {
			t.Errorf("%s: %.1f allocations per query, budget 0", name, allocs)
		}
	}
}
