package store

import (
	"errors"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/errdefs"
)

type rec struct {
	ID   string
	Name string
}

func TestPutListDeleteSurviveReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pier.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	for _, r := range []rec{{"b", "two"}, {"a", "one"}, {"c", "three"}} {
		if err := s.Put(ctx, "net", r.ID, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Delete(ctx, "net", "c"); err != nil {
		t.Fatal(err)
	}
	s.Close()

	s, err = Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	got, err := List[rec](ctx, s, "net")
	if err != nil {
		t.Fatal(err)
	}
	want := []rec{{"a", "one"}, {"b", "two"}}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("records after reopen (-want +got):\n%s", diff)
	}
}

func TestUpdateIsAtomic(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), "pier.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	boom := errors.New("boom")
	err = s.Update(t.Context(), func(tx Tx) error {
		if err := tx.Put("ep", "x", rec{ID: "x"}); err != nil {
			return err
		}
		return boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("Update error = %v, want boom", err)
	}
	got, err := List[rec](t.Context(), s, "ep")
	if err != nil || len(got) != 0 {
		t.Fatalf("after failed update: %v %v, want no records", got, err)
	}
}

func TestSecondOpenRefused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pier.db")
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	// bbolt's flock is per open file description, so a second Open in the same
	// process contends exactly like a second pierd would.
	_, err = Open(path)
	if !errdefs.Is(err, errdefs.KindUnavailable) {
		t.Fatalf("second Open: %v, want Unavailable", err)
	}
}
