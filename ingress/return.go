package ingress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/vishvananda/netlink"
	vns "github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/netns"
)

// ReturnTableName is the task-side table a Return owns ("ip pier_ingress_rt").
const ReturnTableName = "pier_ingress_rt"

// The task-side numbers: router k (1 ≤ k ≤ MaxRouters) marks its connections with
// k<<16 within ReturnMarkMask (ct mark and, on replies, the packet mark), and routes
// them by "ip rule fwmark k<<16/ReturnMarkMask lookup ReturnTableBase+k" at priority
// ReturnRulePriority.
const (
	ReturnMarkMask     uint32 = 0x0fff0000
	ReturnTableBase           = 40000
	ReturnRulePriority        = 9000
	MaxRouters                = 4095
)

const (
	chainRtPre  = "pre"
	chainRtOut  = "out"
	chainRtSrc  = "udp_source"
	chainRtIn   = "routers_in"
	chainRtRepl = "routers_out"
	mapUDPSrc   = "udp_src" // client . client port . server port : server address
)

// udpSrcTimeout is how long a UDP exchange's server address is remembered after the
// client's last datagram: nf_conntrack_udp_timeout_stream's default.
const udpSrcTimeout = 120 * time.Second

var typeUDPFlow = nftables.MustConcatSetType(nftables.TypeIPAddr, nftables.TypeInetService, nftables.TypeInetService)

func udpSrcMap(t *nftables.Table) *nftables.Set {
	return &nftables.Set{Table: t, Name: mapUDPSrc, ID: 1, KeyType: typeUDPFlow, Concatenation: true, IsMap: true,
		DataType: nftables.TypeIPAddr, HasTimeout: true, Dynamic: true}
}

// Router is one host's router on the ingress network: the MAC its forwarded
// connections arrive from and the address replies go back to.
type Router struct {
	MAC  net.HardwareAddr
	Addr netip.Addr
}

// ReturnOptions configure a Return.
type ReturnOptions struct {
	NetNS  vns.NsHandle // the task's namespace (0: the current one); open until Close
	Iface  string       // the task's interface on the ingress network
	Logger *slog.Logger
}

// Return makes the replies of connections forwarded by a router go back through that
// router, in one task's namespace. It is safe for concurrent use.
type Return struct {
	log   *slog.Logger
	iface string
	k     rtKernel

	mu      sync.Mutex         // guards the fields below; held across kernel calls
	routers map[string]*router // by MAC
	oldRP   string             // rp_filter of iface before NewReturn
	stale   bool               // the router chains lag behind routers: rewrite them
	closed  bool
}

type router struct {
	num  uint32
	addr netip.Addr
	mac  net.HardwareAddr
}

func (r *router) mark() uint32 { return r.num << 16 }
func (r *router) table() int   { return ReturnTableBase + int(r.num) }

// rtKernel is the Return's seam: nftables, the routing rules and tables, and the
// interface's sysctls.
type rtKernel struct {
	nft    conn
	nl     rtNetlink
	sysctl func(key, val string) (old string, err error) // val "": read only
	close  func()
}

// rtNetlink is the subset of *netlink.Handle a Return uses.
type rtNetlink interface {
	LinkByName(name string) (netlink.Link, error)
	RuleAdd(r *netlink.Rule) error
	RuleDel(r *netlink.Rule) error
	RouteReplace(r *netlink.Route) error
	RouteDel(r *netlink.Route) error
}

// NewReturn programs the (router-less) table in o.NetNS and sets o.Iface's rp_filter
// to loose.
func NewReturn(ctx context.Context, o ReturnOptions) (*Return, error) {
	if o.Iface == "" {
		return nil, errdefs.InvalidArgument("ingress return: an interface is required")
	}
	k, err := openRtKernel(o.NetNS)
	if err != nil {
		return nil, err
	}
	return newReturn(ctx, k, o.Iface, o.Logger)
}

func openRtKernel(h vns.NsHandle) (rtKernel, error) {
	var ns *netns.Namespace
	var err error
	if h > 0 {
		ns, err = netns.FromHandle(h)
	} else {
		ns, err = netns.Current()
	}
	if err != nil {
		return rtKernel{}, err
	}
	c, err := dialAt(ns.Handle)
	if err != nil {
		ns.Close()
		return rtKernel{}, fmt.Errorf("opening nftables connection: %w", err)
	}
	sysctl := func(key, val string) (string, error) { return swapSysctl(ns, key, val) }
	return rtKernel{nft: c, nl: ns.NL, sysctl: sysctl, close: func() { c.CloseLasting(); ns.Close() }}, nil
}

