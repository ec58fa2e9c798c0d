package dns

import (
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// pack builds a query with miekg/dns; edns > 0 adds an OPT record of that size.
func pack(t testing.TB, name string, qtype uint16, edns uint16) []byte {
	t.Helper()
	m := new(mdns.Msg)
	m.SetQuestion(name, qtype)
	m.Id = 0x1234
	if edns > 0 {
		m.SetEdns0(edns, false)
	}
	b, err := m.Pack()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseQuery(t *testing.T) {
	valid := pack(t, "Web.Example.", mdns.TypeA, 0)
	withOPT := pack(t, "web.", mdns.TypeAAAA, 4096)
	tests := []struct {
		name string
		pkt  []byte
		want parseStatus
	}{
		{"valid", valid, parseOK},
		{"with OPT", withOPT, parseOK},
		{"short", valid[:11], parseDrop},
		{"response", flip(valid, 2, 0x80), parseDrop},
		{"opcode notify", flip(valid, 2, 4<<3), parseNotImp},
		{"two questions", set(valid, 5, 2), parseFormErr},
		{"answer count", set(valid, 7, 1), parseFormErr},
		{"question cut", valid[:len(valid)-2], parseFormErr},
		{"name cut", valid[:14], parseFormErr},
		{"compressed name", append(append([]byte{}, valid[:12]...), 0xc0, 12, 0, 1, 0, 1), parseFormErr},
		{"OPT cut", withOPT[:len(withOPT)-3], parseFormErr},
		{"EDNS version 1", set(withOPT, len(withOPT)-5, 1), parseBadVers},
		{"two OPT", twoOPT(withOPT), parseFormErr},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var q query
			if got := parseQuery(tt.pkt, &q); got != tt.want {
				t.Fatalf("parseQuery = %d, want %d", got, tt.want)
			}
		})
	}
	var q query
	parseQuery(withOPT, &q)
	if !q.edns || q.udpSize != 4096 || q.qtype != mdns.TypeAAAA || q.qclass != classIN || q.id != 0x1234 {
		t.Fatalf("parsed %+v", q)
	}
}

func flip(b []byte, i int, bits byte) []byte {
	c := append([]byte{}, b...)
	c[i] |= bits
	return c
}

func set(b []byte, i int, v byte) []byte {
	c := append([]byte{}, b...)
	c[i] = v
	return c
}

func twoOPT(b []byte) []byte {
	c := append([]byte{}, b...)
	c = append(c, b[len(b)-optLen:]...)
	c[11] = 2
	return c
}

func TestLowerDotted(t *testing.T) {
	tests := []struct {
		in, want string
		ok       bool
	}{
		{"Web.NET.", "web.net", true},
		{".", "", true},
		{"a\\.b.c.", "", false}, // a label holding a dot can never be a local name
		{"sp\\032ace.", "", false},
	}
	for _, tt := range tests {
		wire := make([]byte, 256)
		n, err := mdns.PackDomainName(tt.in, wire, 0, nil, false)
		if err != nil {
			t.Fatal(err)
		}
		got, ok := lowerDotted(nil, wire[:n])
		if ok != tt.ok || (ok && string(got) != tt.want) {
			t.Errorf("lowerDotted(%q) = %q, %v; want %q, %v", tt.in, got, ok, tt.want, tt.ok)
		}
	}
}

func TestEncodeName(t *testing.T) {
	for _, name := range []string{"web.mynet", "web.mynet.", "x"} {
		wire, ok := encodeName(name)
		if !ok {
			t.Fatalf("encodeName(%q) failed", name)
		}
		got, _, err := mdns.UnpackDomainName(wire, 0)
		if err != nil || got != mdns.Fqdn(name) {
			t.Errorf("encodeName(%q) decodes to %q, %v", name, got, err)
		}
	}
	for _, bad := range []string{"a..b", string(make([]byte, 64))} {
		if _, ok := encodeName(bad); ok {
			t.Errorf("encodeName(%q) accepted", bad)
		}
	}
}

func TestParseReverse(t *testing.T) {
	tests := []struct {
		in   string
		want string // "" when invalid
	}{
		{"11.0.17.172.in-addr.arpa", "172.17.0.11"},
		{"0.0.0.10.in-addr.arpa", "10.0.0.0"},
		{"1.0.17.in-addr.arpa", ""},
		{"01.0.17.172.in-addr.arpa", ""},
		{"256.0.17.172.in-addr.arpa", ""},
		{"1.2.3.4.5.in-addr.arpa", ""},
		{"in-addr.arpa", ""},
		{reverse6("2001:db8::1"), "2001:db8::1"},
		{reverse6("fd00:1:2:3:4:5:6:7"), "fd00:1:2:3:4:5:6:7"},
		{"1.0.ip6.arpa", ""},
		{"example.com", ""},
	}
	for _, tt := range tests {
		got, ok := parseReverse([]byte(tt.in))
		if ok != (tt.want != "") || (ok && got.String() != tt.want) {
			t.Errorf("parseReverse(%q) = %v, %v; want %q", tt.in, got, ok, tt.want)
		}
	}
}

func reverse6(addr string) string {
	r, err := mdns.ReverseAddr(addr)
	if err != nil {
		panic(err)
	}
	return r[:len(r)-1]
}

func TestRRWalkFindsTTLs(t *testing.T) {
	m := new(mdns.Msg)
	m.SetQuestion("web.", mdns.TypeA)
	m.Response = true
	m.Answer = []mdns.RR{&mdns.A{Hdr: mdns.RR_Header{Name: "web.", Rrtype: mdns.TypeA, Class: 1, Ttl: 7}, A: netip.MustParseAddr("192.0.2.1").AsSlice()}}
	m.Ns = []mdns.RR{&mdns.SOA{Hdr: mdns.RR_Header{Name: ".", Rrtype: mdns.TypeSOA, Class: 1, Ttl: 9}, Ns: "a.", Mbox: "b."}}
	m.Compress = true
	wire, _ := m.Pack()
	var ttls []uint32
	ok := rrWalk(wire, func(off int, _ uint16) { ttls = append(ttls, uint32(be16(wire[off+2:]))) })
	if !ok || len(ttls) != 2 || ttls[0] != 7 || ttls[1] != 9 {
		t.Fatalf("rrWalk = %v, %v", ttls, ok)
	}
	if rrWalk(wire[:len(wire)-3], func(int, uint16) {}) {
		t.Fatal("rrWalk accepted a cut message")
	}
}
