package cluster

import (
	"context"
	"sort"
	"strconv"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// CreateNetwork records a global network, claiming its name cluster-wide in the same
// transaction.
func (c *Cluster) CreateNetwork(ctx context.Context, rec NetworkRecord) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	rec.CreatedBy = c.o.NodeID
	nameKey := prefNetNames + escape(rec.Name)
	r, err := c.kv.Txn(ctx, []Cmp{Absent(prefNetworks + rec.ID), Absent(nameKey)},
		[]Op{Put(prefNetworks+rec.ID, mustJSON(rec), 0), Put(nameKey, []byte(rec.ID), 0)})
	if err != nil {
		return storeErr(err)
	}
	if !r.Succeeded {
		return errdefs.Conflict("network with name %s already exists", rec.Name)
	}
	return nil
}

// DeleteNetwork removes a global network. It is refused, naming a node, while any
// endpoint record exists on it: the check and the delete are one transaction, so a
// concurrent endpoint create and this delete cannot both succeed.
func (c *Cluster) DeleteNetwork(ctx context.Context, id string) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	kv, ok, err := c.kv.Get(ctx, prefNetworks+id)
	if err != nil {
		return storeErr(err)
	}
	if !ok {
		return errdefs.NotFound("network %s not found", id)
	}
	rec, err := DecodeNetwork(kv.Value)
	if err != nil {
		return err
	}
	epPrefix := prefEndpoints + id + "/"
	r, err := c.kv.Txn(ctx, []Cmp{Unchanged(kv.Key, kv.ModRev), NoneUnder(epPrefix)},
		[]Op{Delete(kv.Key), Delete(prefNetNames + escape(rec.Name)), DeleteUnder(prefEpNames + id + "/")})
	if err != nil {
		return storeErr(err)
	}
	if r.Succeeded {
		return nil
	}
	eps, _, err := c.kv.List(ctx, epPrefix, 0)
	if err != nil {
		return storeErr(err)
	}
	if len(eps) == 0 {
		return errdefs.Conflict("network %s changed while being deleted: try again", rec.Name)
	}
	return errdefs.Forbidden("error while removing network: network %s id %s has active endpoints (on %s)", rec.Name, id, c.nodesOf(eps))
}

// nodesOf names the nodes holding the endpoint records eps.
func (c *Cluster) nodesOf(eps []KeyValue) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	seen := map[string]bool{}
	var names []string
	for _, kv := range eps {
		r, err := DecodeEndpoint(kv.Value)
		if err != nil || seen[r.NodeID] {
			continue
		}
		seen[r.NodeID] = true
		name := "node " + short(r.NodeID)
		if m, ok := c.view.members[r.NodeID]; ok {
			name = "node " + m.Name
			if st := c.view.stateLocked(r.NodeID); st != Ready {
				name += " (" + string(st) + ")"
			}
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// Networks lists the global networks of the view.
func (c *Cluster) Networks() []NetworkRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]NetworkRecord, 0, len(c.view.networks))
	for _, n := range c.view.networks {
		out = append(out, n)
	}
	return out
}

// PutEndpoint records (or updates) an endpoint of this node. Its name is claimed on
// the network in the same transaction (Forbidden when another endpoint holds it); the
// network must still exist (NotFound).
func (c *Cluster) PutEndpoint(ctx context.Context, rec EndpointRecord) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	rec.NodeID = c.o.NodeID
	nameKey := epNameKey(rec.NetworkID, rec.Name)
	held, ok, err := c.kv.Get(ctx, nameKey)
	if err != nil {
		return storeErr(err)
	}
	if ok && string(held.Value) != rec.ID {
		return errdefs.Forbidden("endpoint with name %s already exists in network", rec.Name)
	}
	r, err := c.kv.Txn(ctx, []Cmp{Exists(prefNetworks + rec.NetworkID), Unchanged(nameKey, held.ModRev)},
		[]Op{Put(epKey(rec.NetworkID, rec.ID), mustJSON(rec), 0), Put(nameKey, []byte(rec.ID), 0)})
	if err != nil {
		return storeErr(err)
	}
	if r.Succeeded {
		return nil
	}
	if _, ok, err := c.kv.Get(ctx, prefNetworks+rec.NetworkID); err == nil && !ok {
		return errdefs.NotFound("network %s not found", rec.NetworkID)
	}
	// The name is ours after all: this transaction was applied once already and the
	// client retried it (etcd's client retries a request whose answer was lost), or
	// a concurrent update of the same endpoint won. Both wrote this very record.
	if now, ok, err := c.kv.Get(ctx, nameKey); err == nil && ok && string(now.Value) == rec.ID {
		if _, ok, err := c.kv.Get(ctx, epKey(rec.NetworkID, rec.ID)); err == nil && ok {
			return c.putEndpointRecord(ctx, rec, now)
		}
	}
	return errdefs.Forbidden("endpoint with name %s already exists in network", rec.Name)
}