func newReturn(ctx context.Context, k rtKernel, iface string, log *slog.Logger) (*Return, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	r := &Return{log: log.With("component", "ingress-return", "iface", iface), iface: iface, k: k, routers: map[string]*router{}}
	if err := ctx.Err(); err != nil {
		k.close()
		return nil, err
	}
	old, err := k.sysctl(rpFilterKey(iface), "2")
	if err != nil {
		k.close()
		return nil, err
	}
	r.oldRP = old
	queueReturnTable(k.nft, iface)
	if err := k.nft.Flush(); err != nil {
		_, rerr := k.sysctl(rpFilterKey(iface), old)
		k.close()
		return nil, errors.Join(fmt.Errorf("writing table %s: %w", ReturnTableName, err), rerr)
	}
	return r, nil
}

func rpFilterKey(iface string) string { return "net/ipv4/conf/" + iface + "/rp_filter" }

// SetRouters makes rs the routers of the task: routes and rules of new routers are
// added (before their connections are marked), the marking rules rewritten if the set
// changed, then those of routers gone deleted. A router keeps its number while it
// stays.
func (r *Return) SetRouters(ctx context.Context, rs []Router) error {
	want, err := validRouters(rs)
	if err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	link, err := r.k.nl.LinkByName(r.iface)
	if err != nil {
		return fmt.Errorf("finding %s: %w", r.iface, err)
	}
	changed := r.stale || len(want) != len(r.routers)
	for _, mac := range slices.Sorted(maps.Keys(want)) { // new routers numbered in MAC order
		addr := want[mac]
		cur := r.routers[mac]
		if cur == nil {
			changed = true
			r.stale = true // until the router chains hold the new router
			if cur, err = r.allocLocked(mac); err != nil {
				return err
			}
		}
		if cur.addr != addr {
			if err := r.k.nl.RouteReplace(r.route(cur, addr, link)); err != nil {
				return fmt.Errorf("routing replies via router %v: %w", addr, err)
			}
			cur.addr = addr
		}
	}
	if !changed {
		return nil
	}
	var gone []*router
	for mac, cur := range r.routers {
		if _, ok := want[mac]; !ok {
			gone = append(gone, cur)
			delete(r.routers, mac)
		}
	}
	queueRouters(r.k.nft, r.sortedLocked())
	if err := r.k.nft.Flush(); err != nil {
		r.stale = true
		for _, g := range gone { // retried by the next call
			r.routers[string(g.mac)] = g
		}
		return fmt.Errorf("writing router marks: %w", err)
	}
	r.stale = false
	var errs []error
	for _, g := range gone {
		errs = append(errs, r.dropRouter(g, link))
	}
	return errors.Join(errs...)
}

// allocLocked gives the router mac the lowest free number, and its ip rule.
func (r *Return) allocLocked(mac string) (*router, error) {
	used := map[uint32]bool{}
	for _, cur := range r.routers {
		used[cur.num] = true
	}
	n := uint32(1)
	for used[n] {
		n++
	}
	if n > MaxRouters {
		return nil, errdefs.InvalidArgument("ingress return: more than %d routers", MaxRouters)
	}
	cur := &router{num: n, mac: net.HardwareAddr(mac)}
	if err := r.k.nl.RuleAdd(r.rule(cur)); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("adding ip rule for router %v: %w", cur.mac, err)
	}
	r.routers[mac] = cur
	return cur, nil
}

func (r *Return) dropRouter(g *router, link netlink.Link) error {
	var errs []error
	if err := r.k.nl.RuleDel(r.rule(g)); err != nil && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("deleting ip rule of router %v: %w", g.mac, err))
	}
	if g.addr.IsValid() {
		if err := r.k.nl.RouteDel(r.route(g, g.addr, link)); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("deleting route via router %v: %w", g.addr, err))
		}
	}
	return errors.Join(errs...)
}

func (r *Return) rule(g *router) *netlink.Rule {
	rule := netlink.NewRule()
	rule.Family = unix.AF_INET
	rule.Mark = g.mark()
	mask := ReturnMarkMask
	rule.Mask = &mask
	rule.Table = g.table()
	rule.Priority = ReturnRulePriority
	return rule
}

func (r *Return) route(g *router, via netip.Addr, link netlink.Link) *netlink.Route {
	return &netlink.Route{LinkIndex: link.Attrs().Index, Gw: via.AsSlice(), Table: g.table(), Family: unix.AF_INET}
}

func (r *Return) sortedLocked() []*router {
	out := make([]*router, 0, len(r.routers))
	for _, g := range r.routers {
		out = append(out, g)
	}
	slices.SortFunc(out, func(a, b *router) int { return int(a.num) - int(b.num) })
	return out
}

