package dns

import (
	"encoding/binary"
	"net/netip"
)

// DNS wire constants (RFC 1035, 3596, 6891).
const (
	headerLen = 12
	maxName   = 255 // longest name in wire form

	typeA    = 1
	typeSOA  = 6
	typePTR  = 12
	typeAAAA = 28
	typeOPT  = 41

	classIN = 1

	rcodeSuccess  = 0
	rcodeFormErr  = 1
	rcodeServFail = 2
	rcodeNXDomain = 3
	rcodeNotImp   = 4

	flagQR     = 1 << 15
	flagAA     = 1 << 10
	flagTC     = 1 << 9
	flagRD     = 1 << 8
	flagRA     = 1 << 7
	flagCD     = 1 << 4
	opcodeMask = 0xf << 11
	rcodeMask  = 0xf

	ednsDO      = 1 << 15 // DNSSEC OK, in the flags half of the OPT TTL
	ownUDPSize  = 1232    // what we advertise and ask upstreams for (DNS flag day 2020)
	maxUDPReply = 4096    // largest UDP reply we send, whatever the client advertises
	minUDPSize  = 512
	optLen      = 11 // an OPT RR with no options
	localTTL    = 600
)

// parseStatus says what to do with a packet after parsing its header and question.
type parseStatus uint8

const (
	parseOK      parseStatus = iota
	parseDrop                // not a query we answer at all (too short, or a response)
	parseFormErr             // malformed: answer FORMERR
	parseNotImp              // opcode other than QUERY: answer NOTIMP
	parseBadVers             // EDNS version we do not speak: answer BADVERS
)

// query is a parsed client query. Slices point into the packet; nothing is copied.
type query struct {
	id      uint16
	flags   uint16
	qname   []byte // question name in wire form, as the client sent it
	qtype   uint16
	qclass  uint16
	qend    int  // offset just past the question
	edns    bool // the query carried an OPT record
	udpSize uint16
	do      bool
}

func be16(b []byte) uint16 { return binary.BigEndian.Uint16(b) }

// parseQuery parses the header, the single question and an optional OPT record.
func parseQuery(pkt []byte, q *query) parseStatus {
	*q = query{}
	if len(pkt) < headerLen {
		return parseDrop
	}
	q.id, q.flags = be16(pkt), be16(pkt[2:])
	if q.flags&flagQR != 0 {
		return parseDrop
	}
	if q.flags&opcodeMask != 0 {
		return parseNotImp
	}
	if be16(pkt[4:]) != 1 || be16(pkt[6:]) != 0 || be16(pkt[8:]) != 0 {
		return parseFormErr
	}
	end, ok := skipName(pkt, headerLen)
	if !ok || end+4 > len(pkt) {
		return parseFormErr
	}
	q.qname = pkt[headerLen:end]
	q.qtype, q.qclass = be16(pkt[end:]), be16(pkt[end+2:])
	q.qend = end + 4
	return parseAdditional(pkt, q, int(be16(pkt[10:])))
}

// parseAdditional looks for the OPT record among n additional records.
func parseAdditional(pkt []byte, q *query, n int) parseStatus {
	off := q.qend
	for range n {
		hdr, next, ok := nextRR(pkt, off)
		if !ok {
			return parseFormErr
		}
		if be16(pkt[hdr:]) == typeOPT {
			if q.edns || hdr != off+1 { // a second OPT, or an OPT not owned by the root
				return parseFormErr
			}
			q.edns, q.udpSize = true, be16(pkt[hdr+2:])
			q.do = be16(pkt[hdr+6:])&ednsDO != 0
			if pkt[hdr+5] != 0 { // EDNS version
				return parseBadVers
			}
		}
		off = next
	}
	return parseOK
}

// nextRR finds the fixed header (type, class, TTL, rdlength) of the record at
// off and the offset of the record after it.
func nextRR(msg []byte, off int) (hdr, next int, ok bool) {
	hdr, ok = skipAnyName(msg, off)
	if !ok || hdr+10 > len(msg) {
		return 0, 0, false
	}
	next = hdr + 10 + int(be16(msg[hdr+8:]))
	return hdr, next, next <= len(msg)
}

