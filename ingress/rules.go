package ingress

import (
	"maps"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/lb"
)

// TableName is the host-side table the Publisher owns ("ip pier_ingress").
const TableName = "pier_ingress"

// Connection marks the Publisher sets (ct mark bits, set with a mask: other bits of
// the mark are kept).
const (
	MarkIngress uint32 = 0x10000000 // a connection DNATed to a backend by the mesh
	MarkSNAT    uint32 = 0x20000000 // … that is masqueraded on its way to the backend
)

const (
	chainNATPre   = "nat_pre"
	chainNATPost  = "nat_post"
	chainFilterIn = "filter_in"
	chainForward  = "filter_fwd"
	mapDispatch   = "dispatch" // proto . published port : goto svc_<ID>
	mapTargets    = "targets"  // proto . published port : target port
	mapSlots      = "slots"    // service number . slot : backend
)

// baseRules is the number of rules of each fixed chain, for Intact.
var baseRules = map[string]int{chainNATPre: 1, chainNATPost: 1, chainFilterIn: 2, chainForward: 1}

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
}

func dispatchMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: mapDispatch, KeyType: typeProtoPort, Concatenation: true, IsMap: true, DataType: nftables.TypeVerdict}
}

func targetsMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: mapTargets, KeyType: typeProtoPort, Concatenation: true, IsMap: true, DataType: nftables.TypeInetService}
}

func slotsMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: mapSlots, KeyType: typeSlotKey, Concatenation: true, IsMap: true, DataType: nftables.TypeIPAddr}
}

func svcChain(t *nftables.Table, id string) *nftables.Chain {
	return &nftables.Chain{Table: t, Name: "svc_" + id}
}

// queueDelete deletes the table whether or not it exists.
func queueDelete(c conn) {
	t := table()
	c.AddTable(t)
	c.DelTable(t)
}

// queueRewrite queues the whole table for svcs: delete and re-create.
func queueRewrite(c conn, svcs map[string]*published) {
	queueDelete(c)
	t := c.AddTable(table())
	dm, tm, sm := dispatchMap(t), targetsMap(t), slotsMap(t)
	for _, s := range []*nftables.Set{dm, tm, sm} {
		_ = c.AddSet(s, nil) // queues only: errors come from Flush
	}
	pre := c.AddChain(&nftables.Chain{Table: t, Name: chainNATPre, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: dispatchRule(dm)})
	post := c.AddChain(&nftables.Chain{Table: t, Name: chainNATPost, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	c.AddRule(&nftables.Rule{Table: t, Chain: post, Exprs: masqRule()})
	in := c.AddChain(&nftables.Chain{Table: t, Name: chainFilterIn, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookInput, Priority: nftables.ChainPriorityFilter})
	for _, r := range rejectRules(tm) {
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: r})
	}
	fwd := c.AddChain(&nftables.Chain{Table: t, Name: chainForward, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter})
	c.AddRule(&nftables.Rule{Table: t, Chain: fwd, Exprs: forwardRule()})
	for _, id := range slices.Sorted(maps.Keys(svcs)) {
		queueChange(c, nil, svcs[id])
	}
}