// Intact reports whether the table is still as programmed (its chains and their rule
// counts); after `nft flush ruleset` in the task it is false. The routing rules and
// tables are not checked: nft does not touch them.
func (r *Return) Intact(ctx context.Context) (bool, error) {
	if err := ctx.Err(); err != nil {
		return false, err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return false, ErrClosed
	}
	if r.stale {
		return false, nil
	}
	want := map[string]int{chainRtPre: 2, chainRtSrc: 1, chainRtOut: 1, chainRtIn: len(r.routers), chainRtRepl: len(r.routers)}
	chains, err := r.k.nft.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return false, err
	}
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: ReturnTableName}
	n := 0
	for _, ch := range chains {
		if ch.Table == nil || ch.Table.Name != ReturnTableName {
			continue
		}
		n++
		rules, err := r.k.nft.GetRules(t, ch)
		if err != nil || len(rules) != want[ch.Name] {
			return false, err
		}
	}
	return n == len(want), nil
}

// Rewrite rewrites the table (its chains and router rules) in one atomic batch.
func (r *Return) Rewrite(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return ErrClosed
	}
	queueReturnTable(r.k.nft, r.iface)
	queueRouters(r.k.nft, r.sortedLocked())
	if err := r.k.nft.Flush(); err != nil {
		r.stale = true
		return fmt.Errorf("rewriting table %s: %w", ReturnTableName, err)
	}
	r.stale = false
	return nil
}

// Close deletes the table, the rules and routes of every router and restores the
// interface's rp_filter. It is idempotent.
func (r *Return) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	defer r.k.close()
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: ReturnTableName}
	r.k.nft.AddTable(t)
	r.k.nft.DelTable(t)
	var errs []error
	if err := r.k.nft.Flush(); err != nil {
		errs = append(errs, fmt.Errorf("deleting table %s: %w", ReturnTableName, err))
	}
	link, err := r.k.nl.LinkByName(r.iface)
	for _, g := range r.sortedLocked() {
		if err != nil {
			g.addr = netip.Addr{} // the interface is gone, and its routes with it
		}
		errs = append(errs, r.dropRouter(g, link))
	}
	r.routers = nil
	if err == nil && r.oldRP != "" {
		if _, err := r.k.sysctl(rpFilterKey(r.iface), r.oldRP); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func validRouters(rs []Router) (map[string]netip.Addr, error) {
	out := make(map[string]netip.Addr, len(rs))
	for _, rt := range rs {
		if len(rt.MAC) != 6 {
			return nil, errdefs.InvalidArgument("ingress router: invalid MAC %v", rt.MAC)
		}
		if a := rt.Addr.Unmap(); !a.Is4() || a.IsUnspecified() {
			return nil, errdefs.InvalidArgument("ingress router %v: address %v is not an IPv4 address", rt.MAC, rt.Addr)
		}
		if _, dup := out[string(rt.MAC)]; dup {
			return nil, errdefs.InvalidArgument("ingress router %v listed twice", rt.MAC)
		}
		out[string(rt.MAC)] = rt.Addr.Unmap()
	}
	return out, nil
}

// queueReturnTable queues the table with its base chains and empty router chains:
//
//	chain pre (filter, prerouting, mangle): iifname IFACE ct direction original jump routers_in
//
//	chain out (route, output, mangle):      ct mark & ReturnMarkMask != 0 jump routers_out
func queueReturnTable(c conn, iface string) {
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: ReturnTableName}
	c.AddTable(t)
	c.DelTable(t)
	c.AddTable(t)
	c.AddChain(&nftables.Chain{Table: t, Name: chainRtIn})
	c.AddChain(&nftables.Chain{Table: t, Name: chainRtRepl})
	pre := c.AddChain(&nftables.Chain{Table: t, Name: chainRtPre, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityMangle})
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: []expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: ifname(iface)},
		&expr.Ct{Key: expr.CtKeyDIRECTION, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{0}}, // IP_CT_DIR_ORIGINAL
		&expr.Verdict{Kind: expr.VerdictJump, Chain: chainRtIn},
	}})
	m := udpSrcMap(t)
	_ = c.AddSet(m, nil) // queues only: errors come from Flush
	c.AddRule(&nftables.Rule{Table: t, Chain: pre, Exprs: slices.Concat([]expr.Any{
		&expr.Meta{Key: expr.MetaKeyIIFNAME, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: ifname(iface)},
		ctMarkTo(reg1)}, bitsSet(reg1, ReturnMarkMask), isUDP(), []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: ip4Saddr, Len: 4},
		&expr.Payload{DestRegister: reg9, Base: expr.PayloadBaseTransportHeader, Offset: thSport, Len: 2},
		&expr.Payload{DestRegister: reg10, Base: expr.PayloadBaseTransportHeader, Offset: thDport, Len: 2},
		&expr.Payload{DestRegister: reg2, Base: expr.PayloadBaseNetworkHeader, Offset: ip4Daddr, Len: 4},
		&expr.Dynset{SrcRegKey: reg1, SrcRegData: reg2, SetName: m.Name, SetID: m.ID,
			Operation: unix.NFT_DYNSET_OP_UPDATE, Timeout: udpSrcTimeout},
	})})
	src := c.AddChain(&nftables.Chain{Table: t, Name: chainRtSrc, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityRaw})
	c.AddRule(&nftables.Rule{Table: t, Chain: src, Exprs: slices.Concat(isUDP(), []expr.Any{
		&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseNetworkHeader, Offset: ip4Daddr, Len: 4},
		&expr.Payload{DestRegister: reg9, Base: expr.PayloadBaseTransportHeader, Offset: thDport, Len: 2},
		&expr.Payload{DestRegister: reg10, Base: expr.PayloadBaseTransportHeader, Offset: thSport, Len: 2},
		&expr.Lookup{SourceRegister: reg1, SetName: m.Name, SetID: m.ID, DestRegister: reg2, IsDestRegSet: true},
		&expr.Payload{OperationType: expr.PayloadWrite, SourceRegister: reg2, Base: expr.PayloadBaseNetworkHeader,
			Offset: ip4Saddr, Len: 4, CsumType: expr.CsumTypeInet, CsumOffset: ip4Csum, CsumFlags: unix.NFT_PAYLOAD_L4CSUM_PSEUDOHDR},
	})})
	out := c.AddChain(&nftables.Chain{Table: t, Name: chainRtOut, Type: nftables.ChainTypeRoute,
		Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityMangle})
	c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: slices.Concat(
		[]expr.Any{ctMarkTo(reg1)}, bitsSet(reg1, ReturnMarkMask),
		[]expr.Any{&expr.Verdict{Kind: expr.VerdictJump, Chain: chainRtRepl}})})
}

