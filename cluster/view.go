package cluster

import (
	"context"
	"errors"
	"strings"
	"sync"
	"time"
)

// view is the watch-fed cache of everything under Root that the node needs.
type view struct {
	members   map[string]NodeRecord
	alive     map[string]bool
	networks  map[string]NetworkRecord
	endpoints map[string]EndpointRecord // by endpoint ID
	services  map[string]ServiceRecord
	acks      map[string]map[string]bool // endpoint ID → node IDs that stopped choosing it
	self      string
}

func newView() view {
	return view{members: map[string]NodeRecord{}, alive: map[string]bool{}, networks: map[string]NetworkRecord{},
		endpoints: map[string]EndpointRecord{}, services: map[string]ServiceRecord{}, acks: map[string]map[string]bool{}}
}

func (v *view) stateLocked(id string) NodeState {
	switch {
	case v.alive[id]:
		return Ready
	case v.members[id].Left:
		return Left
	}
	return Down
}

// visible: an endpoint is in the view's output when its node is alive (this node's
// own endpoints always are).
func (v *view) visible(ep EndpointRecord) bool { return ep.NodeID == v.self || v.alive[ep.NodeID] }

// EventKind says what changed.
type EventKind int

// Event kinds.
const (
	NetworkAdded EventKind = iota + 1
	NetworkRemoved
	EndpointAdded // also an update
	EndpointRemoved
	NodeChanged // a node appeared, went down, came back, left or changed its key
	ServiceAdded
	ServiceRemoved
)

// Event is one change of the view.
type Event struct {
	Kind     EventKind
	Network  NetworkRecord
	Endpoint EndpointRecord
	Node     Node
	Service  ServiceRecord
}

// Snapshot is the view at the moment of a Subscribe.
type Snapshot struct {
	Networks  []NetworkRecord
	Endpoints []EndpointRecord // visible ones only
	Nodes     []Node
	Services  []ServiceRecord
}

// relist reads everything under Root at one revision and replaces the view, emitting
// the differences (mark and sweep: what is gone is reported removed). It returns the
// revision to watch from.
func (c *Cluster) relist(ctx context.Context) (int64, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*opTimeout)
	defer cancel()
	kvs, rev, err := c.kv.List(ctx, Root, 0)
	if err != nil {
		return 0, storeErr(err)
	}
	next := newView()
	next.self = c.o.NodeID
	for _, kv := range kvs {
		next.apply(kv.Key, kv.Value, false, c.log)
	}
	c.mu.Lock()
	old := c.view
	c.view = next
	evs := diff(&old, &next)
	c.emitLocked(evs)
	c.mu.Unlock()
	return rev + 1, nil
}

// apply puts one key into the view (or removes it); malformed values are logged and
// skipped, never trusted.
func (v *view) apply(key string, val []byte, del bool, log interface{ Warn(string, ...any) }) {
	switch {
	case strings.HasPrefix(key, prefAlive):
		id := strings.TrimPrefix(key, prefAlive)
		if del {
			delete(v.alive, id)
		} else {
			v.alive[id] = true
		}
	case strings.HasPrefix(key, prefMembers):
		id := strings.TrimPrefix(key, prefMembers)
		if del {
			delete(v.members, id)
			return
		}
		r, err := DecodeNode(val)
		if err != nil {
			log.Warn("ignoring a bad node record", "key", key, "err", err)
			return
		}
		v.members[id] = r
	case strings.HasPrefix(key, prefNetworks):
		id := strings.TrimPrefix(key, prefNetworks)
		if del {
			delete(v.networks, id)
			return
		}
		r, err := DecodeNetwork(val)
		if err != nil {
			log.Warn("ignoring a bad network record", "key", key, "err", err)
			return
		}
		v.networks[id] = r
	case strings.HasPrefix(key, prefServices):
		id := strings.TrimPrefix(key, prefServices)
		if del {
			delete(v.services, id)
			return
		}
		r, err := DecodeService(val)
		if err != nil {
			log.Warn("ignoring a bad service record", "key", key, "err", err)
			return
		}
		v.services[id] = r
	case strings.HasPrefix(key, prefAcks):
		eid, node, _ := strings.Cut(strings.TrimPrefix(key, prefAcks), "/")
		switch {
		case del:
			delete(v.acks[eid], node)
			if len(v.acks[eid]) == 0 {
				delete(v.acks, eid)
			}
		case v.acks[eid] == nil:
			v.acks[eid] = map[string]bool{node: true}
		default:
			v.acks[eid][node] = true
		}
	case strings.HasPrefix(key, prefEndpoints):
		rest := strings.TrimPrefix(key, prefEndpoints)
		_, id, _ := strings.Cut(rest, "/")
		if del {
			delete(v.endpoints, id)
			return
		}
		r, err := DecodeEndpoint(val)
		if err != nil {
			log.Warn("ignoring a bad endpoint record", "key", key, "err", err)
			return
		}
		v.endpoints[id] = r
	}
}

