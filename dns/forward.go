package dns

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"sync"
	"time"

	mdns "github.com/miekg/dns"
)

// exchanger sends one query to one upstream and returns the first reply that
// accept takes. The real one opens its sockets inside the sandbox's namespace.
type exchanger interface {
	exchange(ctx context.Context, up netip.AddrPort, msg []byte, tcp bool, accept func([]byte) bool) ([]byte, error)
}

// upstream is one forwarder of a sandbox with its health.
type upstream struct {
	addr netip.AddrPort

	mu        sync.Mutex // guards the fields below
	srtt      time.Duration
	fails     int
	downUntil time.Time
}

const maxBackoff = 30 * time.Second

// success records an answer after rtt.
func (u *upstream) success(rtt time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.fails, u.downUntil = 0, time.Time{}
	u.sampleLocked(rtt)
}

// failure records an error, a bad rcode or a timeout: the upstream goes to the
// back of the order for a backoff doubling from 1 s to 30 s.
func (u *upstream) failure(now time.Time) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.fails++
	u.downUntil = now.Add(min(time.Second<<min(u.fails-1, 5), maxBackoff))
}

// slow records that the upstream had not answered after elapsed while another had.
func (u *upstream) slow(elapsed time.Duration) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.sampleLocked(max(elapsed, u.srtt))
}

func (u *upstream) sampleLocked(rtt time.Duration) {
	if u.srtt == 0 {
		u.srtt = rtt
		return
	}
	u.srtt = (7*u.srtt + rtt) / 8
}

// rank orders upstreams: healthy ones by smoothed RTT (configuration order for
// ties and the unmeasured), then the failing ones, soonest-retried first.
func rank(ups []*upstream, now time.Time) []*upstream {
	type ranked struct {
		u    *upstream
		down time.Time
		srtt time.Duration
	}
	rs := make([]ranked, len(ups))
	for i, u := range ups {
		u.mu.Lock()
		rs[i] = ranked{u: u, srtt: u.srtt}
		if u.downUntil.After(now) {
			rs[i].down = u.downUntil
		}
		u.mu.Unlock()
	}
	slices.SortStableFunc(rs, func(a, b ranked) int {
		if c := a.down.Compare(b.down); c != 0 {
			return c
		}
		return int(a.srtt - b.srtt)
	})
	out := make([]*upstream, len(rs))
	for i, r := range rs {
		out[i] = r.u
	}
	return out
}

// attempt is the outcome of one query to one upstream.
type attempt struct {
	idx  int       // position in the rank order
	m    *mdns.Msg // nil on failure
	rtt  time.Duration
	fail bool // a real failure (not a cancellation because another upstream won)
}

// hedged asks the upstreams in rank order, starting the next one after
// HedgeDelay or as soon as one fails, and returns the first good reply
// (NOERROR, NXDOMAIN or truncated), or nil when all failed or time ran out.
func (sb *sandbox) hedged(ctx context.Context, cfg *sbConfig, q *query, tcp bool) *mdns.Msg {
	ctx, cancel := context.WithTimeout(ctx, sb.opts.UpstreamTimeout)
	defer cancel()
	q = q.detached() // losing attempts may still read it after we return
	h := &hedge{order: rank(cfg.upstreams, time.Now()), results: make(chan attempt, len(cfg.upstreams))}
	h.launch(ctx, sb, q, tcp)
	timer := time.NewTimer(sb.opts.HedgeDelay)
	defer timer.Stop()
	for h.pending > 0 {
		select {
		case a := <-h.results:
			h.pending--
			h.answered = append(h.answered, a.idx)
			if a.m != nil {
				h.won(a)
				return a.m
			}
			if a.fail {
				h.order[a.idx].failure(time.Now())
			}
			if h.launch(ctx, sb, q, tcp) {
				timer.Reset(sb.opts.HedgeDelay)
			}
		case <-timer.C:
			if h.launch(ctx, sb, q, tcp) {
				timer.Reset(sb.opts.HedgeDelay)
			}
		case <-ctx.Done():
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				h.timedOut()
			}
			sb.log.Debug("no upstream answered in time", "type", q.qtype, "asked", len(h.started))
			return nil
		}
	}
	return nil
}

// hedge is the state of one hedged resolution (owned by its hedged call).
type hedge struct {
	order    []*upstream
	started  []time.Time // of order[:len(started)]
	answered []int       // indexes that reported
	pending  int
	results  chan attempt
}

// launch asks the next upstream, if any is left.
func (h *hedge) launch(ctx context.Context, sb *sandbox, q *query, tcp bool) bool {
	i := len(h.started)
	if i == len(h.order) {
		return false
	}
	h.started = append(h.started, time.Now())
	h.pending++
	sb.wg.Go(func() {
		a := sb.try(ctx, h.order[i], q, tcp)
		a.idx = i
		h.results <- a
	})
	return true
}