func isUDP() []expr.Any {
	return []expr.Any{
		&expr.Meta{Key: expr.MetaKeyL4PROTO, Register: reg1},
		&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: []byte{unix.IPPROTO_UDP}},
	}
}

// queueRouters rewrites the router chains, two rules per router:
//
//	routers_in:  ether saddr MAC ct mark set ct mark & ~mask | k<<16
//	routers_out: ct mark & mask == k<<16 meta mark set meta mark & ~mask | k<<16
func queueRouters(c conn, rs []*router) {
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: ReturnTableName}
	in, out := &nftables.Chain{Table: t, Name: chainRtIn}, &nftables.Chain{Table: t, Name: chainRtRepl}
	c.FlushChain(in)
	c.FlushChain(out)
	for _, g := range rs {
		c.AddRule(&nftables.Rule{Table: t, Chain: in, Exprs: slices.Concat([]expr.Any{
			&expr.Payload{DestRegister: reg1, Base: expr.PayloadBaseLLHeader, Offset: ethSrc, Len: 6},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: bytes.Clone(g.mac)},
			ctMarkTo(reg1),
		}, withBits(reg1, ReturnMarkMask, g.mark()), []expr.Any{ctMarkFrom(reg1)})})
		c.AddRule(&nftables.Rule{Table: t, Chain: out, Exprs: slices.Concat([]expr.Any{
			ctMarkTo(reg1),
			&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4, Mask: u32(ReturnMarkMask), Xor: u32(0)},
			&expr.Cmp{Op: expr.CmpOpEq, Register: reg1, Data: u32(g.mark())},
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1},
		}, withBits(reg1, ReturnMarkMask, g.mark()), []expr.Any{
			&expr.Meta{Key: expr.MetaKeyMARK, Register: reg1, SourceRegister: true},
		})})
	}
}

// swapSysctl reads /proc/sys/<key> in ns and, if val is not empty, writes val; it
// returns the value before.
func swapSysctl(ns *netns.Namespace, key, val string) (string, error) {
	var old string
	err := ns.Do(func() error {
		b, err := readProcSys(key)
		if err != nil {
			return err
		}
		old = b
		return nil
	})
	if err != nil || val == "" || val == old {
		return old, err
	}
	return old, ns.SetSysctl(key, val)
}

// Detach releases the Return's handles and leaves its table, rules and routes in the
// task's namespace: mesh connections keep flowing while pierd restarts, and the next
// NewReturn for the task rewrites them.
func (r *Return) Detach() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	r.closed = true
	r.k.close()
}
