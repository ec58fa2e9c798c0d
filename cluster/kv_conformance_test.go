package cluster

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/piernet/pier/cluster/clustertest"
)

// kvImpl is one KV under test plus what the conformance table needs beyond KV.
type kvImpl struct {
	kv      KV
	compact func(t *testing.T, rev int64)
}

func fakeImpl(*testing.T) kvImpl {
	f := NewFake()
	return kvImpl{kv: f, compact: func(_ *testing.T, rev int64) { f.Compact(rev) }}
}

func etcdImpl(t *testing.T) kvImpl {
	c := clustertest.Start(t).Client(t)
	return kvImpl{kv: NewEtcdKV(c), compact: func(t *testing.T, rev int64) {
		if _, err := c.Compact(t.Context(), rev); err != nil {
			t.Fatalf("compact: %v", err)
		}
	}}
}

// TestKVConformance runs one table against the fake and a real embedded etcd, so
// the fake cannot drift from etcd's semantics. Each case uses its own prefix.
func TestKVConformance(t *testing.T) {
	impls := map[string]func(*testing.T) kvImpl{"fake": fakeImpl, "etcd": etcdImpl}
	for name, mk := range impls {
		t.Run(name, func(t *testing.T) {
			impl := mk(t)
			for _, tc := range conformanceCases {
				t.Run(tc.name, func(t *testing.T) { tc.run(t, impl, "/t/"+tc.name+"/") })
			}
		})
	}
}

