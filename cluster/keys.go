package cluster

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/piernet/pier/errdefs"
)

// PublishKey replaces this node's WireGuard public key in its node record, as a new
// generation, which it returns. Peers switch to it when they see the record and
// acknowledge (AckKey); WaitKeyAcked waits for them.
func (c *Cluster) PublishKey(ctx context.Context, key string) (int64, error) {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	c.keyMu.Lock()
	c.o.WGKey = key
	c.wgGen++
	gen := c.wgGen
	c.keyMu.Unlock()
	_, err := c.kv.Txn(ctx, nil, []Op{Put(prefMembers+c.o.NodeID, mustJSON(c.Self()), 0)})
	return gen, storeErr(err)
}

// AckKey records that this node now uses generation gen of node's key.
func (c *Cluster) AckKey(ctx context.Context, node string, gen int64) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	_, err := c.kv.Txn(ctx, nil, []Op{Put(prefKeyAcks+node+"/"+c.o.NodeID, []byte(strconv.FormatInt(gen, 10)), 0)})
	return storeErr(err)
}

// WaitKeyAcked waits until every other ready node acknowledged generation gen of this
// node's key, or timeout passes; it returns the names of the nodes that had not.
func (c *Cluster) WaitKeyAcked(ctx context.Context, gen int64, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	for {
		missing, err := c.keyUnacked(ctx, gen)
		if err != nil || len(missing) == 0 || time.Now().After(deadline) {
			return missing, err
		}
		select {
		case <-ctx.Done():
			return missing, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func (c *Cluster) keyUnacked(ctx context.Context, gen int64) ([]string, error) {
	kvs, _, err := c.kv.List(ctx, prefKeyAcks+c.o.NodeID+"/", 0)
	if err != nil {
		return nil, storeErr(err)
	}
	acked := map[string]bool{}
	for _, kv := range kvs {
		peer := kv.Key[strings.LastIndexByte(kv.Key, '/')+1:]
		if g, err := strconv.ParseInt(string(kv.Value), 10, 64); err == nil && g >= gen {
			acked[peer] = true
		}
	}
	var missing []string
	for _, n := range c.Nodes() {
		if n.ID != c.o.NodeID && n.State == Ready && n.WGKey != "" && !acked[n.ID] {
			missing = append(missing, n.Name)
		}
	}
	slices.Sort(missing)
	return missing, nil
}

// continueKeyGen carries the key generation over from this node's previous record
// (a new key after a restart is a new generation): acknowledgements of an old
// generation must never count for a newer key.
func (c *Cluster) continueKeyGen(ctx context.Context) error {
	kv, ok, err := c.kv.Get(ctx, prefMembers+c.o.NodeID)
	if err != nil || !ok {
		return storeErr(err)
	}
	old, err := DecodeNode(kv.Value)
	if err != nil {
		return nil // rewritten below
	}
	c.keyMu.Lock()
	defer c.keyMu.Unlock()
	c.wgGen = old.WGGen
	if old.WGKey != c.o.WGKey {
		c.wgGen++
	}
	return nil
}

// LockKeyRotation takes the cluster-wide key rotation lock, waiting up to timeout
// while another node holds it: one node rotates at a time, so that no two ends of a
// tunnel change keys within one handshake. The lock is held under this node's lease
// (a node that dies releases it when its lease expires); unlock releases it.
func (c *Cluster) LockKeyRotation(ctx context.Context, timeout time.Duration) (unlock func(), err error) {
	deadline := time.Now().Add(timeout)
	for {
		octx, cancel := c.opContext(ctx)
		ok, rev, err := Create(octx, c.kv, keyRotateLock, []byte(c.o.NodeID), LeaseID(c.lease.Load()))
		cancel()
		if err != nil {
			return nil, storeErr(err)
		}
		if ok {
			return func() {
				uctx, cancel := c.opContext(context.WithoutCancel(ctx))
				defer cancel()
				_, _ = c.kv.Txn(uctx, []Cmp{Unchanged(keyRotateLock, rev)}, []Op{Delete(keyRotateLock)})
			}, nil
		}
		if time.Now().After(deadline) {
			return nil, errdefs.Unavailable("another node's key rotation %s", c.rotationHolder(ctx))
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// rotationHolder names the node holding the rotation lock, for an error.
func (c *Cluster) rotationHolder(ctx context.Context) string {
	kv, ok, err := c.kv.Get(ctx, keyRotateLock)
	if err != nil || !ok {
		return "was in progress"
	}
	name := string(kv.Value)
	for _, n := range c.Nodes() {
		if n.ID == name {
			name = n.Name
		}
	}
	return fmt.Sprintf("(node %s) is still in progress", name)
}