// queueChange queues the change from old to want (either may be nil) on a table in
// sync with old. Order matters within the batch: a chain before the element that
// jumps to it, deletions before additions of the same key.
func queueChange(c conn, old, want *published) {
	t := table()
	var oldPorts, newPorts []Port
	var oldSlots, newSlots []netip.Addr
	if old != nil {
		oldPorts, oldSlots = old.Ports, old.slots
	}
	if want != nil {
		newPorts, newSlots = want.Ports, want.slots
	}
	gonePorts, addedPorts := diff(oldPorts, newPorts)
	goneKeys, addedKeys := diff(keys(oldPorts), keys(newPorts)) // a changed target keeps its key
	del(c, dispatchMap(t), dispatchElems(goneKeys, ""))
	del(c, targetsMap(t), targetElems(gonePorts))
	num := uint32(0)
	switch {
	case want != nil:
		num = want.num
	case old != nil:
		num = old.num
	}
	dels, adds := slotElems(num, oldSlots, newSlots)
	del(c, slotsMap(t), dels)
	if old != nil && want == nil {
		ch := svcChain(t, old.ID)
		c.FlushChain(ch)
		c.DelChain(ch)
		return
	}
	if want == nil {
		return
	}
	ch := svcChain(t, want.ID)
	switch {
	case old == nil:
		c.AddChain(ch)
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: serviceRule(targetsMap(t), slotsMap(t), want.num, want.SNAT)})
	case old.SNAT != want.SNAT:
		c.FlushChain(ch)
		c.AddRule(&nftables.Rule{Table: t, Chain: ch, Exprs: serviceRule(targetsMap(t), slotsMap(t), want.num, want.SNAT)})
	}
	add(c, slotsMap(t), adds)
	add(c, targetsMap(t), targetElems(addedPorts))
	add(c, dispatchMap(t), dispatchElems(addedKeys, ch.Name))
}

func del(c conn, s *nftables.Set, e []nftables.SetElement) {
	if len(e) > 0 {
		_ = c.SetDeleteElements(s, e) // queues only: errors come from Flush
	}
}

func add(c conn, s *nftables.Set, e []nftables.SetElement) {
	if len(e) > 0 {
		_ = c.SetAddElements(s, e)
	}
}

// diff returns the elements of a not in b and of b not in a.
func diff[T comparable](a, b []T) (gone, added []T) {
	for _, x := range a {
		if !slices.Contains(b, x) {
			gone = append(gone, x)
		}
	}
	for _, x := range b {
		if !slices.Contains(a, x) {
			added = append(added, x)
		}
	}
	return gone, added
}

func keys(ps []Port) []portKey {
	out := make([]portKey, len(ps))
	for i, p := range ps {
		out[i] = p.key()
	}
	return out
}

// dispatchElems are the dispatch elements of keys, jumping to chain (deletions: "").
func dispatchElems(keys []portKey, chain string) []nftables.SetElement {
	var out []nftables.SetElement
	for _, k := range keys {
		e := nftables.SetElement{Key: protoPortKey(k.proto, k.port)}
		if chain != "" {
			e.VerdictData = &expr.Verdict{Kind: expr.VerdictGoto, Chain: chain}
		}
		out = append(out, e)
	}
	return out
}

func targetElems(ps []Port) []nftables.SetElement {
	var out []nftables.SetElement
	for _, p := range ps {
		out = append(out, nftables.SetElement{Key: protoPortKey(p.Proto, p.Published), Val: protoPortKey("", p.Target)[4:6]})
	}
	return out
}

// slotElems returns the slot elements of service num to delete and to add to go from
// the slot table from to to (nil: no elements).
func slotElems(num uint32, from, to []netip.Addr) (dels, adds []nftables.SetElement) {
	key := func(i int) []byte { return append(u32(num), u32(uint32(i))...) }
	d, a := lb.Moved(from, to)
	for _, i := range d {
		dels = append(dels, nftables.SetElement{Key: key(i)})
	}
	for _, i := range a {
		adds = append(adds, nftables.SetElement{Key: key(i), Val: to[i].AsSlice()})
	}
	return dels, adds
}

// dispatchRule is "fib daddr type local meta l4proto . th dport vmap @dispatch".
func dispatchRule(dm *nftables.Set) []expr.Any {
	return slices.Concat([]expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: u32(unix.RTN_LOCAL)},
	}, protoPortTo(reg1, reg9), []expr.Any{
		&expr.Lookup{SourceRegister: reg1, SetName: dm.Name, SetID: dm.ID, IsDestRegSet: true},
	})
}

