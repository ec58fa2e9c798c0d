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

// Tx is a read-write transaction: Put and Delete are applied atomically when the
// function given to Update returns nil.
type Tx struct{ tx *bolt.Tx }

// Put stores v (JSON-encoded) under kind/id.
func (t *Tx) Put(kind, id string, v any) error {
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
func (t *Tx) Delete(kind, id string) error {
	b := t.tx.Bucket([]byte(kind))
	if b == nil {
		return nil
	}
	return b.Delete([]byte(id))
}

// Update runs fn in one atomic, durable transaction.
func (s *Store) Update(ctx context.Context, fn func(*Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.db.Update(func(tx *bolt.Tx) error { return fn(&Tx{tx: tx}) })
}

// Put stores one record.
func (s *Store) Put(ctx context.Context, kind, id string, v any) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.Put(kind, id, v) })
}

// Delete removes one record.
func (s *Store) Delete(ctx context.Context, kind, id string) error {
	return s.Update(ctx, func(tx *Tx) error { return tx.Delete(kind, id) })
}

// List decodes every record of kind into T, in key order.
func List[T any](ctx context.Context, s *Store, kind string) ([]T, error) {
	var out []T
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket([]byte(kind))
		if b == nil {
			return nil
		}
		return b.ForEach(func(k, v []byte) error {
			var rec T
			if err := json.Unmarshal(v, &rec); err != nil {
				return fmt.Errorf("decoding %s %s: %w", kind, k, err)
			}
			out = append(out, rec)
			return nil
		})
	})
	return out, err
}
