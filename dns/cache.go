package dns

import (
	"encoding/binary"
	"hash/maphash"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// TTL caps for cached upstream answers (the same as CoreDNS's defaults).
const (
	maxPositiveTTL = 3600
	maxNegativeTTL = 1800
	cacheShards    = 16
)

// entry is an upstream reply ready to be sent again: its wire form with ID 0 and
// no OPT record, and where its TTLs are, so a hit only copies and patches.
type entry struct {
	msg    []byte
	ttls   []ttlField
	stored int64 // cache clock, nanoseconds
	expiry int64
}

type ttlField struct {
	off int
	ttl uint32
}

// newEntry packs m for the cache and returns how long it may be cached (0: not at all).
func newEntry(m *mdns.Msg, now int64) (*entry, uint32) {
	if m.Truncated {
		return truncatedEntry(m, now), 0
	}
	m.Id, m.Compress = 0, true
	m.Extra = withoutOPT(m.Extra)
	wire, err := m.Pack()
	if err != nil {
		return nil, 0
	}
	e := &entry{msg: wire, stored: now}
	rrWalk(wire, func(off int, _ uint16) {
		e.ttls = append(e.ttls, ttlField{off: off, ttl: binary.BigEndian.Uint32(wire[off:])})
	})
	ttl := cacheTTL(m)
	e.expiry = now + int64(ttl)*int64(time.Second)
	return e, ttl
}

// truncatedEntry keeps only the header and question of a truncated reply: the
// client retries over TCP anyway, and a partial message is not worth trusting.
func truncatedEntry(m *mdns.Msg, now int64) *entry {
	t := &mdns.Msg{MsgHdr: m.MsgHdr, Question: m.Question}
	t.Id = 0
	wire, err := t.Pack()
	if err != nil {
		return nil
	}
	return &entry{msg: wire, stored: now, expiry: now}
}

func withoutOPT(rrs []mdns.RR) []mdns.RR {
	out := rrs[:0]
	for _, rr := range rrs {
		if rr.Header().Rrtype != mdns.TypeOPT {
			out = append(out, rr)
		}
	}
	return out
}

// cacheTTL is the lowest answer TTL for positive replies, and min(SOA TTL, SOA
// MINIMUM) for negative ones (RFC 2308 §5); negative replies without an SOA are
// not cached. Both are capped.
func cacheTTL(m *mdns.Msg) uint32 {
	if m.Rcode != mdns.RcodeSuccess && m.Rcode != mdns.RcodeNameError {
		return 0
	}
	if m.Rcode == mdns.RcodeSuccess && len(m.Answer) > 0 {
		ttl := uint32(maxPositiveTTL)
		for _, rr := range m.Answer {
			ttl = min(ttl, rr.Header().Ttl)
		}
		return ttl
	}
	for _, rr := range m.Ns {
		if soa, ok := rr.(*mdns.SOA); ok {
			return min(soa.Hdr.Ttl, soa.Minttl, maxNegativeTTL)
		}
	}
	return 0
}

// render appends the entry as the reply to q: the client's ID, RD/CD bits and
// question spelling, TTLs aged, an OPT record if the client sent one, and
// truncation to limit.
func (e *entry) render(out, pkt []byte, q *query, now int64, limit int) []byte {
	base := len(out)
	out = append(out, e.msg...)
	binary.BigEndian.PutUint16(out[base:], q.id)
	// RA always: we recurse for the client (glibc drops empty replies without RA or AA).
	flags := be16(e.msg[2:])&^(flagRD|flagCD) | q.flags&(flagRD|flagCD) | flagRA
	binary.BigEndian.PutUint16(out[base+2:], flags)
	copy(out[base+headerLen:], q.qname) // same length: the cache key is the lower-cased name
	age := uint32(max(now-e.stored, 0) / int64(time.Second))
	for _, f := range e.ttls {
		binary.BigEndian.PutUint32(out[base+f.off:], f.ttl-min(age, f.ttl))
	}
	out = finish(out, q)
	if len(out)-base > limit {
		return truncate(out, base, pkt, q, limit)
	}
	return out
}

// truncate shrinks the reply at out[base:] to limit bytes, setting TC (slow path:
// only for replies larger than the client's UDP size).
func truncate(out []byte, base int, pkt []byte, q *query, limit int) []byte {
	m := new(mdns.Msg)
	if err := m.Unpack(out[base:]); err != nil {
		return failure(out[:base], pkt, q)
	}
	m.Truncate(limit)
	wire, err := m.PackBuffer(make([]byte, limit+64))
	if err != nil || len(wire) > limit {
		return failure(out[:base], pkt, q)
	}
	return append(out[:base], wire...)
}

// cache is a sharded LRU of upstream replies.
type cache struct {
	seed   maphash.Seed
	epoch  time.Time
	clock  func() int64 // nanoseconds on a monotonic clock; replaced in tests
	shards [cacheShards]cacheShard
}

type cacheShard struct {
	mu    sync.Mutex // guards the fields below
	items map[string]*lruNode
	head  lruNode // sentinel: head.next is the most recently used
	cap   int
}

type lruNode struct {
	key        string
	e          *entry
	prev, next *lruNode
}

// newCache returns a cache of about size entries; size <= 0 disables it.
func newCache(size int) *cache {
	c := &cache{seed: maphash.MakeSeed(), epoch: time.Now()}
	c.clock = func() int64 { return int64(time.Since(c.epoch)) }
	per := 0
	if size > 0 {
		per = (size + cacheShards - 1) / cacheShards
	}
	for i := range c.shards {
		s := &c.shards[i]
		s.items, s.cap = map[string]*lruNode{}, per
		s.head.next, s.head.prev = &s.head, &s.head
	}
	return c
}

func (c *cache) now() int64 { return c.clock() }

func (c *cache) shard(key []byte) *cacheShard {
	return &c.shards[maphash.Bytes(c.seed, key)%cacheShards]
}

// get returns the live entry for key, or nil.
func (c *cache) get(key []byte) *entry {
	s := c.shard(key)
	s.mu.Lock()
	defer s.mu.Unlock()
	n := s.items[string(key)]
	if n == nil {
		return nil
	}
	if n.e.expiry <= c.now() {
		s.evictLocked(n)
		return nil
	}
	detach(n)
	s.pushFrontLocked(n)
	return n.e
}

// put stores e under key, evicting the least recently used entry when full.
func (c *cache) put(key string, e *entry) {
	s := c.shard([]byte(key))
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cap == 0 {
		return
	}
	if old := s.items[key]; old != nil {
		s.evictLocked(old)
	}
	for len(s.items) >= s.cap {
		s.evictLocked(s.head.prev)
	}
	n := &lruNode{key: key, e: e}
	s.items[key] = n
	s.pushFrontLocked(n)
}

func (s *cacheShard) pushFrontLocked(n *lruNode) {
	n.prev, n.next = &s.head, s.head.next
	s.head.next.prev = n
	s.head.next = n
}

func (s *cacheShard) evictLocked(n *lruNode) {
	detach(n)
	delete(s.items, n.key)
}

func detach(n *lruNode) { n.prev.next, n.next.prev = n.next, n.prev }

// len is the number of cached entries (for tests).
func (c *cache) len() int {
	n := 0
	for i := range c.shards {
		s := &c.shards[i]
		s.mu.Lock()
		n += len(s.items)
		s.mu.Unlock()
	}
	return n
}
