package cluster

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/piernet/pier/errdefs"
)

// EtcdKV implements KV over an etcd v3 client. It does not own the client.
type EtcdKV struct {
	c *clientv3.Client
}

var _ KV = (*EtcdKV)(nil)

// NewEtcdKV wraps c.
func NewEtcdKV(c *clientv3.Client) *EtcdKV { return &EtcdKV{c: c} }

// etcdErr classifies a client error: lease and compaction errors become the seam's,
// anything that means "etcd did not answer" becomes Unavailable.
func etcdErr(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return ErrLeaseNotFound
	case errors.Is(err, rpctypes.ErrCompacted):
		return ErrCompacted
	case errors.Is(err, rpctypes.ErrDuplicateKey):
		return errdefs.InvalidArgument("%w", err)
	case ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded):
		return ctx.Err()
	}
	return errdefs.Unavailable("cluster store unreachable: %w", err)
}

func fromEtcd(kv *mvccpb.KeyValue) KeyValue {
	return KeyValue{Key: string(kv.Key), Value: kv.Value, CreateRev: kv.CreateRevision,
		ModRev: kv.ModRevision, Version: kv.Version, Lease: LeaseID(kv.Lease)}
}

// Get implements KV.
func (e *EtcdKV) Get(ctx context.Context, key string) (KeyValue, bool, error) {
	r, err := e.c.Get(ctx, key)
	if err != nil {
		return KeyValue{}, false, etcdErr(ctx, err)
	}
	if len(r.Kvs) == 0 {
		return KeyValue{}, false, nil
	}
	return fromEtcd(r.Kvs[0]), true, nil
}

// List implements KV.
func (e *EtcdKV) List(ctx context.Context, prefix string, rev int64) ([]KeyValue, int64, error) {
	opts := []clientv3.OpOption{clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend)}
	if rev != 0 {
		opts = append(opts, clientv3.WithRev(rev))
	}
	r, err := e.c.Get(ctx, prefix, opts...)
	if err != nil {
		return nil, 0, etcdErr(ctx, err)
	}
	out := make([]KeyValue, 0, len(r.Kvs))
	for _, kv := range r.Kvs {
		out = append(out, fromEtcd(kv))
	}
	return out, r.Header.Revision, nil
}

// Txn implements KV.
func (e *EtcdKV) Txn(ctx context.Context, cmps []Cmp, ops []Op) (TxnResult, error) {
	ecmps := make([]clientv3.Cmp, 0, len(cmps))
	for _, c := range cmps {
		ecmps = append(ecmps, etcdCmp(c))
	}
	eops := make([]clientv3.Op, 0, len(ops))
	for _, op := range ops {
		eops = append(eops, etcdOp(op))
	}
	r, err := e.c.Txn(ctx).If(ecmps...).Then(eops...).Commit()
	if err != nil {
		return TxnResult{}, etcdErr(ctx, err)
	}
	return TxnResult{Succeeded: r.Succeeded, Rev: r.Header.Revision}, nil
}

func etcdCmp(c Cmp) clientv3.Cmp {
	var t clientv3.Cmp
	switch c.Target {
	case CmpModRev:
		t = clientv3.ModRevision(c.Key)
	case CmpCreateRev:
		t = clientv3.CreateRevision(c.Key)
	default:
		t = clientv3.Version(c.Key)
	}
	op := map[CmpOp]string{Equal: "=", NotEqual: "!=", Less: "<", Greater: ">"}[c.Op]
	out := clientv3.Compare(t, op, c.Value)
	if c.Prefix {
		out = out.WithPrefix()
	}
	return out
}

func etcdOp(op Op) clientv3.Op {
	if op.Kind == OpDelete {
		if op.Prefix {
			return clientv3.OpDelete(op.Key, clientv3.WithPrefix())
		}
		return clientv3.OpDelete(op.Key)
	}
	if op.Lease != 0 {
		return clientv3.OpPut(op.Key, string(op.Value), clientv3.WithLease(clientv3.LeaseID(op.Lease)))
	}
	return clientv3.OpPut(op.Key, string(op.Value))
}

// Watch implements KV. It requires a leader, so a member cut off from its cluster
// ends the watch instead of going silent.
func (e *EtcdKV) Watch(ctx context.Context, prefix string, fromRev int64) <-chan WatchResponse {
	out := make(chan WatchResponse)
	wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	wch := e.c.Watch(wctx, prefix, clientv3.WithPrefix(), clientv3.WithRev(fromRev))
	go func() {
		defer close(out)
		defer cancel()
		for r := range wch {
			resp := convertWatch(ctx, r)
			select {
			case out <- resp:
			case <-ctx.Done():
				return
			}
			if resp.Err != nil {
				return
			}
		}
		if ctx.Err() == nil {
			select {
			case out <- WatchResponse{Err: errdefs.Unavailable("cluster store: watch closed")}:
			case <-ctx.Done():
			}
		}
	}()
	return out
}

func convertWatch(ctx context.Context, r clientv3.WatchResponse) WatchResponse {
	if r.CompactRevision != 0 {
		return WatchResponse{Err: fmt.Errorf("%w (compacted at %d)", ErrCompacted, r.CompactRevision)}
	}
	if err := r.Err(); err != nil {
		return WatchResponse{Err: etcdErr(ctx, err)}
	}
	resp := WatchResponse{Rev: r.Header.Revision, Events: make([]WatchEvent, 0, len(r.Events))}
	for _, ev := range r.Events {
		we := WatchEvent{Type: EventPut, KV: fromEtcd(ev.Kv)}
		if ev.Type == clientv3.EventTypeDelete {
			we = WatchEvent{Type: EventDelete, KV: KeyValue{Key: string(ev.Kv.Key), ModRev: ev.Kv.ModRevision}}
		}
		resp.Events = append(resp.Events, we)
	}
	return resp
}

// Grant implements KV.
func (e *EtcdKV) Grant(ctx context.Context, ttl time.Duration) (LeaseID, error) {
	secs := int64((ttl + time.Second - 1) / time.Second)
	r, err := e.c.Grant(ctx, secs)
	if err != nil {
		return 0, etcdErr(ctx, err)
	}
	return LeaseID(r.ID), nil
}

// KeepAlive implements KV.
func (e *EtcdKV) KeepAlive(ctx context.Context, id LeaseID) error {
	_, err := e.c.KeepAliveOnce(ctx, clientv3.LeaseID(id))
	return etcdErr(ctx, err)
}

// Revoke implements KV.
func (e *EtcdKV) Revoke(ctx context.Context, id LeaseID) error {
	_, err := e.c.Revoke(ctx, clientv3.LeaseID(id))
	return etcdErr(ctx, err)
}
