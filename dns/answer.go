package dns

import (
	"encoding/binary"
	"net/netip"
)

// action is what a reader does with a packet after handle.
type action uint8

const (
	actDrop    action = iota // send nothing
	actReply                 // send the returned reply
	actForward               // ask the upstreams (slow path, off the reader goroutine)
)

// scratch is the reusable memory of one reader: handle allocates nothing with it.
type scratch struct {
	q       query
	name    []byte
	key     []byte
	entries []*nameEntry
}

func newScratch() *scratch {
	return &scratch{name: make([]byte, 0, maxName), key: make([]byte, 0, maxName+16), entries: make([]*nameEntry, 0, 8)}
}

// handle answers pkt from local names or the cache, appending the reply to out.
// limit is the largest reply the transport carries (0: the client's UDP limit).
// actForward leaves the parsed query in sc.q and the cache key in sc.key.
func (sb *sandbox) handle(out, pkt []byte, limit int, sc *scratch) ([]byte, action) {
	q := &sc.q
	switch parseQuery(pkt, q) {
	case parseDrop:
		return out, actDrop
	case parseFormErr:
		return headerOnly(out, pkt, rcodeFormErr), actReply
	case parseNotImp:
		return headerOnly(out, pkt, rcodeNotImp), actReply
	case parseBadVers:
		return appendOPT(startReply(out, pkt, q, 0, rcodeSuccess), q, 1), actReply // BADVERS = 16
	}
	if limit == 0 {
		limit = q.udpLimit()
	}
	cfg := sb.cfg.Load()
	if reply, ok := sb.local(out, pkt, q, cfg, sc, limit); ok {
		return reply, actReply
	}
	if cfg.internal {
		return finish(startReply(out, pkt, q, 0, rcodeNXDomain), q), actReply
	}
	if len(cfg.upstreams) == 0 {
		return failure(out, pkt, q), actReply
	}
	sc.key = cacheKey(sc.key[:0], cfg.group, q)
	if e := sb.cache.get(sc.key); e != nil {
		return e.render(out, pkt, q, sb.cache.now(), limit), actReply
	}
	return out, actForward
}

// failure is the SERVFAIL reply to a parsed query.
func failure(out, pkt []byte, q *query) []byte {
	return finish(startReply(out, pkt, q, 0, rcodeServFail), q)
}

// finish appends the OPT record when the client sent one.
func finish(out []byte, q *query) []byte {
	if q.edns {
		return appendOPT(out, q, 0)
	}
	return out
}

// local answers names on the sandbox's networks; ok is false when the name is not one.
func (sb *sandbox) local(out, pkt []byte, q *query, cfg *sbConfig, sc *scratch, limit int) ([]byte, bool) {
	if q.qclass != classIN {
		return out, false
	}
	sv := sb.reg.current().sandboxes[cfg.id]
	if sv == nil {
		return out, false
	}
	name, ok := lowerDotted(sc.name[:0], q.qname)
	sc.name = name[:0]
	if !ok {
		return out, false
	}
	if q.qtype == typePTR {
		if a, isRev := parseReverse(name); isRev {
			return ptrReply(out, pkt, q, sv.reverse(a))
		}
	}
	if target, ok := cfg.links[string(name)]; ok {
		name = target // a link alias: answered with its target's addresses
	}
	sc.entries = sv.match(sc.entries[:0], name, cfg.search)
	if len(sc.entries) == 0 {
		return out, false
	}
	return addrReply(out, pkt, q, sc.entries, limit), true
}

// ptrReply answers a reverse query for one of the sandbox's networks' addresses.
func ptrReply(out, pkt []byte, q *query, target []byte) ([]byte, bool) {
	if target == nil {
		return out, false
	}
	out = startReply(out, pkt, q, flagAA, rcodeSuccess)
	out = appendRR(out, typePTR, target)
	return finish(addCount(out, 6, 1), q), true
}

// addrReply answers A or AAAA with every address of the entries, rotated; any
// other type gets NOERROR with no answers. Records that do not fit set TC.
func addrReply(out, pkt []byte, q *query, entries []*nameEntry, limit int) []byte {
	base := len(out)
	out = startReply(out, pkt, q, flagAA, rcodeSuccess)
	if q.edns {
		limit -= optLen
	}
	switch q.qtype {
	case typeA:
		out = appendAddrs(out, base, entries, false, limit)
	case typeAAAA:
		out = appendAddrs(out, base, entries, true, limit)
	}
	return finish(out, q)
}

// appendAddrs appends the A (or AAAA) records of entries starting at a rotating offset.
func appendAddrs(out []byte, base int, entries []*nameEntry, v6 bool, limit int) []byte {
	total := 0
	for _, e := range entries {
		total += len(e.addrs(v6))
	}
	if total == 0 {
		return out
	}
	start := int((entries[0].next.Add(1) - 1) % uint32(total))
	rrLen := 12 + 4
	if v6 {
		rrLen = 12 + 16
	}
	n := 0
	for ; n < total; n++ {
		if len(out)-base+rrLen > limit {
			out[base+2] |= flagTC >> 8
			break
		}
		out = appendAddrRR(out, addrAt(entries, v6, (start+n)%total))
	}
	binary.BigEndian.PutUint16(out[base+6:], uint16(n))
	return out
}

func (e *nameEntry) addrs(v6 bool) []netip.Addr {
	if v6 {
		return e.v6
	}
	return e.v4
}

// addrAt returns the i-th address of the entries taken as one list.
func addrAt(entries []*nameEntry, v6 bool, i int) netip.Addr {
	for _, e := range entries {
		as := e.addrs(v6)
		if i < len(as) {
			return as[i]
		}
		i -= len(as)
	}
	return netip.Addr{}
}

func appendAddrRR(out []byte, a netip.Addr) []byte {
	if a.Is4() {
		b := a.As4()
		return appendRR(out, typeA, b[:])
	}
	b := a.As16()
	return appendRR(out, typeAAAA, b[:])
}

// cacheKey is the cache partition, type, class, DO/CD bits and lower-cased name.
func cacheKey(dst []byte, group uint32, q *query) []byte {
	dst = binary.BigEndian.AppendUint32(dst, group)
	dst = binary.BigEndian.AppendUint16(dst, q.qtype)
	dst = binary.BigEndian.AppendUint16(dst, q.qclass)
	var f byte
	if q.do {
		f |= 1
	}
	if q.flags&flagCD != 0 {
		f |= 2
	}
	return lowerWire(append(dst, f), q.qname)
}
