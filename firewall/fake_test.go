package firewall

import (
	"errors"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
)

// fakeKernel is an in-memory nftables that applies batches atomically and
// prints its state as sorted text. It is stricter than the kernel in one way:
// adding an element that exists is an error, to catch diff mistakes.
type fakeKernel struct {
	mu       sync.Mutex
	tables   map[string]*fakeTable // key "family name"
	batches  [][]string            // operations of every non-empty Flush, failed ones too
	fail     error                 // if set, Flush fails with it and applies nothing
	dials    int
	watchers []*fakeEvents   // subscribed notification sockets
	ctFlush  [][]PortBinding // arguments of every conntrack DeleteUDP
}

// foreignPort is the netlink port of changes made behind the firewall's back.
const foreignPort = 4242

type fakeTable struct {
	chains map[string]*fakeChain
	sets   map[string]*fakeSet
}

type fakeChain struct {
	spec  string
	rules []string
}

type fakeSet struct {
	keyType nftables.SetDatatype
	flags   string
	elems   map[string]string // element key text -> comment and value
}

func newFakeKernel() *fakeKernel { return &fakeKernel{tables: map[string]*fakeTable{}} }

// seams returns the Firewall's kernel seam backed by k.
func (k *fakeKernel) seams() kernel {
	return kernel{dial: k.dial, subscribe: k.subscribe, conntrack: k.conntrack}
}

// dial returns a new connection; its port ID is 1000 + the dial count.
func (k *fakeKernel) dial() (conn, uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dials++
	port := uint32(1000 + k.dials)
	return &fakeConn{k: k, port: port}, port, nil
}

// subscribe returns a notification socket that sees every change to
// "inet pier".
func (k *fakeKernel) subscribe() (events, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	e := &fakeEvents{ch: make(chan notice, 1024), closed: make(chan struct{})}
	k.watchers = append(k.watchers, e)
	return e, nil
}

// notifyLocked tells every watcher that port changed "inet pier" in a
// batch, and that the batch ended.
func (k *fakeKernel) notifyLocked(port uint32) {
	for _, w := range k.watchers {
		for _, n := range []notice{{port: port}, {port: port, end: true}} {
			select {
			case w.ch <- n:
			default: // overflow: a real socket would report ENOBUFS
			}
		}
	}
}

func (k *fakeKernel) conntrack() (conntracker, error) { return fakeConntrack{k}, nil }

func (k *fakeKernel) conntrackFlushes() [][]PortBinding {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.ctFlush)
}

type fakeConntrack struct{ k *fakeKernel }

func (c fakeConntrack) DeleteUDP(bindings []PortBinding) (uint, error) {
	c.k.mu.Lock()
	defer c.k.mu.Unlock()
	c.k.ctFlush = append(c.k.ctFlush, slices.Clone(bindings))
	return 0, nil
}

func (fakeConntrack) Close() error { return nil }

// fakeEvents is a notification socket of the fake kernel.
type fakeEvents struct {
	ch        chan notice
	closed    chan struct{}
	closeOnce sync.Once
}

func (e *fakeEvents) Receive() ([]notice, error) {
	select {
	case n := <-e.ch:
		return []notice{n}, nil
	case <-e.closed:
		return nil, net.ErrClosed
	}
}

func (e *fakeEvents) Close() error {
	e.closeOnce.Do(func() { close(e.closed) })
	return nil
}

func (k *fakeKernel) dialCount() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.dials
}

func (k *fakeKernel) flushes() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.batches)
}

func (k *fakeKernel) lastBatch() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.batches[len(k.batches)-1]
}

func (k *fakeKernel) setFail(err error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fail = err
}

// deleteTable removes a table behind the firewall's back.
func (k *fakeKernel) deleteTable(key string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	delete(k.tables, key)
	k.notifyLocked(foreignPort)
}

// flushSet deletes a set's elements behind the firewall's back.
func (k *fakeKernel) flushSet(table, set string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	clear(k.tables[table].sets[set].elems)
	k.notifyLocked(foreignPort)
}

// dump prints the whole state, one sorted line per object.
func (k *fakeKernel) dump() string {
	k.mu.Lock()
	defer k.mu.Unlock()
	var lines []string
	for tk, t := range k.tables {
		lines = append(lines, "table "+tk)
		for name, c := range t.chains {
			lines = append(lines, fmt.Sprintf("chain %s %s: %s", tk, name, c.spec))
			for i, r := range c.rules {
				lines = append(lines, fmt.Sprintf("rule %s %s %02d: %s", tk, name, i, r))
			}
		}
		for name, s := range t.sets {
			lines = append(lines, fmt.Sprintf("set %s %s: type %s%s", tk, name, s.keyType.Name, s.flags))

			for e, c := range s.elems {
				lines = append(lines, fmt.Sprintf("element %s %s: %s%s", tk, name, e, c))
			}
		}
	}
	slices.Sort(lines)
	return strings.Join(lines, "\n") + "\n"
}

