package ingress

import (
	"cmp"
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
	mapTargets    = "targets"  // proto . published port : target port
	mapServices   = "services" // proto . published port : service number
	setSNAT       = "snat"     // proto . published port of the services with SNAT
	mapSlots      = "slots"    // service number . slot : backend
)

// baseRules is the number of rules of each chain, for Intact.
var baseRules = map[string]int{chainNATPre: 2, chainNATPost: 1, chainFilterIn: 2, chainForward: 1}

func table() *nftables.Table {
	return &nftables.Table{Family: nftables.TableFamilyIPv4, Name: TableName}
}

func targetsMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: mapTargets, ID: 1, KeyType: typeProtoPort, Concatenation: true, IsMap: true, DataType: nftables.TypeInetService}
}

func servicesMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: mapServices, ID: 2, KeyType: typeProtoPort, Concatenation: true, IsMap: true, DataType: nftables.TypeMark}
}

func snatSet(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: setSNAT, ID: 3, KeyType: typeProtoPort, Concatenation: true}
}

func slotsMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: mapSlots, ID: 4, KeyType: typeSlotKey, Concatenation: true, IsMap: true, DataType: nftables.TypeIPAddr}
}

// queueDelete deletes the table whether or not it exists.
func queueDelete(c conn) {
	t := table()
	c.AddTable(t)
	c.DelTable(t)
}

// queueRewrite queues the whole table for svcs: delete and re-create. The rules are
// fixed; services are elements only.
func queueRewrite(c conn, svcs map[string]*published) {
	queueDelete(c)
	t := c.AddTable(table())
	tm, nm, ss, sm := targetsMap(t), servicesMap(t), snatSet(t), slotsMap(t)
	for _, s := range elemSets(t) {
		_ = c.AddSet(s, nil) // queues only: errors come from Flush
	}
	pre := c.AddChain(&nftables.Chain{Table: t, Name: chainNATPre, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: dnatRule(tm, nm, sm, ss)})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: dnatRule(tm, nm, sm, nil)})
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
	var e elems
	for _, id := range slices.Sorted(maps.Keys(svcs)) {
		e.change(nil, svcs[id])
	}
	e.queue(c)
}

// queueChange queues the change from old to want (either may be nil) on a table in
// sync with old.
func queueChange(c conn, old, want *published) {
	var e elems
	e.change(old, want)
	e.queue(c)
}

// elems collects the element changes of a batch by map: a rewrite sends a message
// per 1,000 elements of a map, not per service.
type elems struct{ del, add [4][]nftables.SetElement } // indexed like elemSets

// elemSets are the maps in the order deletions are sent; additions go in reverse:
// slots before the port elements that lead to them.
func elemSets(t *nftables.Table) [4]*nftables.Set {
	return [4]*nftables.Set{snatSet(t), servicesMap(t), targetsMap(t), slotsMap(t)}
}

// change adds the element changes from old to want (either may be nil).
func (e *elems) change(old, want *published) {
	var o, w published
	if old != nil {
		o = *old
	}
	if want != nil {
		w = *want
	}
	num := cmp.Or(w.num, o.num)
	goneSNAT, addedSNAT := diff(snatKeys(o), snatKeys(w))
	goneKeys, addedKeys := diff(keys(o.Ports), keys(w.Ports)) // a changed target keeps its key
	gonePorts, addedPorts := diff(o.Ports, w.Ports)
	dels, adds := slotElems(o, w)
	for i, d := range [][]nftables.SetElement{keyElems(goneSNAT, nil), keyElems(goneKeys, nil), targetElems(gonePorts), dels} {
		e.del[i] = append(e.del[i], d...)
	}
	for i, a := range [][]nftables.SetElement{keyElems(addedSNAT, nil), keyElems(addedKeys, u32(num)), targetElems(addedPorts), adds} {
		e.add[i] = append(e.add[i], a...)
	}
}

// maxElems is the most elements in one message: a netlink attribute's length is 16
// bits, and 64 KiB holds about 1,500 slot elements.
const maxElems = 1000

func (e *elems) queue(c conn) {
	sets := elemSets(table())
	for i, s := range sets {
		for chunk := range slices.Chunk(e.del[i], maxElems) {
			_ = c.SetDeleteElements(s, chunk) // queues only: errors come from Flush
		}
	}
	for i := len(sets) - 1; i >= 0; i-- {
		for chunk := range slices.Chunk(e.add[i], maxElems) {
			_ = c.SetAddElements(sets[i], chunk)
		}
	}
}

