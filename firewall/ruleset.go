package firewall

import (
	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// tableName is the name of pier's table in the inet family.
const tableName = "pier"

// ifnameLen is IFNAMSIZ: ifname keys are zero-padded to this many bytes.
const ifnameLen = 16

// Register numbers. An ifname is 16 bytes, exactly one legacy 128-bit
// register, so a concatenation "iifname . oifname" is iifname in register 1
// and oifname in register 2, looked up with source register 1.
const (
	reg1 = 1
	reg2 = 2
)

// ipsDstNAT is IPS_DST_NAT from linux/netfilter/nf_conntrack_common.h (not in
// x/sys/unix): the connection's destination was translated ("ct status dnat").
const ipsDstNAT = 1 << 5

// setKind says how a set's keys are built and printed.
type setKind int

const (
	kindIfname     setKind = iota // one interface name
	kindIfnamePair                // ifname . ifname
	kindPrefix4                   // IPv4 prefixes (interval set)
	kindPrefix6                   // IPv6 prefixes (interval set)
)

// setDef describes one named set of the skeleton.
type setDef struct {
	name string
	kind setKind
	// id identifies the set inside a batch. It is fixed and non-zero so that
	// the library never assigns one from its global counter, which is not
	// safe for concurrent use by several connections.
	id uint32
}

var (
	setBridges  = setDef{name: "bridges", kind: kindIfname, id: 1}
	setInternal = setDef{name: "internal", kind: kindIfname, id: 2}
	setIntra    = setDef{name: "intra", kind: kindIfnamePair, id: 3}
	setMasq4    = setDef{name: "masq4", kind: kindPrefix4, id: 4}
	setMasq6    = setDef{name: "masq6", kind: kindPrefix6, id: 5}

	// allSets is in creation (and listing) order.
	allSets = []setDef{setBridges, setInternal, setIntra, setMasq4, setMasq6}

	typeIfnamePair = nftables.MustConcatSetType(nftables.TypeIFName, nftables.TypeIFName)
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
	default:
		return nftables.TypeIFName
	}
}

func (k setKind) interval() bool { return k == kindPrefix4 || k == kindPrefix6 }

// set returns a fresh library object for d in table t.
func (d setDef) set(t *nftables.Table) *nftables.Set {
	s := &nftables.Set{
		Table:         t,
		ID:            d.id,
		Name:          d.name,
		KeyType:       d.kind.keyType(),
		Interval:      d.kind.interval(),
		Concatenation: d.kind == kindIfnamePair,
	}
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

// chainDef is one base chain with its rules.
type chainDef struct {
	name     string
	typ      nftables.ChainType
	hook     nftables.ChainHook
	hookText string
	prio     nftables.ChainPriority
	prioText string
	rules    []ruleDef
}

// chain returns a fresh library object for c in table t.
func (c chainDef) chain(t *nftables.Table) *nftables.Chain {
	accept := nftables.ChainPolicyAccept
	return &nftables.Chain{
		Name:     c.name,
		Table:    t,
		Type:     c.typ,
		Hooknum:  nftables.ChainHookRef(c.hook),
		Priority: nftables.ChainPriorityRef(c.prio),
		Policy:   &accept,
	}
}

// chains returns the skeleton's chains, freshly built, in creation order.
func chains() []chainDef {
	return []chainDef{
		{
			name: "forward", typ: nftables.ChainTypeFilter,
			hook: unix.NF_INET_FORWARD, hookText: "forward",
			prio: 0, prioText: "filter",
			rules: forwardRules(),
		},
		{
			name: "postrouting", typ: nftables.ChainTypeNAT,
			hook: unix.NF_INET_POST_ROUTING, hookText: "postrouting",
			prio: 100, prioText: "srcnat",
			rules: postroutingRules(),
		},
	}
}

// forwardRules filter traffic routed (or, with br_netfilter, bridged)
// through the host. Order matters; see each rule's comment.
func forwardRules() []ruleDef {
	return []ruleDef{
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
		// Isolation between different pier bridges.
		{`iifname @bridges oifname @bridges drop`,
			cat(meta(expr.MetaKeyIIFNAME, reg1), lookup(reg1, setBridges), meta(expr.MetaKeyOIFNAME, reg1), lookup(reg1, setBridges), verdict(expr.VerdictDrop))},
		// Published ports (DNAT by a future port-publishing chain).
		{`oifname @bridges ct status dnat accept`,
			cat(meta(expr.MetaKeyOIFNAME, reg1), lookup(reg1, setBridges), ctHasBits(expr.CtKeySTATUS, ipsDstNAT), verdict(expr.VerdictAccept))},
		// No unsolicited inbound traffic to containers (Docker 28 behaviour).
		{`oifname @bridges drop`,
			cat(meta(expr.MetaKeyOIFNAME, reg1), lookup(reg1, setBridges), verdict(expr.VerdictDrop))},
		{`iifname @bridges accept`,
			cat(meta(expr.MetaKeyIIFNAME, reg1), lookup(reg1, setBridges), verdict(expr.VerdictAccept))},
	}
}

// postroutingRules masquerade traffic from the subnets in @masq4/@masq6,
// except traffic that leaves into a pier bridge (the host itself, or the same
// bridge through br_netfilter).
func postroutingRules() []ruleDef {
	return []ruleDef{
		{`oifname @bridges return`,
			cat(meta(expr.MetaKeyOIFNAME, reg1), lookup(reg1, setBridges), verdict(expr.VerdictReturn))},
		{`ip saddr @masq4 masquerade`,
			cat(nfproto(unix.NFPROTO_IPV4), payload(12, 4), lookup(reg1, setMasq4), []expr.Any{&expr.Masq{}})},
		{`ip6 saddr @masq6 masquerade`,
			cat(nfproto(unix.NFPROTO_IPV6), payload(8, 16), lookup(reg1, setMasq6), []expr.Any{&expr.Masq{}})},
	}
}

func cat(parts ...[]expr.Any) []expr.Any {
	var out []expr.Any
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func meta(key expr.MetaKey, reg uint32) []expr.Any {
	return []expr.Any{&expr.Meta{Key: key, Register: reg}}
}

func lookup(reg uint32, d setDef) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: reg, SetName: d.name, SetID: d.id}}
}

func verdict(k expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: k}}
}

// ctHasBits matches when any of bits is set in the conntrack key (a
// host-endian 32-bit bitmask: ct state or ct status).
func ctHasBits(key expr.CtKey, bits uint32) []expr.Any {
	zero := []byte{0, 0, 0, 0}
	return []expr.Any{
		&expr.Ct{Key: key, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: zero},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: zero},
	}
}

// nfproto matches the packet's layer-3 protocol; an inet table sees both.
func nfproto(proto byte) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyNFPROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{proto}},
	}
}

// payload loads n bytes of the network header at offset into register 1.
func payload(offset, n uint32) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: offset, Len: n}}
}