// skipName returns the offset just past an uncompressed name starting at off.
// Compression pointers are refused: a question never needs one.
func skipName(pkt []byte, off int) (int, bool) {
	start := off
	for off < len(pkt) {
		l := int(pkt[off])
		switch {
		case l == 0:
			return off + 1, off+1-start <= maxName
		case l > 63:
			return 0, false
		}
		off += 1 + l
	}
	return 0, false
}

// skipAnyName returns the offset just past a possibly compressed name at off.
func skipAnyName(msg []byte, off int) (int, bool) {
	for off < len(msg) {
		l := int(msg[off])
		switch {
		case l == 0:
			return off + 1, true
		case l&0xc0 == 0xc0:
			return off + 2, off+2 <= len(msg)
		case l > 63:
			return 0, false
		}
		off += 1 + l
	}
	return 0, false
}

// lowerDotted appends the name in presentation form, lower-cased, without the
// trailing dot ("" for the root). ok is false when a label holds a dot or a
// byte that cannot be a local name, so the name can never match one.
func lowerDotted(dst, wire []byte) ([]byte, bool) {
	for off := 0; off < len(wire); {
		l := int(wire[off])
		if l == 0 {
			break
		}
		if off > 0 {
			dst = append(dst, '.')
		}
		for _, c := range wire[off+1 : off+1+l] {
			if c == '.' || c <= ' ' || c >= 0x7f {
				return dst, false
			}
			dst = append(dst, lower(c))
		}
		off += 1 + l
	}
	return dst, true
}

// lowerWire appends the wire-form name with ASCII letters lower-cased.
func lowerWire(dst, wire []byte) []byte {
	for _, c := range wire {
		dst = append(dst, lower(c))
	}
	return dst
}

