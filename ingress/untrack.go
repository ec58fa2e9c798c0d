package ingress

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// UntrackTableName is the table of Untrack.
const UntrackTableName = "pier_ingress_raw"

// Untrack keeps the host's conntrack out of frames that are only bridged through the
// ingress network's bridge. With br_netfilter (Docker sets it up; this kernel has it
// on), a frame bridged from one port of a bridge to another goes through the IPv4
// hooks of the host too, and conntrack records it: a remote router's connection to a
// local task becomes an entry "client:port → task:80" in the host. When the same
// client later reaches the same task through this host's own router with the same
// source port (clients reuse ports across destinations), the DNAT's reply tuple
// clashes with that entry and the kernel remaps the client's source port — the task
// no longer sees the client's real port. Frames arriving through the bridge and not
// addressed to this host's router MAC are therefore NOTRACKed in the raw priority;
// the router's own traffic (replies coming back to it) stays tracked. br_netfilter
// hands the IPv4 hooks the bridge itself as the input interface (it swaps in the
// logical device), not the port: the prefixes name bridges.
type Untrack struct {
	ns vns.NsHandle

	mu    sync.Mutex
	ports []string           // interface name prefixes of bridge ports ("ovvx", "ovh")
	macs  []net.HardwareAddr // this host's router MACs
}

// NewUntrack returns an Untrack for the namespace ns (0: the calling thread's); Set
// writes it.
func NewUntrack(ns vns.NsHandle) *Untrack { return &Untrack{ns: ns} }

// Set makes the table untrack frames arriving through bridges whose names begin with
// one of ports and not addressed to one of macs. It rewrites the table atomically.
func (u *Untrack) Set(ctx context.Context, ports []string, macs []net.HardwareAddr) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.ports, u.macs = slices.Clone(ports), slices.Clone(macs)
	return u.writeLocked(ctx)
}

// Rewrite writes the table again (after `nft flush ruleset`).
func (u *Untrack) Rewrite(ctx context.Context) error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.writeLocked(ctx)
}

func (u *Untrack) writeLocked(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c, err := dialAt(u.ns)
	if err != nil {
		return fmt.Errorf("opening nftables: %w", err)
	}
	defer c.CloseLasting()
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: UntrackTableName}
	c.AddTable(t)
	c.DelTable(t) // a fresh table in the same batch
	if len(u.ports) == 0 {
		return c.Flush()
	}
	c.AddTable(t)
	set := &nftables.Set{Table: t, Name: "routers", ID: 1, KeyType: nftables.TypeEtherAddr} // explicit ID: nftables allocates shared ones racily
	var elems []nftables.SetElement
	for _, m := range u.macs {
		elems = append(elems, nftables.SetElement{Key: []byte(m)})
	}
	if err := c.AddSet(set, elems); err != nil {
		return err
	}
	accept := nftables.ChainPolicyAccept
	ch := c.AddChain(&nftables.Chain{Table: t, Name: "pre", Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityRaw, Policy: &accept})
	for _, p := range u.ports {
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: []expr.Any{
			// iifname "p*"
			&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte(p)},
			// ether daddr != @routers
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseLLHeader, Offset: 0, Len: 6},
			&expr.Lookup{SourceRegister: reg1, SetName: set.Name, SetID: set.ID, Invert: true},
			&expr.Notrack{},
		}})
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("writing table %s: %w", UntrackTableName, err)
	}
	return nil
}

// Close deletes the table.
func (u *Untrack) Close() error {
	c, err := dialAt(u.ns)
	if err != nil {
		return err
	}
	defer c.CloseLasting()
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: UntrackTableName}
	c.AddTable(t)
	c.DelTable(t)
	if err := c.Flush(); err != nil && err != unix.ENOENT {
		return err
	}
	return nil
}
