package store

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRecordsConformance runs the same sequence on the bbolt store and the in-memory
// one: both must agree on what a failed update leaves (nothing) and on key order.
func TestRecordsConformance(t *testing.T) {
	bolt, err := Open(filepath.Join(t.TempDir(), "pier.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bolt.Close() })
	for name, r := range map[string]Records{"bbolt": bolt, "memory": NewMemory()} {
		t.Run(name, func(t *testing.T) {
			ctx := t.Context()
			type rec struct{ N int }
			for _, id := range []string{"b", "a", "c"} {
				if err := r.Put(ctx, "k", id, rec{len(id)}); err != nil {
					t.Fatal(err)
				}
			}
			boom := errors.New("boom")
			err := r.Update(ctx, func(tx Tx) error {
				if err := tx.Delete("k", "a"); err != nil {
					return err
				}
				if err := tx.Put("k", "z", rec{9}); err != nil {
					return err
				}
				return boom
			})
			if !errors.Is(err, boom) {
				t.Fatalf("update error %v", err)
			}
			if err := r.Update(ctx, func(tx Tx) error {
				if err := tx.Put("k", "d", rec{4}); err != nil {
					return err
				}
				return tx.Delete("k", "b")
			}); err != nil {
				t.Fatal(err)
			}
			var ids []string
			if err := r.ForEach(ctx, "k", func(id string, _ []byte) error { ids = append(ids, id); return nil }); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff([]string{"a", "c", "d"}, ids); diff != "" {
				t.Fatalf("records after a failed and a good update (-want +got):\n%s", diff)
			}
			got, err := List[rec](ctx, r, "k")
			if err != nil || len(got) != 3 || got[2].N != 4 {
				t.Fatalf("List: %v %v", got, err)
			}
			if err := r.Delete(ctx, "k", "missing"); err != nil {
				t.Fatalf("deleting a missing record: %v", err)
			}
		})
	}
}