// serviceRule is, for service num:
//
//	meta l4proto . th dport map @targets → port
//	num . numgen random mod 64 map @slots → address (no backend: the rule ends)
//	ct mark set ct mark | MarkIngress [| MarkSNAT]
//	dnat ip to address : port
func serviceRule(tm, sm *nftables.Set, num uint32, snat bool) []expr.Any {
	mark := MarkIngress
	if snat {
		mark |= MarkSNAT
	}
	return slices.Concat(protoPortTo(reg2, reg13), []expr.Any{
		&expr.Lookup{SourceRegister: reg2, SetName: tm.Name, SetID: tm.ID, DestRegister: reg2, IsDestRegSet: true},
		&expr.Immediate{Register: reg1, Data: u32(num)},
		&expr.Numgen{Register: reg9, Modulus: lb.Slots, Type: unix.NFT_NG_RANDOM},
		&expr.Lookup{SourceRegister: reg1, SetName: sm.Name, SetID: sm.ID, DestRegister: reg1, IsDestRegSet: true},
		ctMarkTo(reg3),
	}, withBits(reg3, mark, mark), []expr.Any{
		ctMarkFrom(reg3),
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: reg1, RegProtoMin: reg2, Specified: true},
	})
}

// masqRule is "ct mark & MarkSNAT != 0 masquerade".
func masqRule() []expr.Any {
	return slices.Concat([]expr.Any{ctMarkTo(reg1)}, bitsSet(reg1, MarkSNAT), []expr.Any{&expr.Masq{}})
}

// forwardRule is "ct status dnat ct mark & MarkIngress != 0 accept".
func forwardRule() []expr.Any {
	return slices.Concat(
		[]expr.Any{&expr.Ct{Key: expr.CtKeySTATUS, Register: reg1}}, bitsSet(reg1, ipsDstNAT),
		[]expr.Any{ctMarkTo(reg1)}, bitsSet(reg1, MarkIngress),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictAccept}})
}

// rejectRules reject what reaches the host itself on a published port from outside:
// a service without backends. TCP gets a reset, UDP an ICMP port unreachable. The
// published ports are looked up in @targets, which has the keys of @dispatch: a
// lookup of the verdict map here would make the kernel validate its gotos (to chains
// that DNAT) from the input hook, and refuse them.
func rejectRules(tm *nftables.Set) [][]expr.Any {
	match := slices.Concat([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: ifname("lo")},
	}, protoPortTo(reg1, reg9), []expr.Any{
		&expr.Lookup{SourceRegister: reg1, SetName: tm.Name, SetID: tm.ID},
	})
	tcp := []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_TCP}},
		&expr.Reject{Type: unix.NFT_REJECT_TCP_RST},
	}
	other := []expr.Any{&expr.Reject{Type: unix.NFT_REJECT_ICMP_UNREACH, Code: 3}} // port unreachable
	return [][]expr.Any{slices.Concat(match, tcp), slices.Concat(match, other)}
}

// intact compares the kernel's table with svcs: chain names, base chain rule counts,
// map element counts.
func intact(c conn, svcs map[string]*published) (bool, error) {
	t := table()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, err
	}
	var have []string
	for _, ch := range chains {
		if ch.Table != nil && ch.Table.Name == TableName {
			have = append(have, ch.Name)
		}
	}
	want := slices.Collect(maps.Keys(baseRules))
	elems := map[string]int{}
	for _, s := range svcs {
		want = append(want, "svc_"+s.ID)
		elems[mapDispatch] += len(s.Ports)
		elems[mapTargets] += len(s.Ports)
		if s.slots != nil {
			elems[mapSlots] += lb.Slots
		}
	}
	slices.Sort(have)
	slices.Sort(want)
	if !slices.Equal(have, want) {
		return false, nil
	}
	for name, n := range baseRules {
		rules, err := c.GetRules(t, &nftables.Chain{Table: t, Name: name})
		if err != nil || len(rules) != n {
			return false, err
		}
	}
	for _, m := range []*nftables.Set{dispatchMap(t), targetsMap(t), slotsMap(t)} {
		got, err := c.GetSetElements(m)
		if err != nil || len(got) != elems[m.Name] {
			return false, err
		}
	}
	return true, nil
}

const ipsDstNAT = 1 << 5 // IPS_DST_NAT in the conntrack status (ct status dnat)
