package cluster

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/piernet/pier/errdefs"
)

// DefaultTTL is the node lease's default time to live.
const DefaultTTL = 3 * time.Second

// opTimeout bounds every call to the store made on behalf of a user's request, so an
// unreachable store answers fast instead of hanging the request; once the node knows
// the store is unreachable (its keepalive or watch failed) requests get downTimeout,
// which fails them within half a second while still noticing a store that is back.
const (
	opTimeout   = 3 * time.Second
	downTimeout = 500 * time.Millisecond
)

// Options configure a Cluster.
type Options struct {
	KV           KV
	NodeID       string
	NodeName     string
	Advertise    netip.Addr
	TTL          time.Duration // node lease; 0 = DefaultTTL
	Version      string
	BootID       string
	Capabilities map[string]string
	EtcdMember   bool
	WGKey        string // this node's WireGuard public key ("" = no tunnel)
	WGPort       int
	Logger       *slog.Logger
}

// NodeState is what other nodes know of a node.
type NodeState string

// Node states.
const (
	Ready NodeState = "ready" // its lease is alive
	Down  NodeState = "down"  // its lease expired
	Left  NodeState = "left"  // it shut down gracefully
)

// Node is a node with its state.
type Node struct {
	NodeRecord
	State     NodeState
	Endpoints int // its endpoints on global networks
}

// Cluster is this node's view of and voice in the cluster store. Safe for concurrent use.
type Cluster struct {
	kv  KV
	o   Options
	log *slog.Logger

	keyMu sync.Mutex // guards o.WGKey and wgGen (key rotation)
	wgGen int64

	lease  atomic.Int64 // the node lease (a LeaseID); renewed by the keepalive loop
	down   atomic.Bool  // the store did not answer the last keepalive or watch
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed bool

	mu   sync.Mutex // guards view and subs
	view view
	subs map[*subscription]struct{}
}

// New returns a Cluster; Start joins it.
func New(o Options) (*Cluster, error) {
	if o.KV == nil || !validID(o.NodeID) || !validName(o.NodeName) || !o.Advertise.IsValid() {
		return nil, errdefs.InvalidArgument("cluster: KV, node ID, node name and advertise address are required")
	}
	if o.TTL == 0 {
		o.TTL = DefaultTTL
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Cluster{kv: o.KV, o: o, log: o.Logger.With("component", "cluster"), view: newView(),
		subs: map[*subscription]struct{}{}}, nil
}

// Self is this node's record.
func (c *Cluster) Self() NodeRecord {
	c.keyMu.Lock()
	key, gen := c.o.WGKey, c.wgGen
	c.keyMu.Unlock()
	return NodeRecord{ID: c.o.NodeID, Name: c.o.NodeName, Addr: c.o.Advertise, Version: c.o.Version,
		BootID: c.o.BootID, Capabilities: c.o.Capabilities, EtcdMember: c.o.EtcdMember, WGKey: key, WGPort: c.o.WGPort, WGGen: gen}
}

// Start registers this node (refusing a name held by another live node, before
// anything is written), starts the lease keepalive and the watch, and returns once the
// view is filled.
func (c *Cluster) Start(ctx context.Context) error {
	if err := c.register(ctx); err != nil {
		return err
	}
	rev, err := c.relist(ctx)
	if err != nil {
		return err
	}
	lctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	c.cancel = cancel
	c.wg.Go(func() { c.keepalive(lctx) })
	c.wg.Go(func() { c.watch(lctx, rev) })
	return nil
}

// register claims the node name and puts the node record and its liveness key.
func (c *Cluster) register(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	nameKey := prefNodeNames + escape(c.o.NodeName)
	held, takeover, err := nameHolder(ctx, c.kv, c.o.NodeID, c.o.NodeName)
	if err != nil {
		return err
	}
	if err := c.continueKeyGen(ctx); err != nil {
		return err
	}
	lease, err := c.kv.Grant(ctx, c.o.TTL)
	if err != nil {
		return storeErr(err)
	}
	self := c.Self()
	self.Started = time.Now().UTC()
	cmps := []Cmp{Unchanged(nameKey, held.ModRev)}
	ops := []Op{Put(nameKey, []byte(c.o.NodeID), 0), Put(prefMembers+c.o.NodeID, mustJSON(self), 0),
		Put(prefAlive+c.o.NodeID, []byte(c.o.Advertise.String()), lease)}
	if takeover != "" {
		// The name's previous holder is dead and gone for good (a wiped data root):
		// its record and endpoints go with it.
		ops = append(ops, Delete(prefMembers+takeover))
		c.log.InfoContext(ctx, "taking over the name of a dead node", "name", c.o.NodeName, "old_id", short(takeover))
	}
	r, err := c.kv.Txn(ctx, cmps, ops)
	if err != nil {
		return storeErr(err)
	}
	if !r.Succeeded {
		_ = c.kv.Revoke(ctx, lease)
		return errdefs.Conflict("node name %s was claimed concurrently by another node", c.o.NodeName)
	}
	if takeover != "" {
		c.dropNodeEndpoints(ctx, takeover)
	}
	c.lease.Store(int64(lease))
	return nil
}

// CheckName reads whether name is free for node id (or held by a node that is not
// alive, which id may take over). A read-only pre-flight for pierd's start; Start
// decides race-free.
func CheckName(ctx context.Context, kv KV, id, name string) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_, _, err := nameHolder(ctx, kv, id, name)
	return err
}

