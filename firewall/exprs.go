package firewall

import (
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"
)

// Register numbers, as nft allocates them (and prints them with
// --debug=netlink). reg1 and reg2 are the legacy 128-bit registers 1 and 2;
// reg9 and up are 32-bit registers (NFT_REG32_01 = 9: the second 32-bit
// word of reg1). A concatenation is loaded field by field into consecutive
// 32-bit words, each field padded to 4 bytes.
const (
	reg1  = 1
	reg2  = 2 // = 32-bit word 4
	reg9  = 9
	reg10 = 10
	reg13 = 13
)

// ipsDstNAT is IPS_DST_NAT from linux/netfilter/nf_conntrack_common.h (not in
// x/sys/unix): the connection's destination was translated ("ct status dnat").
const ipsDstNAT = 1 << 5

// Offsets in the IPv4 and IPv6 headers and the transport header.
const (
	ip4Saddr = 12
	ip4Daddr = 16
	ip6Saddr = 8
	ip6Daddr = 24
	thDport  = 2
)

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

// mapLookup looks up the key in register src in map d and loads the value
// into register dst.
func mapLookup(src uint32, d setDef, dst uint32) []expr.Any {
	return []expr.Any{&expr.Lookup{SourceRegister: src, SetName: d.name, SetID: d.id, DestRegister: dst, IsDestRegSet: true}}
}

func verdict(k expr.VerdictKind) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: k}}
}

func jump(chain string) []expr.Any {
	return []expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chain}}
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

// orMark sets bits in the packet mark, keeping the others.
func orMark(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(^bits), Xor: binaryutil.NativeEndian.PutUint32(bits)},
		&expr.Meta{Key: expr.MetaKeyMARK, SourceRegister: true, Register: reg1},
	}
}

// markHas matches when all of bits are set in the packet mark.
func markHas(bits uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(bits), Xor: []byte{0, 0, 0, 0}},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(bits)},
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
	return payloadTo(reg1, expr.PayloadBaseNetworkHeader, offset, n)
}

func payloadTo(reg uint32, base expr.PayloadBase, offset, n uint32) []expr.Any {
	return []expr.Any{&expr.Payload{DestRegister: reg, Base: base, Offset: offset, Len: n}}
}

// eq compares register 1 with data.
func eq(data []byte) []expr.Any {
	return []expr.Any{&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: data}}
}

// fibDaddrLocal matches packets addressed to the host ("fib daddr type local").
func fibDaddrLocal() []expr.Any {
	return []expr.Any{
		&expr.Fib{Register: reg1, FlagDADDR: true, ResultADDRTYPE: true},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(unix.RTN_LOCAL)},
	}
}

// dnat translates to the address in register addr and the port in
// register port.
func dnat(family uint32, addr, port uint32) []expr.Any {
	return []expr.Any{&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: addr, RegProtoMin: port}}
}

func masq() []expr.Any { return []expr.Any{&expr.Masq{}} }
