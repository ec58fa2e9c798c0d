package cluster

import (
	"context"
	"path"
	"strings"
	"time"

	"github.com/piernet/pier/errdefs"
)

// CreateService records a service on global networks, claiming its name and its
// ingress-published ports cluster-wide in the same transaction.
func (c *Cluster) CreateService(ctx context.Context, rec ServiceRecord) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	rec.CreatedBy = c.o.NodeID
	nameKey := prefSvcNames + escape(rec.Name)
	cmps := []Cmp{Absent(prefServices + rec.ID), Absent(nameKey)}
	ops := []Op{Put(prefServices+rec.ID, mustJSON(rec), 0), Put(nameKey, []byte(rec.ID), 0)}
	ports := ingressKeys(rec)
	for _, k := range ports {
		cmps, ops = append(cmps, Absent(k)), append(ops, Put(k, []byte(rec.ID), 0))
	}
	r, err := c.kv.Txn(ctx, cmps, ops)
	if err != nil {
		return storeErr(err)
	}
	if r.Succeeded {
		return nil
	}
	if err := c.ingressConflict(ctx, ports); err != nil {
		return err
	}
	return errdefs.Conflict("service name %q is already in use in the cluster", rec.Name)
}

// ingressKeys are the claims of a service's ingress-published ports.
func ingressKeys(rec ServiceRecord) []string {
	var out []string
	for _, p := range rec.Publish {
		if !strings.Contains(p, "mode=ingress") {
			continue
		}
		var proto, port string
		for f := range strings.SplitSeq(p, ",") {
			k, v, _ := strings.Cut(f, "=")
			switch k {
			case "protocol":
				proto = v
			case "published":
				port = v
			}
		}
		out = append(out, prefIngress+proto+"/"+port)
	}
	return out
}

// DeleteService removes a service record and its name. The caller checked that it has
// no tasks (the view is the judge: a task being created concurrently on another node
// is refused there once the record is gone).
func (c *Cluster) DeleteService(ctx context.Context, id string) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	kv, ok, err := c.kv.Get(ctx, prefServices+id)
	if err != nil {
		return storeErr(err)
	}
	if !ok {
		return errdefs.NotFound("service %s not found", id)
	}
	rec, err := DecodeService(kv.Value)
	if err != nil {
		return err
	}
	ops := []Op{Delete(kv.Key), Delete(prefSvcNames + escape(rec.Name))}
	for _, k := range ingressKeys(rec) {
		ops = append(ops, Delete(k))
	}
	_, err = c.kv.Txn(ctx, []Cmp{Unchanged(kv.Key, kv.ModRev)}, ops)
	return storeErr(err)
}

// AckWithdrawal records that this node no longer chooses the draining endpoint eid
// for new connections.
func (c *Cluster) AckWithdrawal(ctx context.Context, eid string) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	_, err := c.kv.Txn(ctx, nil, []Op{Put(prefAcks+eid+"/"+c.o.NodeID, []byte("1"), 0)})
	return storeErr(err)
}

// WaitWithdrawn waits until every ready node has acknowledged that it stopped
// choosing endpoint eid, or timeout passes (a node that does not answer within it is
// about to be declared down, and its view goes with it). It returns the nodes that
// had not acknowledged.
func (c *Cluster) WaitWithdrawn(ctx context.Context, eid string, timeout time.Duration) ([]string, error) {
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		missing := c.unacked(eid)
		if len(missing) == 0 || time.Now().After(deadline) {
			return missing, nil
		}
		select {
		case <-ctx.Done():
			return missing, ctx.Err()
		case <-tick.C:
		}
	}
}

func (c *Cluster) unacked(eid string) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for id := range c.view.alive {
		if !c.view.acks[eid][id] {
			out = append(out, c.view.members[id].Name)
		}
	}
	return out
}

// clearAcks removes the acknowledgements of an endpoint (with its record).
func clearAcks(eid string) Op { return DeleteUnder(prefAcks + eid + "/") }

// UpdateService replaces a service's record (the same ID and name), claiming the
// ingress ports it adds and releasing those it drops, in one transaction that fails
// if the record changed meanwhile.
func (c *Cluster) UpdateService(ctx context.Context, rec ServiceRecord) error {
	ctx, cancel := c.opContext(ctx)
	defer cancel()
	kv, ok, err := c.kv.Get(ctx, prefServices+rec.ID)
	if err != nil {
		return storeErr(err)
	}
	if !ok {
		return errdefs.NotFound("service %s not found", rec.ID)
	}
	old, err := DecodeService(kv.Value)
	if err != nil {
		return err
	}
	if old.Name != rec.Name {
		return errdefs.InvalidArgument("a service cannot be renamed")
	}
	rec.CreatedBy = old.CreatedBy
	had := map[string]bool{}
	for _, k := range ingressKeys(old) {
		had[k] = true
	}
	cmps := []Cmp{Unchanged(kv.Key, kv.ModRev)}
	ops := []Op{Put(kv.Key, mustJSON(rec), 0)}
	var added []string
	for _, k := range ingressKeys(rec) {
		if had[k] {
			delete(had, k)
			continue
		}
		added = append(added, k)
		cmps, ops = append(cmps, Absent(k)), append(ops, Put(k, []byte(rec.ID), 0))
	}
	for k := range had {
		ops = append(ops, Delete(k))
	}
	r, err := c.kv.Txn(ctx, cmps, ops)
	if err != nil {
		return storeErr(err)
	}
	if r.Succeeded {
		return nil
	}
	if err := c.ingressConflict(ctx, added); err != nil {
		return err
	}
	return errdefs.Conflict("service %s was changed concurrently; try again", rec.Name)
}

// ingressConflict names the service holding one of the claims keys, if any.
func (c *Cluster) ingressConflict(ctx context.Context, keys []string) error {
	for _, k := range keys {
		kv, ok, err := c.kv.Get(ctx, k)
		if err != nil || !ok {
			continue
		}
		owner := string(kv.Value) + "'"
		if o, ok, _ := c.kv.Get(ctx, prefServices+string(kv.Value)); ok {
			if orec, err := DecodeService(o.Value); err == nil {
				owner = orec.Name + "' (" + orec.ID[:min(12, len(orec.ID))] + ")"
			}
		}
		_, port := path.Split(k)
		return errdefs.Conflict("port '%s' is already in use by service '%s as an ingress port", port, owner)
	}
	return nil
}