// diff lists the events that turn a into b: networks first (added), endpoints as
// their visibility changes, nodes, networks removed last.
func diff(a, b *view) []Event {
	var evs []Event
	for id, n := range b.networks {
		if o, ok := a.networks[id]; !ok || !sameNetwork(o, n) {
			evs = append(evs, Event{Kind: NetworkAdded, Network: n})
		}
	}
	for id, s := range b.services {
		if o, ok := a.services[id]; !ok || string(mustJSON(o)) != string(mustJSON(s)) {
			evs = append(evs, Event{Kind: ServiceAdded, Service: s})
		}
	}
	for id, ep := range a.endpoints {
		if a.visible(ep) {
			if nep, ok := b.endpoints[id]; !ok || !b.visible(nep) {
				evs = append(evs, Event{Kind: EndpointRemoved, Endpoint: ep})
			}
		}
	}
	for id, ep := range b.endpoints {
		if !b.visible(ep) {
			continue
		}
		if oep, ok := a.endpoints[id]; !ok || !a.visible(oep) || !sameEndpoint(oep, ep) {
			evs = append(evs, Event{Kind: EndpointAdded, Endpoint: ep})
		}
	}
	ids := map[string]bool{}
	for id := range a.members {
		ids[id] = true
	}
	for id := range b.members {
		ids[id] = true
	}
	for id := range ids {
		am, bm := a.members[id], b.members[id]
		if a.stateLocked(id) != b.stateLocked(id) || am.Name != bm.Name || am.WGKey != bm.WGKey || am.WGGen != bm.WGGen {
			if m, ok := b.members[id]; ok {
				evs = append(evs, Event{Kind: NodeChanged, Node: Node{NodeRecord: m, State: b.stateLocked(id)}})
			}
		}
	}
	for id, s := range a.services {
		if _, ok := b.services[id]; !ok {
			evs = append(evs, Event{Kind: ServiceRemoved, Service: s})
		}
	}
	for id, n := range a.networks {
		if _, ok := b.networks[id]; !ok {
			evs = append(evs, Event{Kind: NetworkRemoved, Network: n})
		}
	}
	return evs
}

func sameNetwork(a, b NetworkRecord) bool { return string(mustJSON(a)) == string(mustJSON(b)) }
func sameEndpoint(a, b EndpointRecord) bool {
	return string(mustJSON(a)) == string(mustJSON(b))
}