// won records the winner's RTT and penalises the upstreams asked before it
// that had not answered: they go behind it in the order.
func (h *hedge) won(a attempt) {
	h.order[a.idx].success(a.rtt)
	now := time.Now()
	for i, t := range h.started[:a.idx] {
		if !slices.Contains(h.answered, i) {
			h.order[i].slow(now.Sub(t))
		}
	}
}

// timedOut marks every upstream asked that never answered as failed.
func (h *hedge) timedOut() {
	now := time.Now()
	for i := range h.started {
		if !slices.Contains(h.answered, i) {
			h.order[i].failure(now)
		}
	}
}

var errMismatch = errors.New("reply does not match the query")

// try sends q to one upstream. Cancellation by the context is not a failure of
// the upstream unless the deadline passed (that is handled by hedged).
func (sb *sandbox) try(ctx context.Context, up *upstream, q *query, tcp bool) attempt {
	id := uint16(rand.Uint32())
	msg := upstreamQuery(make([]byte, 0, headerLen+len(q.qname)+4+optLen), id, q)
	start := time.Now()
	raw, err := sb.ex.exchange(ctx, up.addr, msg, tcp, func(b []byte) bool { return matchesReply(b, id, q) })
	if err != nil {
		if ctx.Err() == nil {
			sb.log.Debug("upstream failed", "upstream", up.addr, "error", err)
		}
		return attempt{fail: ctx.Err() == nil}
	}
	a := attempt{rtt: time.Since(start), fail: true}
	m := new(mdns.Msg)
	if err := m.Unpack(raw); err != nil && !m.Truncated {
		sb.log.Debug("bad upstream reply", "upstream", up.addr, "error", err)
		return a
	}
	if m.Truncated || m.Rcode == mdns.RcodeSuccess || m.Rcode == mdns.RcodeNameError {
		a.m = m
	}
	return a
}

// upstreamQuery is the query sent upstream: our ID, RD, the client's CD bit,
// the lower-cased question and an OPT record asking for 1232-byte replies.
func upstreamQuery(dst []byte, id uint16, q *query) []byte {
	dst = binary.BigEndian.AppendUint16(dst, id)
	dst = binary.BigEndian.AppendUint16(dst, flagRD|q.flags&flagCD)
	dst = append(dst, 0, 1, 0, 0, 0, 0, 0, 1)
	dst = lowerWire(dst, q.qname)
	dst = binary.BigEndian.AppendUint16(dst, q.qtype)
	dst = binary.BigEndian.AppendUint16(dst, q.qclass)
	var flags byte
	if q.do {
		flags = ednsDO >> 8
	}
	return append(dst, 0, 0, typeOPT, ownUDPSize>>8, ownUDPSize&0xff, 0, 0, flags, 0, 0, 0)
}

// matchesReply checks ID, QR and that the reply's question is ours.
func matchesReply(b []byte, id uint16, q *query) bool {
	if len(b) < headerLen || be16(b) != id || be16(b[2:])&flagQR == 0 || be16(b[4:]) != 1 {
		return false
	}
	end, ok := skipName(b, headerLen)
	if !ok || end+4 > len(b) || end-headerLen != len(q.qname) {
		return false
	}
	return bytes.EqualFold(b[headerLen:end], q.qname) &&
		be16(b[end:]) == q.qtype && be16(b[end+2:]) == q.qclass
}

// flights lets concurrent identical questions share one upstream resolution.
type flights struct {
	mu sync.Mutex // guards m
	m  map[string]*flight
}

type flight struct {
	done chan struct{}
	e    *entry
}

// do runs fn once for concurrent callers with the same key; a waiter whose ctx
// ends gets nil.
func (f *flights) do(ctx context.Context, key string, fn func() *entry) *entry {
	f.mu.Lock()
	if fl := f.m[key]; fl != nil {
		f.mu.Unlock()
		select {
		case <-fl.done:
			return fl.e
		case <-ctx.Done():
			return nil
		}
	}
	fl := &flight{done: make(chan struct{})}
	f.m[key] = fl
	f.mu.Unlock()
	fl.e = fn()
	f.mu.Lock()
	delete(f.m, key)
	f.mu.Unlock()
	close(fl.done)
	return fl.e
}

// resolve answers q from the cache or the upstreams; nil means SERVFAIL.
func (sb *sandbox) resolve(ctx context.Context, cfg *sbConfig, q *query, tcp bool) *entry {
	key := cacheKey(make([]byte, 0, len(q.qname)+16), cfg.group, q)
	if e := sb.cache.get(key); e != nil {
		return e
	}
	fk := fmt.Sprintf("%t/%s", tcp, key)
	return sb.flights.do(ctx, fk, func() *entry {
		// A flight for the same question may have ended between the cache miss above
		// and this one starting; it cached its answer before it ended.
		if e := sb.cache.get(key); e != nil {
			return e
		}
		m := sb.hedged(ctx, cfg, q, tcp)
		if m == nil {
			return nil
		}
		e, ttl := newEntry(m, sb.cache.now())
		if e != nil && ttl > 0 {
			sb.cache.put(string(key), e)
		}
		return e
	})
}