// putEndpointRecord writes rec again under its name claim as read in held (the claim
// is this endpoint's): the last writer's view of the endpoint wins.
func (c *Cluster) putEndpointRecord(ctx context.Context, rec EndpointRecord, held KeyValue) error {
	r, err := c.kv.Txn(ctx, []Cmp{Exists(prefNetworks + rec.NetworkID), Unchanged(held.Key, held.ModRev)},
		[]Op{Put(epKey(rec.NetworkID, rec.ID), mustJSON(rec), 0)})
	if err != nil {
		return storeErr(err)
	}
	if !r.Succeeded {
		return errdefs.Conflict("endpoint %s changed concurrently; try again", rec.Name)
	}
	return nil
}

// DeleteEndpoint removes an endpoint record and its name claim; a missing one is fine.
func (c *Cluster) DeleteEndpoint(ctx context.Context, nid, eid string) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	kv, ok, err := c.kv.Get(ctx, epKey(nid, eid))
	if err != nil {
		return storeErr(err)
	}
	if !ok {
		return nil
	}
	ops := []Op{Delete(kv.Key), clearAcks(eid)}
	if rec, err := DecodeEndpoint(kv.Value); err == nil {
		if held, ok, _ := c.kv.Get(ctx, epNameKey(nid, rec.Name)); ok && string(held.Value) == eid {
			ops = append(ops, Delete(held.Key))
		}
	}
	_, err = c.kv.Txn(ctx, nil, ops)
	return storeErr(err)
}

// Endpoints lists the visible endpoints of network nid.
func (c *Cluster) Endpoints(nid string) []EndpointRecord {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []EndpointRecord
	for _, ep := range c.view.endpoints {
		if ep.NetworkID == nid && c.view.visible(ep) {
			out = append(out, ep)
		}
	}
	return out
}

// firstVNI is where automatic VXLAN IDs start (Docker swarm's numbering).
const firstVNI = 4096

// AllocateVNIs reserves n VXLAN IDs for network nid: the wanted ones (Conflict when
// any is taken), the rest from firstVNI up. One transaction; retried on a race.
func (c *Cluster) AllocateVNIs(ctx context.Context, nid string, want []uint32, n int) ([]uint32, error) {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	for range 20 {
		used, _, err := c.kv.List(ctx, prefVNIs, 0)
		if err != nil {
			return nil, storeErr(err)
		}
		taken := map[uint32]bool{}
		for _, kv := range used {
			if v, err := strconv.ParseUint(strings.TrimPrefix(kv.Key, prefVNIs), 10, 32); err == nil {
				taken[uint32(v)] = true
			}
		}
		out := append([]uint32{}, want...)
		for _, v := range want {
			if taken[v] {
				return nil, errdefs.Conflict("VXLAN ID %d is already in use by another network", v)
			}
		}
		for v := uint32(firstVNI); len(out) < n; v++ {
			if !taken[v] {
				out = append(out, v)
				taken[v] = true
			}
		}
		var cmps []Cmp
		var ops []Op
		for _, v := range out {
			cmps = append(cmps, Absent(vniKey(v)))
			ops = append(ops, Put(vniKey(v), []byte(nid), 0))
		}
		r, err := c.kv.Txn(ctx, cmps, ops)
		if err != nil {
			return nil, storeErr(err)
		}
		if r.Succeeded {
			return out, nil
		}
	}
	return nil, errdefs.Unavailable("could not reserve VXLAN IDs: too much contention, try again")
}

// ReleaseVNIs frees the VXLAN IDs of network nid.
func (c *Cluster) ReleaseVNIs(ctx context.Context, nid string) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	used, _, err := c.kv.List(ctx, prefVNIs, 0)
	if err != nil {
		return storeErr(err)
	}
	var ops []Op
	var cmps []Cmp
	for _, kv := range used {
		if string(kv.Value) == nid {
			ops = append(ops, Delete(kv.Key))
			cmps = append(cmps, Unchanged(kv.Key, kv.ModRev))
		}
	}
	if len(ops) == 0 {
		return nil
	}
	_, err = c.kv.Txn(ctx, cmps, ops)
	return storeErr(err)
}