// watch follows the store from rev on, forever: every response is applied in order;
// a compaction re-lists (mark and sweep); a dropped stream resumes from the last
// revision seen, after a short pause.
func (c *Cluster) watch(ctx context.Context, rev int64) {
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		wctx, cancel := context.WithCancel(ctx)
		for resp := range c.kv.Watch(wctx, Root, rev) {
			if resp.Err != nil {
				if errors.Is(resp.Err, ErrCompacted) {
					c.log.Info("cluster watch compacted: re-listing", "rev", rev)
					if r, err := c.relist(ctx); err == nil {
						rev = r
					}
				} else if ctx.Err() == nil {
					c.down.Store(true)
					c.log.Warn("cluster watch interrupted", "err", resp.Err)
				}
				break
			}
			c.down.Store(false)
			c.applyResponse(resp)
			// Resume after the last event seen, not the header's revision: a
			// catching-up watcher gets the current revision in its header before
			// all events are out.
			if n := len(resp.Events); n > 0 {
				rev = max(rev, resp.Events[n-1].KV.ModRev+1)
			}
			backoff = 50 * time.Millisecond
		}
		cancel()
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, 2*time.Second)
	}
}

func (c *Cluster) applyResponse(resp WatchResponse) {
	c.mu.Lock()
	defer c.mu.Unlock()
	before := c.view.clone()
	for _, ev := range resp.Events {
		c.view.apply(ev.KV.Key, ev.KV.Value, ev.Type == EventDelete, c.log)
	}
	c.emitLocked(diff(&before, &c.view))
}

func (v *view) clone() view {
	out := newView()
	out.self = v.self
	for k, x := range v.members {
		out.members[k] = x
	}
	for k, x := range v.alive {
		out.alive[k] = x
	}
	for k, x := range v.networks {
		out.networks[k] = x
	}
	for k, x := range v.endpoints {
		out.endpoints[k] = x
	}
	for k, x := range v.services {
		out.services[k] = x
	}
	for k, x := range v.acks {
		m := make(map[string]bool, len(x))
		for n := range x {
			m[n] = true
		}
		out.acks[k] = m
	}
	return out
}

// Subscribe returns the current view and then every change, in order, until ctx ends
// or the cluster closes (the channel is closed then). Events queue without bound, so a
// slow reader never blocks the watch.
func (c *Cluster) Subscribe(ctx context.Context) (Snapshot, <-chan Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var snap Snapshot
	for _, n := range c.view.networks {
		snap.Networks = append(snap.Networks, n)
	}
	for _, ep := range c.view.endpoints {
		if c.view.visible(ep) {
			snap.Endpoints = append(snap.Endpoints, ep)
		}
	}
	for id, m := range c.view.members {
		snap.Nodes = append(snap.Nodes, Node{NodeRecord: m, State: c.view.stateLocked(id)})
	}
	for _, s := range c.view.services {
		snap.Services = append(snap.Services, s)
	}
	s := &subscription{out: make(chan Event), wake: make(chan struct{}, 1), done: make(chan struct{})}
	c.subs[s] = struct{}{}
	c.wg.Go(s.pump)
	go func() {
		select {
		case <-ctx.Done():
			c.mu.Lock()
			if _, ok := c.subs[s]; ok {
				delete(c.subs, s)
				s.close()
			}
			c.mu.Unlock()
		case <-s.done:
		}
	}()
	return snap, s.out
}

func (c *Cluster) emitLocked(evs []Event) {
	if len(evs) == 0 {
		return
	}
	for s := range c.subs {
		s.push(evs)
	}
}

// subscription is an unbounded queue in front of a channel.
type subscription struct {
	mu     sync.Mutex
	queue  []Event
	closed bool
	out    chan Event
	wake   chan struct{}
	done   chan struct{}
}

func (s *subscription) push(evs []Event) {
	s.mu.Lock()
	s.queue = append(s.queue, evs...)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *subscription) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
}

func (s *subscription) pump() {
	defer close(s.out)
	for {
		s.mu.Lock()
		q := s.queue
		s.queue = nil
		closed := s.closed
		s.mu.Unlock()
		for _, ev := range q {
			select {
			case s.out <- ev:
			case <-s.done:
				return
			}
		}
		if closed {
			return
		}
		if len(q) > 0 {
			continue
		}
		select {
		case <-s.wake:
		case <-s.done:
			return
		}
	}
}