var conformanceCases = []struct {
	name string
	run  func(t *testing.T, impl kvImpl, p string)
}{
	{"create-if-absent", func(t *testing.T, impl kvImpl, p string) {
		ctx := t.Context()
		mustCreate(t, impl.kv, p+"a", "1")
		ok, _, err := Create(ctx, impl.kv, p+"a", []byte("2"), 0)
		if err != nil || ok {
			t.Fatalf("second create = %v, %v; want false, nil", ok, err)
		}
		kv := mustGet(t, impl.kv, p+"a")
		if string(kv.Value) != "1" || kv.Version != 1 || kv.CreateRev != kv.ModRev {
			t.Fatalf("after create: %+v", kv)
		}
	}},
	{"swap", func(t *testing.T, impl kvImpl, p string) {
		ctx := t.Context()
		rev := mustCreate(t, impl.kv, p+"a", "1")
		if ok, _, err := Swap(ctx, impl.kv, p+"a", rev-1, []byte("x"), 0); err != nil || ok {
			t.Fatalf("stale swap = %v, %v", ok, err)
		}
		ok, rev2, err := Swap(ctx, impl.kv, p+"a", rev, []byte("2"), 0)
		if err != nil || !ok {
			t.Fatalf("swap = %v, %v", ok, err)
		}
		kv := mustGet(t, impl.kv, p+"a")
		if string(kv.Value) != "2" || kv.Version != 2 || kv.CreateRev != rev || kv.ModRev != rev2 {
			t.Fatalf("after swap: %+v (create rev %d, swap rev %d)", kv, rev, rev2)
		}
		if ok, _, err := Swap(ctx, impl.kv, p+"new", 0, []byte("n"), 0); err != nil || !ok {
			t.Fatalf("swap of absent key with rev 0 = %v, %v", ok, err)
		}
	}},
	{"txn-atomic", func(t *testing.T, impl kvImpl, p string) {
		ctx := t.Context()
		mustCreate(t, impl.kv, p+"taken", "1")
		r, err := impl.kv.Txn(ctx, []Cmp{Absent(p + "free"), Absent(p + "taken")},
			[]Op{Put(p+"free", []byte("x"), 0), Delete(p + "taken")})
		if err != nil || r.Succeeded {
			t.Fatalf("txn = %+v, %v; want failed", r, err)
		}
		if _, ok, _ := impl.kv.Get(ctx, p+"free"); ok {
			t.Fatal("failed txn wrote a key")
		}
		r, err = impl.kv.Txn(ctx, []Cmp{Absent(p + "free"), Exists(p + "taken")},
			[]Op{Put(p+"free", []byte("x"), 0), Delete(p + "taken")})
		if err != nil || !r.Succeeded {
			t.Fatalf("txn = %+v, %v; want success", r, err)
		}
		kvs, _, _ := impl.kv.List(ctx, p, 0)
		if len(kvs) != 1 || kvs[0].Key != p+"free" || kvs[0].ModRev != r.Rev {
			t.Fatalf("after txn: %+v (rev %d)", kvs, r.Rev)
		}
	}},
	{"txn-duplicate-put", func(t *testing.T, impl kvImpl, p string) {
		_, err := impl.kv.Txn(t.Context(), nil, []Op{Put(p+"a", nil, 0), Put(p+"a", nil, 0)})
		if err == nil {
			t.Fatal("two puts of one key in a txn succeeded")
		}
	}},
	{"none-under-prefix", func(t *testing.T, impl kvImpl, p string) {
		ctx := t.Context()
		mustCreate(t, impl.kv, p+"ab", "sibling") // not under p+"a/"
		holds := func() bool {
			r, err := impl.kv.Txn(ctx, []Cmp{NoneUnder(p + "a/")}, nil)
			if err != nil {
				t.Fatal(err)
			}
			return r.Succeeded
		}
		if !holds() {
			t.Fatal("NoneUnder failed on an empty prefix")
		}
		mustCreate(t, impl.kv, p+"a/1", "x")
		mustCreate(t, impl.kv, p+"a/2", "x")
		if holds() {
			t.Fatal("NoneUnder held with keys under the prefix")
		}
		if r, _ := impl.kv.Txn(ctx, nil, []Op{DeleteUnder(p + "a/")}); !r.Succeeded {
			t.Fatal("delete under prefix failed")
		}
		if !holds() {
			t.Fatal("NoneUnder failed after deleting the prefix")
		}
		if _, ok, _ := impl.kv.Get(ctx, p+"ab"); !ok {
			t.Fatal("delete under prefix removed a sibling key")
		}
	}},
	{"unchanged-under-prefix", func(t *testing.T, impl kvImpl, p string) {
		ctx := t.Context()
		_, rev, err := impl.kv.List(ctx, p, 0)
		if err != nil {
			t.Fatal(err)
		}
		guard := func(rev int64) bool {
			r, err := impl.kv.Txn(ctx, []Cmp{UnchangedUnder(p, rev)}, nil)
			if err != nil {
				t.Fatal(err)
			}
			return r.Succeeded
		}
		if !guard(rev) {
			t.Fatal("UnchangedUnder failed on an empty prefix")
		}
		mustCreate(t, impl.kv, p+"x", "1")
		if guard(rev) {
			t.Fatal("UnchangedUnder held after a key appeared under the prefix")
		}
		_, rev, _ = impl.kv.List(ctx, p, 0)
		if !guard(rev) {
			t.Fatal("UnchangedUnder failed at the list's revision")
		}
	}},
	{"list-at-revision", func(t *testing.T, impl kvImpl, p string) {
		ctx := t.Context()
		mustCreate(t, impl.kv, p+"a", "1")
		rev := mustCreate(t, impl.kv, p+"b", "1")
		mustTxn(t, impl.kv, Put(p+"a", []byte("2"), 0), Delete(p+"b"))
		old, _, err := impl.kv.List(ctx, p, rev)
		if err != nil {
			t.Fatal(err)
		}
		if got := dumpKVs(old, p); got != "a=1 b=1" {
			t.Fatalf("list at %d = %q", rev, got)
		}
		now, cur, _ := impl.kv.List(ctx, p, 0)
		if got := dumpKVs(now, p); got != "a=2" || cur <= rev {
			t.Fatalf("list now = %q at %d", got, cur)
		}
	}},
	{"noop-txn-keeps-revision", func(t *testing.T, impl kvImpl, p string) {
		rev := mustCreate(t, impl.kv, p+"a", "1")
		r, err := impl.kv.Txn(t.Context(), nil, []Op{Delete(p + "missing")})
		if err != nil || !r.Succeeded || r.Rev != rev {
			t.Fatalf("deleting nothing = %+v, %v; want revision %d kept", r, err, rev)
		}
	}},
	{"watch-from-revision", func(t *testing.T, impl kvImpl, p string) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		first := mustCreate(t, impl.kv, p+"a", "1")
		mustTxn(t, impl.kv, Put(p+"b", []byte("1"), 0), Put(p+"c", []byte("1"), 0))
		mustCreate(t, impl.kv, "/elsewhere"+p, "x")
		ch := impl.kv.Watch(ctx, p, first)
		mustTxn(t, impl.kv, Delete(p+"a"))
		got := collectKV(t, ch, 4, p)
		if got != "put a=1, put b=1, put c=1, delete a" {
			t.Fatalf("watched %q", got)
		}
	}},
	{"watch-compacted", func(t *testing.T, impl kvImpl, p string) {
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		first := mustCreate(t, impl.kv, p+"a", "1")
		last := mustCreate(t, impl.kv, p+"b", "1")
		impl.compact(t, last)
		if _, _, err := impl.kv.List(ctx, p, first); !errors.Is(err, ErrCompacted) {
			t.Fatalf("list at compacted revision: %v", err)
		}
		r := <-impl.kv.Watch(ctx, p, first)
		if !errors.Is(r.Err, ErrCompacted) {
			t.Fatalf("watch from compacted revision: %+v", r)
		}
		if got := collectKV(t, impl.kv.Watch(ctx, p, last), 1, p); got != "put b=1" {
			t.Fatalf("watch from the compaction revision: %q", got)
		}
	}},
	{"lease", func(t *testing.T, impl kvImpl, p string) {
		ctx := t.Context()
		id, err := impl.kv.Grant(ctx, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if ok, _, err := Create(ctx, impl.kv, p+"leased", []byte("1"), id); !ok || err != nil {
			t.Fatalf("create with lease = %v, %v", ok, err)
		}
		mustCreate(t, impl.kv, p+"detached", "1")
		if kv := mustGet(t, impl.kv, p+"leased"); kv.Lease != id {
			t.Fatalf("lease = %d, want %d", kv.Lease, id)
		}
		if err := impl.kv.KeepAlive(ctx, id); err != nil {
			t.Fatalf("keepalive: %v", err)
		}
		if err := impl.kv.Revoke(ctx, id); err != nil {
			t.Fatalf("revoke: %v", err)
		}
		kvs, _, _ := impl.kv.List(ctx, p, 0)
		if got := dumpKVs(kvs, p); got != "detached=1" {
			t.Fatalf("after revoke: %q", got)
		}
		if err := impl.kv.KeepAlive(ctx, id); !errors.Is(err, ErrLeaseNotFound) {
			t.Fatalf("keepalive of revoked lease: %v", err)
		}
		if _, _, err := Create(ctx, impl.kv, p+"x", nil, id); !errors.Is(err, ErrLeaseNotFound) {
			t.Fatalf("put with revoked lease: %v", err)
		}
	}},
	{"put-detaches-lease", func(t *testing.T, impl kvImpl, p string) {
		ctx := t.Context()
		id, err := impl.kv.Grant(ctx, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		mustTxn(t, impl.kv, Put(p+"k", []byte("1"), id))
		mustTxn(t, impl.kv, Put(p+"k", []byte("2"), 0))
		if err := impl.kv.Revoke(ctx, id); err != nil {
			t.Fatal(err)
		}
		if kv := mustGet(t, impl.kv, p+"k"); string(kv.Value) != "2" || kv.Lease != 0 {
			t.Fatalf("after revoke: %+v", kv)
		}
	}},
}

func mustCreate(t *testing.T, kv KV, key, val string) int64 {
	t.Helper()
	ok, rev, err := Create(t.Context(), kv, key, []byte(val), 0)
	if err != nil || !ok {
		t.Fatalf("create %s = %v, %v", key, ok, err)
	}
	return rev
}

func mustTxn(t *testing.T, kv KV, ops ...Op) int64 {
	t.Helper()
	r, err := kv.Txn(t.Context(), nil, ops)
	if err != nil || !r.Succeeded {
		t.Fatalf("txn = %+v, %v", r, err)
	}
	return r.Rev
}

func mustGet(t *testing.T, kv KV, key string) KeyValue {
	t.Helper()
	v, ok, err := kv.Get(t.Context(), key)
	if err != nil || !ok {
		t.Fatalf("get %s = %v, %v", key, ok, err)
	}
	return v
}

func dumpKVs(kvs []KeyValue, p string) string {
	s := ""
	for i, kv := range kvs {
		if i > 0 {
			s += " "
		}
		s += kv.Key[len(p):] + "=" + string(kv.Value)
	}
	return s
}

// collect reads n events from ch (failing on errors or a 10 s stall).
func collectKV(t *testing.T, ch <-chan WatchResponse, n int, p string) string {
	t.Helper()
	s := ""
	for got := 0; got < n; {
		select {
		case r, ok := <-ch:
			if !ok || r.Err != nil {
				t.Fatalf("watch ended after %q: %v", s, r.Err)
			}
			for _, ev := range r.Events {
				if s != "" {
					s += ", "
				}
				if ev.Type == EventDelete {
					s += "delete " + ev.KV.Key[len(p):]
				} else {
					s += fmt.Sprintf("put %s=%s", ev.KV.Key[len(p):], ev.KV.Value)
				}
				got++
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("watch stalled after %q", s)
		}
	}
	return s
}
