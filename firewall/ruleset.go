package firewall

import (
	"fmt"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// tableName is the name of pier's table in the inet family.
const tableName = "pier"

// ifnameLen is IFNAMSIZ: ifname keys are zero-padded to this many bytes.
const ifnameLen = 16

// publishChain is the regular chain that DNATs published ports.
const publishChain = "publish"

// setKind says how a set's keys (and a map's values) are built and printed.
type setKind int

const (
	kindIfname     setKind = iota // one interface name
	kindIfnamePair                // ifname . ifname
	kindPrefix4                   // IPv4 prefixes (interval set)
	kindPrefix6                   // IPv6 prefixes (interval set)
	kindPorts4                    // map ipv4_addr . inet_proto . inet_service : ipv4_addr . inet_service
	kindPortsAny4                 // map inet_proto . inet_service : ipv4_addr . inet_service
	kindPorts6                    // map ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service
	kindPortsAny6                 // map inet_proto . inet_service : ipv6_addr . inet_service
)

// setDef describes one named set or map of the skeleton.
type setDef struct {
	name string
	kind setKind
	// id identifies the set inside a batch. It is fixed and non-zero so that
	// the library never assigns one from its global counter, which is not
	// safe for concurrent use by several connections.
	id uint32
}

var (
	setBridges   = setDef{name: "bridges", kind: kindIfname, id: 1}
	setInternal  = setDef{name: "internal", kind: kindIfname, id: 2}
	setIntra     = setDef{name: "intra", kind: kindIfnamePair, id: 3}
	setMasq4     = setDef{name: "masq4", kind: kindPrefix4, id: 4}
	setMasq6     = setDef{name: "masq6", kind: kindPrefix6, id: 5}
	setHairpin   = setDef{name: "hairpin", kind: kindIfnamePair, id: 6}
	setPorts4    = setDef{name: "ports4", kind: kindPorts4, id: 8}
	setPortsAny4 = setDef{name: "portsany4", kind: kindPortsAny4, id: 9}
	setPorts6    = setDef{name: "ports6", kind: kindPorts6, id: 10}
	setPortsAny6 = setDef{name: "portsany6", kind: kindPortsAny6, id: 11}

	// allSets is in creation (and listing) order.
	allSets = []setDef{setBridges, setInternal, setIntra, setMasq4, setMasq6,
		setHairpin, setPorts4, setPortsAny4, setPorts6, setPortsAny6}

	typeIfnamePair = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIFName)
	typePorts4     = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetProto, nftables.TypeInetService)
	typePorts6     = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetProto, nftables.TypeInetService)
	typeProtoPort  = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	typeTarget4    = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService)
	typeTarget6    = nftables.MustConcatSetType(nftables.TypeIP6Addr, nftables.TypeInetService)
)

// newTable returns a fresh description of pier's table.
func newTable() *nftables.Table {
	return &nftables.Table{Name: tableName, Family: nftables.TableFamilyINet}
}

// keyType returns the nftables key type of sets of kind k.
func (k setKind) keyType() nftables.SetDatatype {
	switch k {
	case kindIfnamePair:
		return typeIfnamePair
	case kindPrefix4:
		return nftables.TypeIPAddr
	case kindPrefix6:
		return nftables.TypeIP6Addr
	case kindPorts4:
		return typePorts4
	case kindPorts6:
		return typePorts6
	case kindPortsAny4, kindPortsAny6:
		return typeProtoPort
	default:
		return nftables.TypeIFName
	}
}

// dataType returns the value type of maps of kind k; ok is false for sets.
func (k setKind) dataType() (t nftables.SetDatatype, ok bool) {
	switch k {
	case kindPorts4, kindPortsAny4:
		return typeTarget4, true
	case kindPorts6, kindPortsAny6:
		return typeTarget6, true
	}
	return nftables.SetDatatype{}, false
}

func (k setKind) interval() bool {
	return k == kindPrefix4 || k == kindPrefix6
}

func (k setKind) concat() bool {
	return k != kindIfname && k != kindPrefix4 && k != kindPrefix6
}

// set returns a fresh library object for d in table t. Maps are hash maps
// (no interval flag), so adding or deleting an element costs the same
// whatever their size.
func (d setDef) set(t *nftables.Table) *nftables.Set {
	s := &nftables.Set{
		Table:         t,
		ID:            d.id,
		Name:          d.name,
		KeyType:       d.kind.keyType(),
		Interval:      d.kind.interval(),
		Concatenation: d.kind.concat(),
	}
	s.DataType, s.IsMap = d.kind.dataType()
	if d.kind == kindIfname {
		// Only for display: nft reads string keys in host byte order and,
		// without this hint in the set's userdata, lists "br-a" as "".
		// Matching compares raw bytes either way.
		s.KeyByteOrder = binaryutil.NativeEndian
	}
	return s
}

// ruleDef is one rule: its nft text (for Render) and its expressions.
type ruleDef struct {
	text  string
	exprs []expr.Any
}

