package cluster

import (
	"context"
	"errors"
	"time"
)

// KV is the seam between the cluster logic and etcd: a revisioned key-value store
// with multi-key transactions, prefix watches and leases. EtcdKV implements it over
// a *clientv3.Client; Fake implements it in memory for unit tests. Both pass one
// conformance table (kv_conformance_test.go), so semantics the cluster logic relies
// on are pinned down once.
//
// Create-if-absent and compare-and-swap are transactions (see Create and Swap).
type KV interface {
	// Get returns the key's current value; ok is false when it does not exist.
	Get(ctx context.Context, key string) (kv KeyValue, ok bool, err error)
	// List returns the keys under prefix in key order as of revision rev (0 = the
	// latest) and the revision the list was read at. A compacted rev returns
	// ErrCompacted.
	List(ctx context.Context, prefix string, rev int64) ([]KeyValue, int64, error)
	// Txn applies ops atomically if every compare holds; Succeeded says whether it did.
	Txn(ctx context.Context, cmps []Cmp, ops []Op) (TxnResult, error)
	// Watch streams the changes under prefix from revision fromRev on. The channel is
	// closed after a response carrying Err, or when ctx ends. A compacted fromRev
	// delivers a response whose Err is ErrCompacted.
	Watch(ctx context.Context, prefix string, fromRev int64) <-chan WatchResponse
	// Grant creates a lease with the given TTL (rounded up to whole seconds).
	Grant(ctx context.Context, ttl time.Duration) (LeaseID, error)
	// KeepAlive renews a lease once; ErrLeaseNotFound when it has expired.
	KeepAlive(ctx context.Context, id LeaseID) error
	// Revoke ends a lease at once, deleting the keys attached to it.
	Revoke(ctx context.Context, id LeaseID) error
}

// LeaseID names a lease; 0 is no lease.
type LeaseID int64

// Errors of the KV seam (match with errors.Is).
var (
	ErrCompacted     = errors.New("required revision has been compacted")
	ErrLeaseNotFound = errors.New("lease not found")
)

// KeyValue is one stored key.
type KeyValue struct {
	Key       string
	Value     []byte
	CreateRev int64
	ModRev    int64
	Version   int64 // number of puts since creation; 0 = absent
	Lease     LeaseID
}

// CmpTarget is what a compare looks at.
type CmpTarget int

const (
	CmpVersion CmpTarget = iota
	CmpModRev
	CmpCreateRev
)

// CmpOp is a compare's relation.
type CmpOp int

const (
	Equal CmpOp = iota
	NotEqual
	Less
	Greater
)

// Cmp is a transaction guard. With Prefix it holds when it holds for every key under
// Key, and when no key is under Key it is evaluated against an absent key (all
// targets 0), as etcd does: Cmp{Key: p, Prefix: true, Target: CmpVersion, Value: 0}
// means "nothing under p", and Target CmpModRev, Op Less, Value rev+1 means "nothing
// under p changed or appeared after rev".
type Cmp struct {
	Key    string
	Prefix bool
	Target CmpTarget
	Op     CmpOp
	Value  int64
}

// Absent guards on key not existing.
func Absent(key string) Cmp { return Cmp{Key: key, Target: CmpVersion, Op: Equal} }

// Exists guards on key existing.
func Exists(key string) Cmp { return Cmp{Key: key, Target: CmpVersion, Op: Greater} }

// Unchanged guards on key's ModRev still being rev (rev 0: still absent).
func Unchanged(key string, rev int64) Cmp {
	return Cmp{Key: key, Target: CmpModRev, Op: Equal, Value: rev}
}

// NoneUnder guards on no key existing under prefix.
func NoneUnder(prefix string) Cmp {
	return Cmp{Key: prefix, Prefix: true, Target: CmpVersion, Op: Equal}
}

// UnchangedUnder guards on no key under prefix having been written after rev.
func UnchangedUnder(prefix string, rev int64) Cmp {
	return Cmp{Key: prefix, Prefix: true, Target: CmpModRev, Op: Less, Value: rev + 1}
}

func (c Cmp) holds(kv KeyValue) bool {
	var v int64
	switch c.Target {
	case CmpVersion:
		v = kv.Version
	case CmpModRev:
		v = kv.ModRev
	case CmpCreateRev:
		v = kv.CreateRev
	}
	switch c.Op {
	case Equal:
		return v == c.Value
	case NotEqual:
		return v != c.Value
	case Less:
		return v < c.Value
	case Greater:
		return v > c.Value
	}
	return false
}

// OpKind is a transaction operation's kind.
type OpKind int

const (
	OpPut OpKind = iota
	OpDelete
)

// Op is one write of a transaction. A delete with Prefix deletes every key under Key.
type Op struct {
	Kind   OpKind
	Key    string
	Value  []byte
	Lease  LeaseID // puts only; 0 = none (a put without lease detaches the key)
	Prefix bool    // deletes only
}

// Put returns a put op.
func Put(key string, value []byte, lease LeaseID) Op {
	return Op{Kind: OpPut, Key: key, Value: value, Lease: lease}
}

// Delete returns a delete op.
func Delete(key string) Op { return Op{Kind: OpDelete, Key: key} }

// DeleteUnder returns an op deleting every key under prefix.
func DeleteUnder(prefix string) Op { return Op{Kind: OpDelete, Key: prefix, Prefix: true} }

// TxnResult is a transaction's outcome; Rev is the store's revision after it.
type TxnResult struct {
	Succeeded bool
	Rev       int64
}

// EventType says whether a watched key was written or deleted.
type EventType int

const (
	EventPut EventType = iota
	EventDelete
)

// WatchEvent is one change. For deletes KV carries the key and ModRev (the revision
// of the delete) only.
type WatchEvent struct {
	Type EventType
	KV   KeyValue
}

// WatchResponse is a batch of changes, all at revisions ≤ Rev; Rev is the store's
// revision when the batch was sent (resume from Rev+1). Err ends the stream.
type WatchResponse struct {
	Events []WatchEvent
	Rev    int64
	Err    error
}

// Create puts key only if it does not exist. ok is false when it does.
func Create(ctx context.Context, kv KV, key string, value []byte, lease LeaseID) (ok bool, rev int64, err error) {
	r, err := kv.Txn(ctx, []Cmp{Absent(key)}, []Op{Put(key, value, lease)})
	return r.Succeeded, r.Rev, err
}

// Swap puts key only if its ModRev is still modRev (0: still absent).
func Swap(ctx context.Context, kv KV, key string, modRev int64, value []byte, lease LeaseID) (ok bool, rev int64, err error) {
	r, err := kv.Txn(ctx, []Cmp{Unchanged(key, modRev)}, []Op{Put(key, value, lease)})
	return r.Succeeded, r.Rev, err
}