// fakeOp is one queued operation.
type fakeOp struct {
	text  string
	apply func(tables map[string]*fakeTable) error
}

type fakeConn struct {
	k      *fakeKernel
	port   uint32
	ops    []fakeOp
	closed bool
}

func (c *fakeConn) CloseLasting() error {
	c.closed = true
	return nil
}

func tableKey(t *nftables.Table) string {
	fam := map[nftables.TableFamily]string{nftables.TableFamilyINet: "inet", nftables.TableFamilyBridge: "bridge"}[t.Family]
	return fam + " " + t.Name
}

func (c *fakeConn) queue(text string, apply func(map[string]*fakeTable) error) {
	c.ops = append(c.ops, fakeOp{text: text, apply: apply})
}

func (c *fakeConn) AddTable(t *nftables.Table) *nftables.Table {
	key := tableKey(t)
	c.queue("add table "+key, func(ts map[string]*fakeTable) error {
		if ts[key] == nil {
			ts[key] = &fakeTable{chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}}
		}
		return nil
	})
	return t
}

func (c *fakeConn) DelTable(t *nftables.Table) {
	key := tableKey(t)
	c.queue("delete table "+key, func(ts map[string]*fakeTable) error {
		if ts[key] == nil {
			return fmt.Errorf("delete table %s: no such file or directory", key)
		}
		delete(ts, key)
		return nil
	})
}

func (c *fakeConn) AddChain(ch *nftables.Chain) *nftables.Chain {
	key := tableKey(ch.Table)
	spec := "regular"
	if ch.Hooknum != nil {
		spec = fmt.Sprintf("type %s hook %d priority %d policy %d", ch.Type, *ch.Hooknum, *ch.Priority, *ch.Policy)
	}
	c.queue(fmt.Sprintf("add chain %s %s", key, ch.Name), func(ts map[string]*fakeTable) error {
		t := ts[key]
		if t == nil {
			return fmt.Errorf("add chain %s: no such table", ch.Name)
		}
		if t.chains[ch.Name] == nil {
			t.chains[ch.Name] = &fakeChain{spec: spec}
		}
		return nil
	})
	return ch
}

func (c *fakeConn) AddRule(r *nftables.Rule) *nftables.Rule {
	key := tableKey(r.Table)
	text := formatExprs(r.Exprs)
	c.queue(fmt.Sprintf("add rule %s %s", key, r.Chain.Name), func(ts map[string]*fakeTable) error {
		t := ts[key]
		if t == nil || t.chains[r.Chain.Name] == nil {
			return fmt.Errorf("add rule: no chain %s %s", key, r.Chain.Name)
		}
		for _, e := range r.Exprs {
			if l, ok := e.(*expr.Lookup); ok && t.sets[l.SetName] == nil {
				return fmt.Errorf("add rule: no set %s", l.SetName)
			}
		}
		t.chains[r.Chain.Name].rules = append(t.chains[r.Chain.Name].rules, text)
		return nil
	})
	return r
}

func (c *fakeConn) AddSet(s *nftables.Set, vals []nftables.SetElement) error {
	key := tableKey(s.Table)
	flags := ""
	if s.Interval {
		flags = " flags interval"
	}
	if s.IsMap {
		flags += " map " + s.DataType.Name
	}
	c.queue(fmt.Sprintf("add set %s %s", key, s.Name), func(ts map[string]*fakeTable) error {
		t := ts[key]
		if t == nil {
			return fmt.Errorf("add set %s: no such table", s.Name)
		}
		if t.sets[s.Name] == nil {
			t.sets[s.Name] = &fakeSet{keyType: s.KeyType, flags: flags, elems: map[string]string{}}
		}
		return nil
	})
	if len(vals) == 0 {
		return nil
	}
	return c.SetAddElements(s, vals)
}

func (c *fakeConn) SetAddElements(s *nftables.Set, vals []nftables.SetElement) error {
	return c.elements("add", s, vals, func(set *fakeSet, text, comment string) error {
		if _, ok := set.elems[text]; ok {
			return fmt.Errorf("add element %s to %s: exists", text, s.Name)
		}
		set.elems[text] = comment
		return nil
	})
}