// nameHolder returns the name key as read and the ID of a dead node holding the name
// ("" if none); Conflict when a live node other than id holds it.
func nameHolder(ctx context.Context, kv KV, id, name string) (KeyValue, string, error) {
	held, ok, err := kv.Get(ctx, prefNodeNames+escape(name))
	if err != nil {
		return held, "", storeErr(err)
	}
	if !ok || string(held.Value) == id {
		return held, "", nil
	}
	other := string(held.Value)
	if _, alive, err := kv.Get(ctx, prefAlive+other); err != nil {
		return held, "", storeErr(err)
	} else if alive {
		return held, "", errdefs.Conflict("node name %s is held by a live node (%s): choose another --node-name", name, short(other))
	}
	return held, other, nil
}

// dropNodeEndpoints deletes the endpoint records of a node that will not return.
func (c *Cluster) dropNodeEndpoints(ctx context.Context, nodeID string) {
	eps, _, err := c.kv.List(ctx, prefEndpoints, 0)
	if err != nil {
		c.log.WarnContext(ctx, "listing endpoints of a replaced node", "err", err)
		return
	}
	for _, kv := range eps {
		if r, err := DecodeEndpoint(kv.Value); err == nil && r.NodeID == nodeID {
			_, _ = c.kv.Txn(ctx, []Cmp{Unchanged(kv.Key, kv.ModRev)}, []Op{Delete(kv.Key), Delete(epNameKey(r.NetworkID, r.Name))})
		}
	}
}

// keepalive renews the lease every TTL/3; when it expired (a partition longer than
// the TTL) it takes a new one and puts the liveness key again, so the node rejoins.
func (c *Cluster) keepalive(ctx context.Context) {
	t := time.NewTicker(c.o.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		kctx, cancel := context.WithTimeout(ctx, c.o.TTL/3)
		err := c.kv.KeepAlive(kctx, LeaseID(c.lease.Load()))
		if errors.Is(err, ErrLeaseNotFound) {
			err = c.renewLease(kctx)
		}
		cancel()
		c.down.Store(err != nil)
		if err != nil && ctx.Err() == nil {
			c.log.Warn("keeping the node lease alive", "err", err)
		}
	}
}

func (c *Cluster) renewLease(ctx context.Context) error {
	lease, err := c.kv.Grant(ctx, c.o.TTL)
	if err != nil {
		return err
	}
	if _, err := c.kv.Txn(ctx, nil, []Op{Put(prefAlive+c.o.NodeID, []byte(c.o.Advertise.String()), lease)}); err != nil {
		return err
	}
	c.lease.Store(int64(lease))
	c.log.Info("node lease had expired: rejoined the cluster")
	return nil
}

// Close leaves the cluster gracefully: the node is marked left and its lease revoked
// (others see it at once), then the loops stop. Idempotent.
func (c *Cluster) Close(ctx context.Context) error {
	if c.closed || c.cancel == nil {
		return nil
	}
	c.closed = true
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	self := c.Self()
	self.Left, self.Started = true, time.Now().UTC()
	_, err := c.kv.Txn(ctx, nil, []Op{Put(prefMembers+c.o.NodeID, mustJSON(self), 0)})
	if rerr := c.kv.Revoke(ctx, LeaseID(c.lease.Load())); err == nil {
		err = rerr
	}
	c.cancel()
	c.mu.Lock()
	for s := range c.subs {
		s.close()
	}
	c.subs = map[*subscription]struct{}{}
	c.mu.Unlock()
	c.wg.Wait()
	if err != nil {
		return storeErr(err)
	}
	return nil
}

// opContext bounds one user-facing store operation (see opTimeout).
func (c *Cluster) opContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if c.down.Load() {
		return context.WithTimeout(ctx, downTimeout)
	}
	return context.WithTimeout(ctx, opTimeout)
}

// storeErr makes sure a failed store call reads as the cluster store being
// unavailable (the KV implementations already say so for etcd's own errors).
func storeErr(err error) error {
	if err == nil || errdefs.KindOf(err) != errdefs.KindUnknown || errors.Is(err, context.Canceled) {
		return err
	}
	return errdefs.Unavailable("cluster store unavailable: %v", err)
}

func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// Nodes lists every node the cluster knows, with its state.
func (c *Cluster) Nodes() []Node {
	c.mu.Lock()
	defer c.mu.Unlock()
	count := map[string]int{}
	for _, ep := range c.view.endpoints {
		count[ep.NodeID]++
	}
	out := make([]Node, 0, len(c.view.members))
	for id, m := range c.view.members {
		out = append(out, Node{NodeRecord: m, State: c.view.stateLocked(id), Endpoints: count[id]})
	}
	return out
}

func isUnder(key, prefix string) (string, bool) {
	return strings.CutPrefix(key, prefix)
}
