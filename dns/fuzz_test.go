package dns

import (
	"context"
	"encoding/binary"
	"net/netip"
	"testing"

	mdns "github.com/miekg/dns"
)

// checkReply fails unless reply is nothing or a well-formed response to pkt
// that fits limit.
func checkReply(t *testing.T, pkt, reply []byte, limit int) {
	t.Helper()
	if reply == nil {
		return
	}
	m := new(mdns.Msg)
	if err := m.Unpack(reply); err != nil {
		t.Fatalf("reply %x to %x does not parse: %v", reply, pkt, err)
	}
	if !m.Response || m.Id != be16(pkt) {
		t.Fatalf("reply %s is not a response to ID %d", m, be16(pkt))
	}
	if len(reply) > limit {
		t.Fatalf("reply of %d bytes over a limit of %d", len(reply), limit)
	}
}

func limitFor(pkt []byte, tcp bool) int {
	if tcp {
		return maxTCPMessage
	}
	var q query
	if parseQuery(pkt, &q) != parseOK {
		return minUDPSize
	}
	return q.udpLimit()
}

// FuzzHandleQuery feeds arbitrary packets to the whole query path (local names,
// internal NXDOMAIN, cache and forwarding through a fake upstream).
func FuzzHandleQuery(f *testing.F) {
	for _, name := range []string{"web.", "api.", "web.frontend.", "2.0.20.172.in-addr.arpa.", "example.com.", "."} {
		for _, qt := range []uint16{mdns.TypeA, mdns.TypeAAAA, mdns.TypePTR, mdns.TypeTXT} {
			f.Add(pack(f, name, qt, 0), false, false)
			f.Add(pack(f, name, qt, 1232), true, true)
		}
	}
	f.Add([]byte{0, 1, 0, 0}, false, false)
	s := newTestServer(f, Options{})
	world(s)
	fu := newFakeUpstreams()
	up := fu.handle("192.0.2.1:53", answerA("203.0.113.1", 60))
	open := fakeSandbox(f, s, SandboxConfig{ID: "sb-client", Upstreams: ups(up), Search: []string{"example"}}, fu)
	internal := fakeSandbox(f, s, SandboxConfig{ID: "sb-web", Internal: true}, fu)
	f.Fuzz(func(t *testing.T, pkt []byte, tcp, isInternal bool) {
		sb := open
		if isInternal {
			sb = internal
		}
		checkReply(t, pkt, sb.ask(pkt, tcp), limitFor(pkt, tcp))
	})
}

// replayExchanger answers every upstream query with a fixed reply, given the query's ID.
type replayExchanger struct{ reply []byte }

func (x replayExchanger) exchange(_ context.Context, _ netip.AddrPort, msg []byte, _ bool, accept func([]byte) bool) ([]byte, error) {
	r := append([]byte(nil), x.reply...)
	if len(r) >= 2 {
		binary.BigEndian.PutUint16(r, be16(msg))
	}
	if !accept(r) {
		return nil, errMismatch
	}
	return r, nil
}

// FuzzUpstreamReply feeds arbitrary upstream replies through validation,
// caching and rendering to clients of several sizes.
func FuzzUpstreamReply(f *testing.F) {
	q := new(mdns.Msg)
	q.SetQuestion("example.com.", mdns.TypeA)
	for _, h := range []func(*mdns.Msg) *mdns.Msg{answerA("192.0.2.1", 60), rcode(mdns.RcodeNameError), bigTXT(newFakeUpstreams(), 1500)} {
		b, err := h(q).Pack()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, reply []byte) {
		s := New(Options{})
		defer s.Close()
		if err := s.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
		up := netip.MustParseAddrPort("192.0.2.1:53")
		sb := fakeSandbox(t, s, SandboxConfig{ID: "sb", Upstreams: ups(up)}, replayExchanger{reply: reply})
		for _, edns := range []uint16{0, 1232, 4096} {
			pkt := pack(t, "Example.com.", mdns.TypeA, edns)
			checkReply(t, pkt, sb.ask(pkt, false), limitFor(pkt, false))
		}
	})
}