func (c *fakeConn) SetDeleteElements(s *nftables.Set, vals []nftables.SetElement) error {
	return c.elements("delete", s, vals, func(set *fakeSet, text, _ string) error {
		if _, ok := set.elems[text]; !ok {
			return fmt.Errorf("delete element %s from %s: no such element", text, s.Name)
		}
		delete(set.elems, text)
		return nil
	})
}

// maxElemListLen is the most a netlink attribute can hold (16-bit length).
const maxElemListLen = 65535

// elements queues one operation per element. Like the kernel, it cannot
// take an element list longer than an attribute can hold; unlike the
// kernel, which silently takes what the wrapped length covers, it fails.
func (c *fakeConn) elements(verb string, s *nftables.Set, vals []nftables.SetElement, fn func(set *fakeSet, text, comment string) error) error {
	key := tableKey(s.Table)
	size := 0
	for _, v := range vals {
		size += 40 + len(v.Key) + len(v.KeyEnd) + len(v.Val) + len(v.Comment)
	}
	if size > maxElemListLen {
		return fmt.Errorf("%s %d elements of %s: list of %d bytes overflows a netlink attribute", verb, len(vals), s.Name, size)
	}
	for _, v := range vals {
		text, err := formatKey(s.KeyType, v)
		if err != nil {
			return err
		}
		comment := ""
		if v.Comment != "" {
			comment = " comment " + strconv.Quote(v.Comment)
		}
		if s.IsMap {
			val, err := formatFields(s.DataType, v.Val)
			if err != nil {
				return err
			}
			comment += " : " + val
		}
		c.queue(fmt.Sprintf("%s element %s %s %s", verb, key, s.Name, text), func(ts map[string]*fakeTable) error {
			if ts[key] == nil || ts[key].sets[s.Name] == nil {
				return fmt.Errorf("%s element: no set %s %s", verb, key, s.Name)
			}
			return fn(ts[key].sets[s.Name], text, comment)
		})
	}
	return nil
}

// Flush applies the queued operations atomically; like the library it sends
// nothing if nothing is queued.
func (c *fakeConn) Flush() error {
	k := c.k
	k.mu.Lock()
	defer k.mu.Unlock()
	ops := c.ops
	c.ops = nil
	if c.closed {
		return errors.New("flush on closed connection")
	}
	if len(ops) == 0 {
		return nil
	}
	texts := make([]string, len(ops))
	for i, op := range ops {
		texts[i] = op.text
	}
	k.batches = append(k.batches, texts)
	if k.fail != nil {
		return k.fail
	}
	next := cloneTables(k.tables)
	for _, op := range ops {
		if err := op.apply(next); err != nil {
			return err
		}
	}
	k.tables = next
	k.notifyLocked(c.port)
	return nil
}

func (c *fakeConn) ListTablesOfFamily(family nftables.TableFamily) ([]*nftables.Table, error) {
	k := c.k
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.fail != nil {
		return nil, k.fail
	}
	var out []*nftables.Table
	for key := range k.tables {
		fam, name, _ := strings.Cut(key, " ")
		t := &nftables.Table{Name: name, Family: nftables.TableFamilyBridge}
		if fam == "inet" {
			t.Family = nftables.TableFamilyINet
		}
		if t.Family == family {
			out = append(out, t)
		}
	}
	return out, nil
}

func cloneTables(in map[string]*fakeTable) map[string]*fakeTable {
	out := make(map[string]*fakeTable, len(in))
	for k, t := range in {
		nt := &fakeTable{chains: map[string]*fakeChain{}, sets: map[string]*fakeSet{}}
		for n, c := range t.chains {
			nt.chains[n] = &fakeChain{spec: c.spec, rules: slices.Clone(c.rules)}
		}
		for n, s := range t.sets {
			nt.sets[n] = &fakeSet{keyType: s.keyType, flags: s.flags, elems: maps.Clone(s.elems)}
		}
		out[k] = nt
	}
	return out
}

// formatKey decodes an element key (and the end of a concatenated range)
// for display.
func formatKey(t nftables.SetDatatype, v nftables.SetElement) (string, error) {
	text, err := formatFields(t, v.Key)
	if err != nil {
		return "", err
	}
	if len(v.KeyEnd) > 0 {
		end, err := formatFields(t, v.KeyEnd)
		if err != nil {
			return "", err
		}
		text += " - " + end
	}
	if v.IntervalEnd {
		text += " end"
	}
	return text, nil
}

