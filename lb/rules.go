package lb

import (
	"encoding/binary"
	"fmt"
	"hash/fnv"
	"maps"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"github.com/piernet/pier/internal/nlsock"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// TableName is the nftables table the package owns ("ip pier_lb").
const TableName = "pier_lb"

const (
	chainNAT       = "nat_out"
	chainFilter    = "filter_out"
	chainPick      = "pick"
	setVIPs        = "vips"
	setPorts       = "svc_ports"
	setAll         = "svc_all"
	mapSlots       = "slots"
	mapStickyChain = "sticky_dispatch"
)

// Registers as nft allocates them: reg1 is the 128-bit register 1 (32-bit words 8-11),
// reg9/reg10 its second and third 32-bit words (a concatenated key is loaded field by
// field into consecutive words, each padded to 4 bytes); reg2 is the 128-bit register 2.
const (
	reg1  = 1
	reg2  = 2
	reg9  = 9
	reg10 = 10
)

const (
	ip4Saddr = 12
	ip4Daddr = 16
	thDport  = 2
)

// conn is the seam around the netlink connection: the subset of *nftables.Conn the
// package uses. Table, chain, rule, set and element calls only queue messages; Flush
// sends them as one atomic batch. GetSetElements reads at once.
type conn interface {
	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	AddChain(c *nftables.Chain) *nftables.Chain
	FlushChain(c *nftables.Chain)
	DelChain(c *nftables.Chain)
	AddRule(r *nftables.Rule) *nftables.Rule
	AddSet(s *nftables.Set, vals []nftables.SetElement) error
	DelSet(s *nftables.Set)
	SetAddElements(s *nftables.Set, vals []nftables.SetElement) error
	SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error
	GetSetElements(s *nftables.Set) ([]nftables.SetElement, error)
	Flush() error
	CloseLasting() error
}

var _ conn = (*nftables.Conn)(nil)

// batchBuffer is the nftables socket's send buffer: a rewrite of a table with
// thousands of services goes out in one sendmsg.
const batchBuffer = 32 << 20

func dialAt(ns netns.NsHandle) (conn, error) {
	return nftables.New(nftables.WithNetNSFd(int(ns)), nftables.AsLasting(),
		nftables.WithSockOptions(func(nc *netlink.Conn) error {
			return nlsock.SetBuffer(nc, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, batchBuffer)
		}))
}

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
}

var (
	typePortKey = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	typeSlotKey = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeMark) // mark: a host-endian 32-bit number, as numgen writes it, that nft can print
)

// Sets carry fixed batch IDs: with ID 0, google/nftables numbers them from one
// package-wide counter that only a per-connection lock guards (a data race between
// two tables written at once). IDs only need to be unique within a batch.

func vipSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setVIPs, ID: 1, KeyType: nftables.TypeIPAddr}
}

func portsSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setPorts, ID: 2, KeyType: typePortKey, Concatenation: true}
}

func allSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setAll, ID: 3, KeyType: nftables.TypeIPAddr}
}

func slotsMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: mapSlots, ID: 4, KeyType: typeSlotKey, Concatenation: true,
		IsMap: true, DataType: nftables.TypeIPAddr}
}

func stickyDispatch(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: mapStickyChain, ID: 5, KeyType: nftables.TypeIPAddr, IsMap: true, DataType: nftables.TypeVerdict}
}

func stickyMap(t *nftables.Table, id string) *nftables.Set {
	h := fnv.New32a()
	h.Write([]byte(id))
	return &nftables.Set{Table: t, Name: "sticky_" + id, ID: 16 + h.Sum32()%(1<<24), KeyType: nftables.TypeIPAddr, DataType: nftables.TypeIPAddr,
		IsMap: true, HasTimeout: true, Dynamic: true}
}

func stickyChain(t *nftables.Table, id string) *nftables.Chain {
	return &nftables.Chain{Table: t, Name: "sticky_" + id}
}

// queueRewrite queues the whole table for svcs (with their slot tables): create,
// delete and re-create (the first two make the batch work whether or not the table
// exists).
func queueRewrite(c conn, svcs map[string]Service, slots map[string][]netip.Addr) error {
	t := table()
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	vips, ports, all, sm, sd := vipSet(t), portsSet(t), allSet(t), slotsMap(t), stickyDispatch(t)
	for _, s := range []*nftables.Set{vips, ports, all, sm, sd} {
		if err := c.AddSet(s, nil); err != nil {
			return err
		}
	}
	pick := c.AddChain(&nftables.Chain{Table: t, Name: chainPick})
	c.AddRule(&nftables.Rule{Table: t, Chain: pick, Exprs: slices.Concat(daddrTo(reg1), vmapLookup(sd))})
	c.AddRule(&nftables.Rule{Table: t, Chain: pick, Exprs: slices.Concat(slotPick(sm), dnat())})
	nat := c.AddChain(&nftables.Chain{Table: t, Name: chainNAT, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest})
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: dispatchPortsRule(ports)})
	c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: dispatchAllRule(all)})
	filter := c.AddChain(&nftables.Chain{Table: t, Name: chainFilter, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityFilter})
	for _, r := range rejectRules(vips) {
		c.AddRule(&nftables.Rule{Table: t, Chain: filter, Exprs: r})
	}
	for _, id := range slices.Sorted(maps.Keys(svcs)) {
		if err := queueChange(c, nil, nil, ptr(svcs[id]), slots[id]); err != nil {
			return err
		}
	}
	return nil
}

