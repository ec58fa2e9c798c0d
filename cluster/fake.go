package cluster

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/piernet/pier/errdefs"
)

// Fake is an in-memory KV with etcd's revision, compaction, transaction, watch and
// lease semantics (as pinned down by the conformance table). Beyond KV it lets tests
// compact, expire leases, cut watches and make the store unreachable.
type Fake struct {
	mu          sync.Mutex // guards the fields below
	rev         int64
	compactRev  int64
	keys        map[string]KeyValue
	history     []WatchEvent // every change, in revision order
	leases      map[LeaseID]*fakeLease
	nextLease   LeaseID
	watchers    map[*fakeWatcher]struct{}
	unavailable bool
}

var _ KV = (*Fake)(nil)

type fakeLease struct {
	ttl   time.Duration
	timer *time.Timer
	keys  map[string]struct{}
}

// NewFake returns an empty store at revision 1, as a fresh etcd.
func NewFake() *Fake {
	return &Fake{rev: 1, keys: map[string]KeyValue{}, leases: map[LeaseID]*fakeLease{},
		watchers: map[*fakeWatcher]struct{}{}, nextLease: 1000}
}

func (f *Fake) checkLocked(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if f.unavailable {
		return errdefs.Unavailable("cluster store unreachable (fake)")
	}
	return nil
}

// Get implements KV.
func (f *Fake) Get(ctx context.Context, key string) (KeyValue, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkLocked(ctx); err != nil {
		return KeyValue{}, false, err
	}
	kv, ok := f.keys[key]
	return kv, ok, nil
}

// List implements KV.
func (f *Fake) List(ctx context.Context, prefix string, rev int64) ([]KeyValue, int64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkLocked(ctx); err != nil {
		return nil, 0, err
	}
	switch {
	case rev == 0 || rev == f.rev:
		return f.listLocked(f.keys, prefix), f.rev, nil
	case rev > f.rev:
		return nil, 0, fmt.Errorf("required revision %d is a future revision", rev)
	case rev < f.compactRev:
		return nil, 0, ErrCompacted
	}
	return f.listLocked(f.stateAtLocked(rev), prefix), f.rev, nil
}

func (f *Fake) listLocked(keys map[string]KeyValue, prefix string) []KeyValue {
	var out []KeyValue
	for k, kv := range keys {
		if strings.HasPrefix(k, prefix) {
			out = append(out, kv)
		}
	}
	slices.SortFunc(out, func(a, b KeyValue) int { return strings.Compare(a.Key, b.Key) })
	return out
}

// stateAtLocked replays the history up to rev.
func (f *Fake) stateAtLocked(rev int64) map[string]KeyValue {
	keys := map[string]KeyValue{}
	for _, ev := range f.history {
		if ev.KV.ModRev > rev {
			break
		}
		if ev.Type == EventDelete {
			delete(keys, ev.KV.Key)
		} else {
			keys[ev.KV.Key] = ev.KV
		}
	}
	return keys
}

// Txn implements KV.
func (f *Fake) Txn(ctx context.Context, cmps []Cmp, ops []Op) (TxnResult, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkLocked(ctx); err != nil {
		return TxnResult{}, err
	}
	if err := f.checkOpsLocked(ops); err != nil {
		return TxnResult{}, err
	}
	for _, c := range cmps {
		if !f.holdsLocked(c) {
			return TxnResult{Rev: f.rev}, nil
		}
	}
	f.commitLocked(f.applyLocked(ops))
	return TxnResult{Succeeded: true, Rev: f.rev}, nil
}

func (f *Fake) checkOpsLocked(ops []Op) error {
	puts := map[string]bool{}
	for _, op := range ops {
		if op.Kind != OpPut {
			continue
		}
		if puts[op.Key] {
			return errdefs.InvalidArgument("duplicate key given in txn request")
		}
		puts[op.Key] = true
		if _, ok := f.leases[op.Lease]; op.Lease != 0 && !ok {
			return ErrLeaseNotFound
		}
	}
	return nil
}