// chainDef is one chain with its rules; base chains have a type.
type chainDef struct {
	name     string
	typ      nftables.ChainType // "" for a regular chain
	hook     nftables.ChainHook
	hookText string
	prio     nftables.ChainPriority
	prioText string
	rules    []ruleDef
}

// chain returns a fresh library object for c in table t.
func (c chainDef) chain(t *nftables.Table) *nftables.Chain {
	ch := &nftables.Chain{Name: c.name, Table: t}
	if c.typ == "" {
		return ch
	}
	accept := nftables.ChainPolicyAccept
	ch.Type = c.typ
	ch.Hooknum = nftables.ChainHookRef(c.hook)
	ch.Priority = nftables.ChainPriorityRef(c.prio)
	ch.Policy = &accept
	return ch
}

// chains returns the skeleton's chains, freshly built, in creation order:
// a chain is created before the rules that jump to it.
func chains() []chainDef {
	return []chainDef{
		{
			name: "forward", typ: nftables.ChainTypeFilter,
			hook: unix.NF_INET_FORWARD, hookText: "forward",
			prio: 0, prioText: "filter",
			rules: forwardRules(),
		},
		{name: publishChain, rules: publishRules()},
		{
			name: "prerouting", typ: nftables.ChainTypeNAT,
			hook: unix.NF_INET_PRE_ROUTING, hookText: "prerouting",
			prio: -100, prioText: "dstnat",
			rules: preroutingRules(),
		},
		{
			// nft names -100 "dstnat" only on the prerouting hook.
			name: "output", typ: nftables.ChainTypeNAT,
			hook: unix.NF_INET_LOCAL_OUT, hookText: "output",
			prio: -100, prioText: "-100",
			rules: outputRules(),
		},
		{
			name: "postrouting", typ: nftables.ChainTypeNAT,
			hook: unix.NF_INET_POST_ROUTING, hookText: "postrouting",
			prio: 100, prioText: "srcnat",
			rules: postroutingRules(),
		},
	}
}

// hairpinMark is the packet mark bit that asks postrouting to masquerade
// a hairpin connection. pier sets and tests only this bit and keeps the
// others: kube-proxy uses 0x4000/0x8000, Cilium 0x0f00, Calico and
// Tailscale the upper 16 bits.
const hairpinMark = 0x1000

// forwardRules filter traffic routed (or, with br_netfilter, bridged)
// through the host. Order matters; see each rule's comment.
func forwardRules() []ruleDef {
	return []ruleDef{
		// Hairpin: a container reaching a published port on its own bridge
		// through a host address. Without SNAT the target would answer it
		// directly, from the wrong address (or, reaching itself, from its
		// own address, which it drops). Postrouting cannot tell, because
		// br_netfilter hands it a bridged packet without an input device;
		// this hook sees both devices, so it marks the first packet and
		// postrouting masquerades marked packets. @hairpin holds
		// "bridge" . "bridge" for every non-internal bridge.
		{fmt.Sprintf(`ct state new ct status dnat iifname . oifname @hairpin meta mark set meta mark | 0x%08x`, hairpinMark),
			cat(ctHasBits(expr.CtKeySTATE, expr.CtStateBitNEW), ctHasBits(expr.CtKeySTATUS, ipsDstNAT),
				meta(expr.MetaKeyIIFNAME, reg1), meta(expr.MetaKeyOIFNAME, reg2), lookup(reg1, setHairpin), orMark(hairpinMark))},
		// Traffic that stays inside one ICC-on bridge (bridged traffic seen
		// through br_netfilter, or hairpin routing between two subnets of
		// the bridge). ICC-off bridges are not in @intra, so their
		// intra-bridge traffic reaches the isolation drop below.
		{`iifname . oifname @intra accept`,
			cat(meta(expr.MetaKeyIIFNAME, reg1), meta(expr.MetaKeyOIFNAME, reg2), lookup(reg1, setIntra), verdict(expr.VerdictAccept))},
		{`ct state established,related accept`,
			cat(ctHasBits(expr.CtKeySTATE, expr.CtStateBitESTABLISHED|expr.CtStateBitRELATED), verdict(expr.VerdictAccept))},
		{`iifname @internal drop`,
			cat(meta(expr.MetaKeyIIFNAME, reg1), lookup(reg1, setInternal), verdict(expr.VerdictDrop))},
		{`oifname @internal drop`,
			cat(meta(expr.MetaKeyOIFNAME, reg1), lookup(reg1, setInternal), verdict(expr.VerdictDrop))},
		// Published ports, DNAT'd by the publish chain: reachable from
		// anywhere, also from other bridges and (hairpin) from the same
		// bridge, even with ICC off. Before the isolation drop on purpose.
		{`oifname @bridges ct status dnat accept`,
			cat(meta(expr.MetaKeyOIFNAME, reg1), lookup(reg1, setBridges), ctHasBits(expr.CtKeySTATUS, ipsDstNAT), verdict(expr.VerdictAccept))},
		// Isolation between different pier bridges.
		{`iifname @bridges oifname @bridges drop`,
			cat(meta(expr.MetaKeyIIFNAME, reg1), lookup(reg1, setBridges), meta(expr.MetaKeyOIFNAME, reg1), lookup(reg1, setBridges), verdict(expr.VerdictDrop))},
		// No unsolicited inbound traffic to containers (Docker 28 behaviour).
		{`oifname @bridges drop`,
			cat(meta(expr.MetaKeyOIFNAME, reg1), lookup(reg1, setBridges), verdict(expr.VerdictDrop))},
		{`iifname @bridges accept`,
			cat(meta(expr.MetaKeyIIFNAME, reg1), lookup(reg1, setBridges), verdict(expr.VerdictAccept))},
	}
}