func ptr(s Service) *Service { return &s }

// queueChange queues the change from old (with its slot table oldSlots) to want
// (with newSlots) on a table in sync with old; either service may be nil. Only the
// service's own elements (and a sticky service's chain and map) are touched.
func queueChange(c conn, old *Service, oldSlots []netip.Addr, want *Service, newSlots []netip.Addr) error {
	t := table()
	var stale []nftables.SetElement
	if old != nil && want != nil && old.Sticky > 0 && want.Sticky > 0 {
		var err error
		if stale, err = staleSticky(c, t, *old, *want); err != nil {
			return err
		}
	}
	if old != nil && (want == nil || !old.equalDispatch(*want)) {
		if err := queueDispatch(c, t, *old, c.SetDeleteElements); err != nil {
			return err
		}
	}
	vipChanged := old != nil && want != nil && old.VIP != want.VIP
	if old != nil && (want == nil || vipChanged) {
		if err := queueSlots(c, t, old.VIP, oldSlots, nil); err != nil {
			return err
		}
		oldSlots = nil
	}
	if old != nil && old.Sticky > 0 && (want == nil || want.Sticky == 0 || vipChanged) {
		if err := c.SetDeleteElements(stickyDispatch(t), []nftables.SetElement{{Key: old.VIP.AsSlice()}}); err != nil {
			return err
		}
		ch := stickyChain(t, old.ID)
		c.FlushChain(ch)
		c.DelChain(ch)
		c.DelSet(stickyMap(t, old.ID))
	}
	if want == nil {
		return nil
	}
	// Order matters within the batch: a chain before the element that jumps to it,
	// slots before the dispatch elements that lead to them.
	if want.Sticky > 0 {
		if err := queueSticky(c, t, old, *want, stale, vipChanged); err != nil {
			return err
		}
	}
	if err := queueSlots(c, t, want.VIP, oldSlots, newSlots); err != nil {
		return err
	}
	if old == nil || !old.equalDispatch(*want) {
		return queueDispatch(c, t, *want, c.SetAddElements)
	}
	return nil
}

// queueSticky creates or updates a sticky service's map and chain. The chain's rules
// depend only on the service's ID, VIP and timeout, not on its backends.
func queueSticky(c conn, t *nftables.Table, old *Service, want Service, stale []nftables.SetElement, vipChanged bool) error {
	m, ch := stickyMap(t, want.ID), stickyChain(t, want.ID)
	fresh := old == nil || old.Sticky == 0 || vipChanged
	switch {
	case fresh:
		if err := c.AddSet(m, nil); err != nil {
			return err
		}
		c.AddChain(ch)
	case len(stale) > 0:
		if err := c.SetDeleteElements(m, stale); err != nil {
			return err
		}
	}
	if fresh || old.Sticky != want.Sticky {
		if !fresh {
			c.FlushChain(ch)
		}
		for _, r := range stickyRules(m, slotsMap(t), want.Sticky) {
			c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: r})
		}
	}
	if fresh {
		v := &expr.Verdict{Kind: expr.VerdictGoto, Chain: ch.Name}
		return c.SetAddElements(stickyDispatch(t), []nftables.SetElement{{Key: want.VIP.AsSlice(), VerdictData: v}})
	}
	return nil
}

// queueSlots rewrites the slot elements of vip that differ between from and to (a
// nil table: no elements).
func queueSlots(c conn, t *nftables.Table, vip netip.Addr, from, to []netip.Addr) error {
	var del, add []nftables.SetElement
	dels, adds := Moved(from, to)
	for _, i := range dels {
		del = append(del, nftables.SetElement{Key: slotKey(vip, i)})
	}
	for _, i := range adds {
		add = append(add, nftables.SetElement{Key: slotKey(vip, i), Val: to[i].AsSlice()})
	}
	m := slotsMap(t)
	if len(del) > 0 {
		if err := c.SetDeleteElements(m, del); err != nil {
			return err
		}
	}
	if len(add) > 0 {
		return c.SetAddElements(m, add)
	}
	return nil
}