func (f *Fake) holdsLocked(c Cmp) bool {
	if !c.Prefix {
		return c.holds(f.keys[c.Key])
	}
	matched := false
	for k, kv := range f.keys {
		if strings.HasPrefix(k, c.Key) {
			matched = true
			if !c.holds(kv) {
				return false
			}
		}
	}
	return matched || c.holds(KeyValue{})
}

// applyLocked changes keys at revision f.rev+1 and returns the changes.
func (f *Fake) applyLocked(ops []Op) []WatchEvent {
	rev := f.rev + 1
	var evs []WatchEvent
	for _, op := range ops {
		switch {
		case op.Kind == OpPut:
			evs = append(evs, f.putLocked(op, rev))
		case op.Prefix:
			for _, kv := range f.listLocked(f.keys, op.Key) {
				evs = append(evs, f.deleteLocked(kv.Key, rev))
			}
		default:
			if _, ok := f.keys[op.Key]; ok {
				evs = append(evs, f.deleteLocked(op.Key, rev))
			}
		}
	}
	return evs
}

func (f *Fake) putLocked(op Op, rev int64) WatchEvent {
	old, ok := f.keys[op.Key]
	kv := KeyValue{Key: op.Key, Value: slices.Clone(op.Value), CreateRev: rev, ModRev: rev, Version: 1, Lease: op.Lease}
	if ok {
		kv.CreateRev, kv.Version = old.CreateRev, old.Version+1
		f.detachLocked(old)
	}
	if l := f.leases[op.Lease]; l != nil {
		l.keys[op.Key] = struct{}{}
	}
	f.keys[op.Key] = kv
	return WatchEvent{Type: EventPut, KV: kv}
}

func (f *Fake) deleteLocked(key string, rev int64) WatchEvent {
	f.detachLocked(f.keys[key])
	delete(f.keys, key)
	return WatchEvent{Type: EventDelete, KV: KeyValue{Key: key, ModRev: rev}}
}

func (f *Fake) detachLocked(kv KeyValue) {
	if l := f.leases[kv.Lease]; l != nil {
		delete(l.keys, kv.Key)
	}
}

// commitLocked makes evs revision f.rev+1 (nothing when evs is empty, as etcd) and
// hands them to the watchers.
func (f *Fake) commitLocked(evs []WatchEvent) {
	if len(evs) == 0 {
		return
	}
	f.rev++
	f.history = append(f.history, evs...)
	for w := range f.watchers {
		w.sendEvents(evs, f.rev)
	}
}

// Grant implements KV.
func (f *Fake) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkLocked(ctx); err != nil {
		return 0, err
	}
	f.nextLease++
	id := f.nextLease
	l := &fakeLease{ttl: ttl, keys: map[string]struct{}{}}
	l.timer = time.AfterFunc(ttl, func() { f.Expire(id) })
	f.leases[id] = l
	return id, nil
}

// KeepAlive implements KV.
func (f *Fake) KeepAlive(ctx context.Context, id LeaseID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkLocked(ctx); err != nil {
		return err
	}
	l, ok := f.leases[id]
	if !ok {
		return ErrLeaseNotFound
	}
	l.timer.Reset(l.ttl)
	return nil
}

// Revoke implements KV.
func (f *Fake) Revoke(ctx context.Context, id LeaseID) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.checkLocked(ctx); err != nil {
		return err
	}
	if !f.endLeaseLocked(id) {
		return ErrLeaseNotFound
	}
	return nil
}

// Expire ends a lease as if its TTL had passed, deleting its keys.
func (f *Fake) Expire(id LeaseID) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.endLeaseLocked(id)
}