func lower(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// encodeName returns the wire form of a dotted name ("" or "." is the root);
// ok is false for empty labels or labels and names that are too long.
func encodeName(name string) ([]byte, bool) {
	if name == "" || name == "." {
		return []byte{0}, true
	}
	if name[len(name)-1] == '.' {
		name = name[:len(name)-1]
	}
	out := make([]byte, 0, len(name)+2)
	start := 0
	for i := 0; i <= len(name); i++ {
		if i < len(name) && name[i] != '.' {
			continue
		}
		l := i - start
		if l == 0 || l > 63 {
			return nil, false
		}
		out = append(out, byte(l))
		out = append(out, name[start:i]...)
		start = i + 1
	}
	out = append(out, 0)
	return out, len(out) <= maxName
}

// hasSuffixLabel reports whether name ends with "."+suffix and returns the part before it.
func hasSuffixLabel(name []byte, suffix string) ([]byte, bool) {
	n := len(name) - len(suffix) - 1
	if suffix == "" || n <= 0 || name[n] != '.' {
		return nil, false
	}
	for i := 0; i < len(suffix); i++ {
		if name[n+1+i] != suffix[i] {
			return nil, false
		}
	}
	return name[:n], true
}

// parseReverse turns a lower-cased in-addr.arpa or ip6.arpa name into an address.
func parseReverse(name []byte) (netip.Addr, bool) {
	if rest, ok := hasSuffixLabel(name, "in-addr.arpa"); ok {
		return parseReverse4(rest)
	}
	if rest, ok := hasSuffixLabel(name, "ip6.arpa"); ok {
		return parseReverse6(rest)
	}
	return netip.Addr{}, false
}

// parseReverse4 parses "d.c.b.a" (four decimal octets, reversed).
func parseReverse4(s []byte) (netip.Addr, bool) {
	var a [4]byte
	i := 3
	v, digits := 0, 0
	for j := 0; j <= len(s); j++ {
		if j < len(s) && s[j] != '.' {
			c := s[j]
			if c < '0' || c > '9' || digits == 3 || (digits > 0 && v == 0) {
				return netip.Addr{}, false
			}
			v, digits = v*10+int(c-'0'), digits+1
			continue
		}
		if digits == 0 || v > 255 || i < 0 {
			return netip.Addr{}, false
		}
		a[i], i, v, digits = byte(v), i-1, 0, 0
	}
	return netip.AddrFrom4(a), i == -1
}

// parseReverse6 parses 32 dot-separated hex nibbles, least significant first.
func parseReverse6(s []byte) (netip.Addr, bool) {
	if len(s) != 63 {
		return netip.Addr{}, false
	}
	var a [16]byte
	for i := range 32 {
		if i > 0 && s[2*i-1] != '.' {
			return netip.Addr{}, false
		}
		n, ok := hexNibble(s[2*i])
		if !ok {
			return netip.Addr{}, false
		}
		pos := 31 - i
		a[pos/2] |= n << (4 * (1 - pos%2))
	}
	return netip.AddrFrom16(a), true
}

func hexNibble(c byte) (byte, bool) {
	switch {
	case '0' <= c && c <= '9':
		return c - '0', true
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

// detached returns a copy that does not point into the packet buffer.
func (q *query) detached() *query {
	c := *q
	c.qname = append([]byte(nil), q.qname...)
	return &c
}

// udpLimit is the largest UDP reply the client accepts (RFC 6891 §6.2.5), capped by ours.
func (q *query) udpLimit() int {
	if !q.edns || q.udpSize < minUDPSize {
		return minUDPSize
	}
	return min(int(q.udpSize), maxUDPReply)
}

// startReply writes the reply header and copies the question from pkt.
// Counts other than QDCOUNT start at zero.
func startReply(out, pkt []byte, q *query, flags uint16, rcode int) []byte {
	flags |= flagQR | flagRA | q.flags&(flagRD|flagCD) | uint16(rcode)&rcodeMask
	out = binary.BigEndian.AppendUint16(out, q.id)
	out = binary.BigEndian.AppendUint16(out, flags)
	out = append(out, 0, 1, 0, 0, 0, 0, 0, 0)
	return append(out, pkt[headerLen:q.qend]...)
}

// headerOnly is a reply with no question: for packets whose question we cannot parse.
func headerOnly(out, pkt []byte, rcode int) []byte {
	id, flags := be16(pkt), be16(pkt[2:])
	flags = flagQR | flags&(opcodeMask|flagRD) | uint16(rcode)&rcodeMask
	out = binary.BigEndian.AppendUint16(out, id)
	out = binary.BigEndian.AppendUint16(out, flags)
	return append(out, 0, 0, 0, 0, 0, 0, 0, 0)
}

// appendOPT appends our OPT record (extended rcode high bits, DO echoed) and counts it.
func appendOPT(out []byte, q *query, extRcode byte) []byte {
	var flags byte
	if q.do {
		flags = ednsDO >> 8
	}
	out = append(out, 0, 0, typeOPT, ownUDPSize>>8, ownUDPSize&0xff, extRcode, 0, flags, 0, 0, 0)
	return addCount(out, 10, 1)
}

// addCount adds n to the 16-bit count at off in the header.
func addCount(out []byte, off int, n uint16) []byte {
	binary.BigEndian.PutUint16(out[off:], be16(out[off:])+n)
	return out
}

// appendRR appends a record owned by the question name (compression pointer to offset 12).
func appendRR(out []byte, rtype uint16, rdata []byte) []byte {
	out = append(out, 0xc0, headerLen)
	out = binary.BigEndian.AppendUint16(out, rtype)
	out = binary.BigEndian.AppendUint16(out, classIN)
	out = binary.BigEndian.AppendUint32(out, localTTL)
	out = binary.BigEndian.AppendUint16(out, uint16(len(rdata)))
	return append(out, rdata...)
}

// rrWalk calls fn with the offset of the TTL field and the type of every record
// after the question section; ok is false if the message is malformed.
func rrWalk(msg []byte, fn func(ttlOff int, rtype uint16)) bool {
	if len(msg) < headerLen {
		return false
	}
	off := headerLen
	for range be16(msg[4:]) {
		end, ok := skipAnyName(msg, off)
		if !ok || end+4 > len(msg) {
			return false
		}
		off = end + 4
	}
	n := int(be16(msg[6:])) + int(be16(msg[8:])) + int(be16(msg[10:]))
	for range n {
		hdr, next, ok := nextRR(msg, off)
		if !ok {
			return false
		}
		fn(hdr+4, be16(msg[hdr:]))
		off = next
	}
	return true
}
