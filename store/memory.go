package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"sync"
)

// Memory is an in-memory Records with the same semantics as Store (atomic updates,
// JSON values, key order), for tests of record users.
type Memory struct {
	mu    sync.Mutex // guards kinds
	kinds map[string]map[string][]byte
}

// NewMemory returns an empty in-memory store.
func NewMemory() *Memory { return &Memory{kinds: map[string]map[string][]byte{}} }

type memTx struct {
	puts map[[2]string][]byte
	dels map[[2]string]bool
}

func (t *memTx) Put(kind, id string, v any) error {
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding %s %s: %w", kind, id, err)
	}
	k := [2]string{kind, id}
	delete(t.dels, k)
	t.puts[k] = data
	return nil
}

func (t *memTx) Delete(kind, id string) error {
	k := [2]string{kind, id}
	delete(t.puts, k)
	t.dels[k] = true
	return nil
}

// Update implements Records: nothing applies unless fn returns nil.
func (m *Memory) Update(ctx context.Context, fn func(Tx) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	tx := &memTx{puts: map[[2]string][]byte{}, dels: map[[2]string]bool{}}
	if err := fn(tx); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	for k := range tx.dels {
		delete(m.kinds[k[0]], k[1])
	}
	for k, v := range tx.puts {
		if m.kinds[k[0]] == nil {
			m.kinds[k[0]] = map[string][]byte{}
		}
		m.kinds[k[0]][k[1]] = v
	}
	return nil
}

// Put implements Records.
func (m *Memory) Put(ctx context.Context, kind, id string, v any) error {
	return m.Update(ctx, func(tx Tx) error { return tx.Put(kind, id, v) })
}

// Delete implements Records.
func (m *Memory) Delete(ctx context.Context, kind, id string) error {
	return m.Update(ctx, func(tx Tx) error { return tx.Delete(kind, id) })
}

// ForEach implements Records.
func (m *Memory) ForEach(ctx context.Context, kind string, fn func(id string, data []byte) error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	m.mu.Lock()
	ids := make([]string, 0, len(m.kinds[kind]))
	for id := range m.kinds[kind] {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	vals := make([][]byte, len(ids))
	for i, id := range ids {
		vals[i] = m.kinds[kind][id]
	}
	m.mu.Unlock()
	for i, id := range ids {
		if err := fn(id, vals[i]); err != nil {
			return err
		}
	}
	return nil
}