// staleSticky returns the sticky entries pointing at backends want no longer has.
func staleSticky(c conn, t *nftables.Table, old, want Service) ([]nftables.SetElement, error) {
	removed := false
	for _, b := range old.Backends {
		if !slices.Contains(want.Backends, b) {
			removed = true
		}
	}
	if !removed {
		return nil, nil
	}
	elems, err := c.GetSetElements(stickyMap(t, old.ID))
	if err != nil {
		return nil, fmt.Errorf("reading sticky entries: %w", err)
	}
	var out []nftables.SetElement
	for _, e := range elems {
		if b, ok := netip.AddrFromSlice(e.Val); ok && !slices.Contains(want.Backends, b.Unmap()) {
			out = append(out, nftables.SetElement{Key: e.Key})
		}
	}
	return out, nil
}

// queueDispatch adds or deletes (op) the service's VIP and port elements.
func queueDispatch(c conn, t *nftables.Table, s Service, op func(*nftables.Set, []nftables.SetElement) error) error {
	if err := op(vipSet(t), []nftables.SetElement{{Key: s.VIP.AsSlice()}}); err != nil {
		return err
	}
	if len(s.Ports) == 0 {
		return op(allSet(t), []nftables.SetElement{{Key: s.VIP.AsSlice()}})
	}
	elems := make([]nftables.SetElement, 0, len(s.Ports))
	for _, p := range s.Ports {
		elems = append(elems, nftables.SetElement{Key: portKey(s.VIP, p)})
	}
	return op(portsSet(t), elems)
}

// portKey is "vip . proto . port", each field padded to 4 bytes.
func portKey(vip netip.Addr, p Port) []byte {
	k := make([]byte, 12)
	copy(k, vip.AsSlice())
	k[4] = protoNum(p.Proto)
	binary.BigEndian.PutUint16(k[8:], p.Port)
	return k
}

// slotKey is "vip . slot", the slot in host byte order as numgen writes it.
func slotKey(vip netip.Addr, slot int) []byte {
	return append(vip.AsSlice(), binaryutil.NativeEndian.PutUint32(uint32(slot))...)
}

func protoNum(proto string) byte {
	if proto == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func daddrTo(reg uint32) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: ip4Daddr, Len: 4}}
}

func saddrTo(reg uint32) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: reg, Base: expr.PayloadBaseNetworkHeader, Offset: ip4Saddr, Len: 4}}
}

func vmapLookup(m *nftables.Set) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: reg1, SetName: m.Name, SetID: m.ID, DestRegister: 0, IsDestRegSet: true}}
}

// slotPick loads "ip daddr . numgen random mod Slots" looked up in @slots (a backend)
// into reg1; no element (no backend) ends the rule.
func slotPick(slots *nftables.Set) []expr.Any {
	return slices.Concat(daddrTo(reg1), []expr.Any{
		&expr.Numgen{Register: reg9, Modulus: Slots, Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg1, SetName: slots.Name, SetID: slots.ID, DestRegister: reg1, IsDestRegSet: true},
	})
}

func dnat() []expr.Any {
	return []expr.Any{&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg1}}
}

// stickyRules: a client with an entry goes to its backend (refreshing the entry);
// the others get a slot pick, recorded.
func stickyRules(m, slots *nftables.Set, timeout time.Duration) [][]expr.Any {
	remember := &expr.Dynset{SrcRegKey: reg2, SrcRegData: reg1, SetName: m.Name, SetID: m.ID,
		Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: timeout}
	known := slices.Concat(saddrTo(reg2), []expr.Any{
		&expr.Lookup{SourceRegister: reg2, SetName: m.Name, SetID: m.ID, DestRegister: reg1, IsDestRegSet: true},
		remember,
	}, dnat())
	fresh := slices.Concat(slotPick(slots), saddrTo(reg2), []expr.Any{remember}, dnat())
	return [][]expr.Any{known, fresh}
}

// dispatchPortsRule is "ip daddr . meta l4proto . th dport @svc_ports goto pick".
func dispatchPortsRule(s *nftables.Set) []expr.Any {
	return slices.Concat(daddrTo(reg1), []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg9},
		&expr.Payload{DestRegister: reg10, Base: expr.PayloadBaseTransportHeader, Offset: thDport, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID},
		&expr.Verdict{Kind: expr.VerdictGoto, Chain: chainPick},
	})
}

// dispatchAllRule is "ip daddr @svc_all goto pick".
func dispatchAllRule(s *nftables.Set) []expr.Any {
	return slices.Concat(daddrTo(reg1), []expr.Any{
		&expr.Lookup{SourceRegister: reg1, SetName: s.Name, SetID: s.ID},
		&expr.Verdict{Kind: expr.VerdictGoto, Chain: chainPick},
	})
}

// rejectRules reject what is still addressed to a VIP after the nat hook.
func rejectRules(vips *nftables.Set) [][]expr.Any {
	daddr := slices.Concat(daddrTo(reg1), []expr.Any{&expr.Lookup{SourceRegister: reg1, SetName: vips.Name, SetID: vips.ID}})
	tcp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	}
	other := []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}} // port unreachable
	return [][]expr.Any{slices.Concat(daddr, tcp), slices.Concat(daddr, other)}
}