func (f *Fake) endLeaseLocked(id LeaseID) bool {
	l, ok := f.leases[id]
	if !ok {
		return false
	}
	l.timer.Stop()
	ops := make([]Op, 0, len(l.keys))
	for k := range l.keys {
		ops = append(ops, Delete(k))
	}
	slices.SortFunc(ops, func(a, b Op) int { return strings.Compare(a.Key, b.Key) })
	delete(f.leases, id)
	f.commitLocked(f.applyLocked(ops))
	return true
}

// Compact discards history before rev: reads and watches from earlier revisions fail
// with ErrCompacted.
func (f *Fake) Compact(rev int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.compactRev = min(rev, f.rev)
}

// Rev returns the current revision.
func (f *Fake) Rev() int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.rev
}

// CancelWatches ends every open watch with err (a dropped connection, or
// ErrCompacted for a watcher that fell behind a compaction).
func (f *Fake) CancelWatches(err error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.watchers {
		w.fail(err)
		delete(f.watchers, w)
	}
}

// SetUnavailable makes every call fail with an Unavailable error (and cuts the
// watches) until it is called with false.
func (f *Fake) SetUnavailable(down bool) {
	f.mu.Lock()
	f.unavailable = down
	f.mu.Unlock()
	if down {
		f.CancelWatches(errdefs.Unavailable("cluster store unreachable (fake)"))
	}
}

// Watch implements KV. A watch on an unavailable store fails at once.
func (f *Fake) Watch(ctx context.Context, prefix string, fromRev int64) <-chan WatchResponse {
	w := &fakeWatcher{prefix: prefix, out: make(chan WatchResponse), wake: make(chan struct{}, 1)}
	f.mu.Lock()
	defer f.mu.Unlock()
	switch err := f.checkLocked(ctx); {
	case err != nil:
		w.fail(err)
	case fromRev < f.compactRev:
		w.fail(ErrCompacted)
	default:
		f.replayLocked(w, fromRev)
		f.watchers[w] = struct{}{}
	}
	go w.run(ctx, func() {
		f.mu.Lock()
		delete(f.watchers, w)
		f.mu.Unlock()
	})
	return w.out
}

func (f *Fake) replayLocked(w *fakeWatcher, fromRev int64) {
	var batch []WatchEvent
	for i, ev := range f.history {
		if ev.KV.ModRev < fromRev {
			continue
		}
		batch = append(batch, ev)
		if i+1 == len(f.history) || f.history[i+1].KV.ModRev != ev.KV.ModRev {
			w.sendEvents(batch, ev.KV.ModRev)
			batch = nil
		}
	}
}

// fakeWatcher queues responses without bound so the store never blocks on a reader.
type fakeWatcher struct {
	prefix string
	out    chan WatchResponse
	wake   chan struct{}

	mu    sync.Mutex // guards the fields below
	queue []WatchResponse
	done  bool // a response with Err is queued
}

func (w *fakeWatcher) sendEvents(evs []WatchEvent, rev int64) {
	var mine []WatchEvent
	for _, ev := range evs {
		if strings.HasPrefix(ev.KV.Key, w.prefix) {
			mine = append(mine, ev)
		}
	}
	if len(mine) > 0 {
		w.push(WatchResponse{Events: mine, Rev: rev})
	}
}

func (w *fakeWatcher) fail(err error) { w.push(WatchResponse{Err: err}) }

func (w *fakeWatcher) push(r WatchResponse) {
	w.mu.Lock()
	if !w.done {
		w.queue = append(w.queue, r)
		w.done = r.Err != nil
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}

func (w *fakeWatcher) run(ctx context.Context, unregister func()) {
	defer close(w.out)
	defer unregister()
	for {
		w.mu.Lock()
		q := w.queue
		w.queue = nil
		w.mu.Unlock()
		for _, r := range q {
			select {
			case w.out <- r:
			case <-ctx.Done():
				return
			}
			if r.Err != nil {
				return
			}
		}
		select {
		case <-w.wake:
		case <-ctx.Done():
			return
		}
	}
}
