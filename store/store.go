// Package store persists pier's records (networks, endpoints, sandboxes) as JSON values
// in a bbolt file, one bucket per record kind. It owns durability and atomic multi-record
// updates only; it does not know what the records mean.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/piernet/pier/errdefs"
)

// Records is what the controller needs of a records store: atomic multi-record
// updates, single puts and deletes, and iteration over a kind. *Store implements it
// over bbolt; Memory in memory (tests).
type Records interface {
	Update(ctx context.Context, fn func(Tx) error) error
	Put(ctx context.Context, kind, id string, v any) error
	Delete(ctx context.Context, kind, id string) error
	// ForEach calls fn with every record of kind, in key order.
	ForEach(ctx context.Context, kind string, fn func(id string, data []byte) error) error
}

// Tx is one atomic update: its puts and deletes apply together when the function
// given to Update returns nil.
type Tx interface {
	Put(kind, id string, v any) error
	Delete(kind, id string) error
}

var (
	_ Records = (*Store)(nil)
	_ Records = (*Memory)(nil)
)

// Store is a records store backed by one bbolt file. Safe for concurrent use.
type Store struct {
	db *bolt.DB
}

// Open opens (creating if needed) the store file at path. A store already opened by
// another process is refused with an Unavailable error instead of blocking.
func Open(path string) (*Store, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating data root: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 200 * time.Millisecond, NoFreelistSync: true, FreelistType: bolt.FreelistMapType})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, errdefs.Unavailable("store %s is locked: another pierd (or pier controller) is using this data root", path)
	}
	if err != nil {
		return nil, fmt.Errorf("opening store %s: %w", path, err)
	}
	return &Store{db: db}, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// boltTx is a bbolt read-write transaction as a Tx.
type boltTx struct{ tx *bolt.Tx }

// Put stores v (JSON-encoded) under kind/id.
func (t *boltTx) Put(kind, id string, v any) error {
	b, err := t.tx.CreateBucketIfNotExists([]byte(kind))
	if err != nil {
		return fmt.Errorf("bucket %s: %w", kind, err)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s %s: %w", kind, id, err)
	}
	return b.Put([]byte(id), data)
}

// Delete removes kind/id; a missing record is not an error.
func (t *boltTx) Delete(kind, id string) error {
	b := t.tx.Bucket([]byte(kind))
	if b == nil {
		return nil
	}
	return b.Delete([]byte(id))
}

// Update runs fn in one atomic, durable transaction.
func (s *Store) Update(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&boltTx{tx: tx}) })
}

// Put stores one record.
func (s *Store) Put(ctx context.Context, kind, id string, v any) error {
	return s.Update(ctx, func(tx Tx) error { return tx.Put(kind, id, v) })
}

// Delete removes one record.
func (s *Store) Delete(ctx context.Context, kind, id string) error {
	return s.Update(ctx, func(tx Tx) error { return tx.Delete(kind, id) })
}

// ForEach implements Records.
func (s *Store) ForEach(ctx context.Context, kind string, fn func(id string, data []byte) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(kind))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error { return fn(string(k), v) })
	})
}

// List decodes every record of kind into T, in key order.
func List[T any](ctx context.Context, r Records, kind string) ([]T, error) {
	var out []T
	err := r.ForEach(ctx, kind, func(id string, data []byte) error {
		var rec T
		if err := json.Unmarshal(data, &rec); err != nil {
			return fmt.Errorf("decoding %s %s: %w", kind, id, err)
		}
		out = append(out, rec)
		return nil
	})
	return out, err
}
