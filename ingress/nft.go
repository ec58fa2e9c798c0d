package ingress

import (
	"encoding/binary"
	"errors"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/internal/nlsock"
)

// conn is the seam around the netlink connection: the subset of *nftables.Conn the
// package uses. Table, chain, rule and element calls only queue messages; Flush sends
// them as one atomic batch. The Get and List calls read at once.
type conn interface {
	AddTable(t *nftables.Table) *nftables.Table
	DelTable(t *nftables.Table)
	AddChain(c *nftables.Chain) *nftables.Chain
	FlushChain(c *nftables.Chain)
	DelChain(c *nftables.Chain)
	AddRule(r *nftables.Rule) *nftables.Rule
	AddSet(s *nftables.Set, vals []nftables.SetElement) error
	SetAddElements(s *nftables.Set, vals []nftables.SetElement) error
	SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error
	GetSetElements(s *nftables.Set) ([]nftables.SetElement, error)
	GetRules(t *nftables.Table, c *nftables.Chain) ([]*nftables.Rule, error)
	ListChainsOfTableFamily(f nftables.TableFamily) ([]*nftables.Chain, error)
	Flush() error
	CloseLasting() error
}

var _ conn = (*nftables.Conn)(nil)

// batchBuffer is the nftables socket's send and receive buffer: a rewrite of a
// table with thousands of services goes out in one sendmsg, and its thousands of
// acknowledgements must fit in the receive buffer (or the kernel drops them: ENOBUFS).
const batchBuffer = 8 << 20

// dialAt opens a lasting nftables connection in ns (0: the calling thread's).
func dialAt(ns vns.NsHandle) (conn, error) {
	opts := []nftables.ConnOption{nftables.AsLasting(),
		nftables.WithSockOptions(func(nc *netlink.Conn) error {
			return errors.Join(nlsock.SetBuffer(nc, unix.SO_SNDBUFFORCE, unix.SO_SNDBUF, batchBuffer),
				nlsock.SetBuffer(nc, unix.SO_RCVBUFFORCE, unix.SO_RCVBUF, batchBuffer))
		})}
	if ns > 0 {
		opts = append(opts, nftables.WithNetNSFd(int(ns)))
	}
	return nftables.New(opts...)
}

// Registers as nft allocates them: reg1..reg3 are the 128-bit registers (32-bit
// words 8-11, 12-15, 16-19); reg9 and reg13 the second words of reg1 and reg2 (a
// concatenated key is loaded field by field into consecutive words, each padded to
// 4 bytes).
const (
	reg1  = 1
	reg2  = 2
	reg3  = 3
	reg9  = 9
	reg10 = 10
	reg13 = 13
)

const (
	ip4Csum  = 10
	ip4Saddr = 12
	ip4Daddr = 16
	thSport  = 0
	thDport  = 2
	ethSrc   = 6 // ether saddr in the link-layer header
)

var (
	typeProtoPort = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService)
	typeSlotKey   = nftables.MustConcatSetType(nftables.TypeInetProto, nftables.TypeInetService, nftables.TypeMark) // proto . published port . slot (host-endian, as numgen writes it)
)

// protoPortTo loads "meta l4proto . th dport" into reg (and the word after it).
func protoPortTo(reg, next uint32) []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg},
		&expr.Payload{DestRegister: next, Base: expr.PayloadBaseTransportHeader, Offset: thDport, Len: 2},
	}
}

// protoPortKey is "proto . port", each field padded to 4 bytes.
func protoPortKey(proto string, port uint16) []byte {
	k := make([]byte, 8)
	k[0] = protoNum(proto)
	binary.BigEndian.PutUint16(k[4:], port)
	return k
}

func protoNum(proto string) byte {
	if proto == "udp" {
		return unix.IPPROTO_UDP
	}
	return unix.IPPROTO_TCP
}

func u32(v uint32) []byte { return binaryutil.NativeEndian.PutUint32(v) }

// bitsSet is "(reg & mask) != 0" on a 32-bit value loaded before it.
func bitsSet(reg, mask uint32) []expr.Any {
	return []expr.Any{
		&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: u32(mask), Xor: u32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg, Data: u32(0)},
	}
}

// withBits is "reg = (reg & ^mask) | val" (val within mask): a masked mark write.
func withBits(reg, mask, val uint32) []expr.Any {
	return []expr.Any{&expr.Bitwise{SourceRegister: reg, DestRegister: reg, Len: 4, Mask: u32(^mask), Xor: u32(val)}}
}

func ctMarkTo(reg uint32) expr.Any { return &expr.Ct{Key: expr.CtKeyMARK, Register: reg} }

func ctMarkFrom(reg uint32) expr.Any {
	return &expr.Ct{Key: expr.CtKeyMARK, Register: reg, SourceRegister: true}
}

// ifname is an interface name as nft compares it: padded with NULs to IFNAMSIZ.
func ifname(n string) []byte {
	b := make([]byte, unix.IFNAMSIZ)
	copy(b, n)
	return b
}