func snatKeys(p published) []portKey {
	if !p.SNAT {
		return nil
	}
	return keys(p.Ports)
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

// keyElems are the elements of keys, each with value val (nil: none).
func keyElems(keys []portKey, val []byte) []nftables.SetElement {
	var out []nftables.SetElement
	for _, k := range keys {
		out = append(out, nftables.SetElement{Key: protoPortKey(k.proto, k.port), Val: val})
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

// slotElems returns the slot elements to delete and to add to go from service o to w.
// Slots are keyed by published port (proto . port . slot, a key nft can print): a
// port kept moves only the changed slots, a port dropped or added all of its own.
func slotElems(o, w published) (dels, adds []nftables.SetElement) {
	ok, wk := keys(o.Ports), keys(w.Ports)
	move := func(k portKey, from, to []netip.Addr) {
		key := func(i int) []byte { return append(protoPortKey(k.proto, k.port), u32(uint32(i))...) }
		d, a := lb.Moved(from, to)
		for _, i := range d {
			dels = append(dels, nftables.SetElement{Key: key(i)})
		}
		for _, i := range a {
			adds = append(adds, nftables.SetElement{Key: key(i), Val: to[i].AsSlice()})
		}
	}
	for _, k := range ok {
		if slices.Contains(wk, k) {
			move(k, o.slots, w.slots)
		} else {
			move(k, o.slots, nil)
		}
	}
	for _, k := range wk {
		if !slices.Contains(ok, k) {
			move(k, nil, w.slots)
		}
	}
	return dels, adds
}

// dnatRule is, for the published ports in snat (nil: any published port):
//
//	fib daddr type local [meta l4proto . th dport @snat]
//	meta l4proto . th dport map @targets → port
//	meta l4proto . th dport . numgen random mod 64 map @slots → address
//	ct mark set ct mark | MarkIngress [| MarkSNAT]
//	dnat ip to address : port
//
// A port without a backend has no slot elements: the lookup fails and the rule ends.
// The dnat is a verdict: a connection the first rule takes never reaches the second.
func dnatRule(tm, nm, sm, snat *nftables.Set) []expr.Any {
	mark := MarkIngress
	e := []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: u32(unix.RTN_LOCAL)},
	}
	if snat != nil {
		mark |= MarkSNAT
		e = slices.Concat(e, protoPortTo(reg1, reg9), []expr.Any{&expr.Lookup{SourceRegister: reg1, SetName: snat.Name, SetID: snat.ID}})
	}
	return slices.Concat(e, protoPortTo(reg2, reg13), []expr.Any{
		&expr.Lookup{SourceRegister: reg2, SetName: tm.Name, SetID: tm.ID, DestRegister: reg2, IsDestRegSet: true},
	}, protoPortTo(reg1, reg9), []expr.Any{
		&expr.Numgen{Register: reg10, Modulus: lb.Slots, Type: unix.NFT_NG_RANDOM},
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
// a service without backends. TCP gets a reset, UDP an ICMP port unreachable.
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

// intact compares the kernel's table with svcs: its chains, their rule counts and
// the elements of the per-port maps (the slot map, 64 elements a service, is not
// dumped: a check must stay cheap at thousands of services).
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
	slices.Sort(have)
	if !slices.Equal(have, slices.Sorted(maps.Keys(baseRules))) {
		return false, nil
	}
	for name, n := range baseRules {
		rules, err := c.GetRules(t, &nftables.Chain{Table: t, Name: name})
		if err != nil || len(rules) != n {
			return false, err
		}
	}
	elems := map[string]int{}
	for _, s := range svcs {
		elems[mapTargets] += len(s.Ports)
		elems[mapServices] += len(s.Ports)
		elems[setSNAT] += len(snatKeys(*s))
	}
	for _, m := range []*nftables.Set{targetsMap(t), servicesMap(t), snatSet(t)} {
		got, err := c.GetSetElements(m)
		if err != nil || len(got) != elems[m.Name] {
			return false, err
		}
	}
	return true, nil
}

const ipsDstNAT = 1 << 5 // IPS_DST_NAT in the conntrack status (ct status dnat)