// publishRules DNAT packets addressed to the host (the calling chains
// check that) through the port maps: first the maps keyed by host address,
// then the wildcard maps of 0.0.0.0 and ::. One lookup per map, whatever
// the number of published ports. The wildcard rules need no family check:
// a "dnat ip" does nothing to an IPv6 packet in an inet table.
func publishRules() []ruleDef {
	return []ruleDef{
		{`dnat ip to ip daddr . meta l4proto . th dport map @ports4`,
			cat(nfproto(unix.NFPROTO_IPV4), payload(ip4Daddr, 4), meta(expr.MetaKeyL4PROTO, reg9),
				payloadTo(reg10, expr.PayloadBaseTransportHeader, thDport, 2),
				mapLookup(reg1, setPorts4, reg1), dnat(unix.NFPROTO_IPV4, reg1, reg9))},
		{`dnat ip to meta l4proto . th dport map @portsany4`,
			cat(meta(expr.MetaKeyL4PROTO, reg1), payloadTo(reg9, expr.PayloadBaseTransportHeader, thDport, 2),
				mapLookup(reg1, setPortsAny4, reg1), dnat(unix.NFPROTO_IPV4, reg1, reg9))},
		{`dnat ip6 to ip6 daddr . meta l4proto . th dport map @ports6`,
			cat(nfproto(unix.NFPROTO_IPV6), payload(ip6Daddr, 16), meta(expr.MetaKeyL4PROTO, reg2),
				payloadTo(reg13, expr.PayloadBaseTransportHeader, thDport, 2),
				mapLookup(reg1, setPorts6, reg1), dnat(unix.NFPROTO_IPV6, reg1, reg2))},
		{`dnat ip6 to meta l4proto . th dport map @portsany6`,
			cat(meta(expr.MetaKeyL4PROTO, reg1), payloadTo(reg9, expr.PayloadBaseTransportHeader, thDport, 2),
				mapLookup(reg1, setPortsAny6, reg1), dnat(unix.NFPROTO_IPV6, reg1, reg2))},
	}
}

// preroutingRules DNAT published ports for traffic arriving at the host:
// from outside, and from containers (hairpin, other bridges).
func preroutingRules() []ruleDef {
	return []ruleDef{
		{`fib daddr type local jump ` + publishChain, cat(fibDaddrLocal(), jump(publishChain))},
	}
}

// outputRules DNAT published ports for connections the host makes to its
// own addresses. Loopback is left to portmap's proxy: a DNAT'd packet with
// a loopback source cannot leave the host (IPv6 never, IPv4 only with
// route_localnet, which pier does not set).
func outputRules() []ruleDef {
	return []ruleDef{
		{`ip daddr 127.0.0.0/8 return`,
			cat(nfproto(unix.NFPROTO_IPV4), payload(ip4Daddr, 1), eq([]byte{127}), verdict(expr.VerdictReturn))},
		{`ip6 daddr ::1 return`,
			cat(nfproto(unix.NFPROTO_IPV6), payload(ip6Daddr, 16), eq(loopback6), verdict(expr.VerdictReturn))},
		{`fib daddr type local jump ` + publishChain, cat(fibDaddrLocal(), jump(publishChain))},
	}
}

var loopback6 = []byte{15: 1}

// postroutingRules masquerade hairpin connections (marked in forward),
// then traffic from the subnets in @masq4/@masq6, except traffic that
// leaves into a pier bridge (the host itself, or the same bridge through
// br_netfilter).
func postroutingRules() []ruleDef {
	return []ruleDef{
		{fmt.Sprintf(`meta mark & 0x%08x == 0x%08x masquerade`, hairpinMark, hairpinMark),
			cat(markHas(hairpinMark), masq())},
		{`oifname @bridges return`,
			cat(meta(expr.MetaKeyOIFNAME, reg1), lookup(reg1, setBridges), verdict(expr.VerdictReturn))},
		{`ip saddr @masq4 masquerade`,
			cat(nfproto(unix.NFPROTO_IPV4), payload(ip4Saddr, 4), lookup(reg1, setMasq4), masq())},
		{`ip6 saddr @masq6 masquerade`,
			cat(nfproto(unix.NFPROTO_IPV6), payload(ip6Saddr, 16), lookup(reg1, setMasq6), masq())},
	}
}