// fieldLen is the size of each field type in a key.
var fieldLen = map[string]int{"ifname": ifnameLen, "ipv4_addr": 4, "ipv6_addr": 16, "inet_proto": 1, "inet_service": 2}

// formatFields decodes a (possibly concatenated) key or value of type t.
// Fields of a concatenation are padded to 4 bytes.
func formatFields(t nftables.SetDatatype, b []byte) (string, error) {
	if len(b) != int(t.Bytes) {
		return "", fmt.Errorf("key %x: want %d bytes for %s", b, t.Bytes, t.Name)
	}
	names := strings.Split(t.Name, " . ")
	parts := make([]string, len(names))
	for i, n := range names {
		size, ok := fieldLen[n]
		if !ok {
			return "", errors.New("unknown key type " + n)
		}
		if len(b) < size {
			return "", fmt.Errorf("key too short for %s", t.Name)
		}
		parts[i] = formatField(n, b[:size])
		if len(names) > 1 {
			size = (size + 3) &^ 3
		}
		b = b[min(size, len(b)):]
	}
	return strings.Join(parts, " . "), nil
}

func formatField(typ string, b []byte) string {
	switch typ {
	case "ifname":
		return strconv.Quote(strings.TrimRight(string(b), "\x00"))
	case "inet_proto":
		return map[byte]string{6: "tcp", 17: "udp", 132: "sctp"}[b[0]]
	case "inet_service":
		return strconv.Itoa(int(b[0])<<8 | int(b[1]))
	}
	a, _ := netip.AddrFromSlice(b)
	return a.String()
}

// formatExprs prints expressions like `nft --debug=netlink`.
func formatExprs(es []expr.Any) string {
	parts := make([]string, len(es))
	for i, e := range es {
		parts[i] = "[ " + formatExpr(e) + " ]"
	}
	return strings.Join(parts, " ")
}

func formatExpr(e expr.Any) string {
	switch e := e.(type) {
	case *expr.Meta:
		if e.SourceRegister {
			return fmt.Sprintf("meta set %s with reg %d", metaKeyName[e.Key], e.Register)
		}
		return fmt.Sprintf("meta load %s => reg %d", metaKeyName[e.Key], e.Register)
	case *expr.Lookup:
		if e.IsDestRegSet {
			return fmt.Sprintf("lookup reg %d set %s dreg %d", e.SourceRegister, e.SetName, e.DestRegister)
		}
		return fmt.Sprintf("lookup reg %d set %s", e.SourceRegister, e.SetName)
	case *expr.Fib:
		return fmt.Sprintf("fib daddr type => reg %d", e.Register)
	case *expr.NAT:
		return fmt.Sprintf("nat dnat %d addr_min reg %d proto_min reg %d", e.Family, e.RegAddrMin, e.RegProtoMin)
	case *expr.Ct:
		return fmt.Sprintf("ct load %s => reg %d", map[expr.CtKey]string{expr.CtKeySTATE: "state", expr.CtKeySTATUS: "status"}[e.Key], e.Register)
	case *expr.Bitwise:
		return fmt.Sprintf("bitwise reg %d = ( reg %d & 0x%x ) ^ 0x%x", e.DestRegister, e.SourceRegister, e.Mask, e.Xor)
	case *expr.Cmp:
		return fmt.Sprintf("cmp %s reg %d 0x%x", map[expr.CmpOp]string{expr.CmpOpEq: "eq", expr.CmpOpNeq: "neq"}[e.Op], e.Register, e.Data)
	case *expr.Payload:
		base := map[expr.PayloadBase]string{expr.PayloadBaseNetworkHeader: "network", expr.PayloadBaseTransportHeader: "transport"}[e.Base]
		return fmt.Sprintf("payload load %db @ %s header + %d => reg %d", e.Len, base, e.Offset, e.DestRegister)
	case *expr.Verdict:
		if e.Kind == expr.VerdictJump {
			return "jump " + e.Chain
		}
		return map[expr.VerdictKind]string{expr.VerdictAccept: "accept", expr.VerdictDrop: "drop", expr.VerdictReturn: "return"}[e.Kind]
	case *expr.Masq:
		return "masq"
	}
	return fmt.Sprintf("%T", e)
}

var metaKeyName = map[expr.MetaKey]string{
	expr.MetaKeyIIFNAME: "iifname",
	expr.MetaKeyOIFNAME: "oifname",
	expr.MetaKeyNFPROTO: "nfproto",
	expr.MetaKeyL4PROTO: "l4proto",
	expr.MetaKeyMARK:    "mark",
}
