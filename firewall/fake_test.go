package firewall

import (
	"errors"
	"fmt"
	"maps"
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
	mu      sync.Mutex
	tables  map[string]*fakeTable // key "family name"
	batches [][]string            // operations of every non-empty Flush, failed ones too
	fail    error                 // if set, Flush fails with it and applies nothing
	dials   int
}

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
	elems   map[string]string // element text -> comment
}

func newFakeKernel() *fakeKernel { return &fakeKernel{tables: map[string]*fakeTable{}} }

// dial returns a new connection.
func (k *fakeKernel) dial() (conn, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.dials++
	return &fakeConn{k: k}, nil
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
	spec := fmt.Sprintf("type %s hook %d priority %d policy %d", ch.Type, *ch.Hooknum, *ch.Priority, *ch.Policy)
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

// elements queues one operation per element.
func (c *fakeConn) elements(verb string, s *nftables.Set, vals []nftables.SetElement, fn func(set *fakeSet, text, comment string) error) error {
	key := tableKey(s.Table)
	for _, v := range vals {
		text, err := formatKey(s.KeyType, v)
		if err != nil {
			return err
		}
		comment := ""
		if v.Comment != "" {
			comment = " comment " + strconv.Quote(v.Comment)
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

// formatKey decodes an element key for display.
func formatKey(t nftables.SetDatatype, v nftables.SetElement) (string, error) {
	switch t.Name {
	case "ifname", "ifname . ifname":
		if len(v.Key) != int(t.Bytes) {
			return "", fmt.Errorf("key %x: want %d bytes", v.Key, t.Bytes)
		}
		var parts []string
		for key := v.Key; len(key) > 0; key = key[ifnameLen:] {
			parts = append(parts, strconv.Quote(strings.TrimRight(string(key[:ifnameLen]), "\x00")))
		}
		return strings.Join(parts, " . "), nil
	case "ipv4_addr", "ipv6_addr":
		a, ok := netip.AddrFromSlice(v.Key)
		if !ok || len(v.Key) != int(t.Bytes) {
			return "", fmt.Errorf("key %x: not a %s", v.Key, t.Name)
		}
		if v.IntervalEnd {
			return a.String() + " end", nil
		}
		return a.String(), nil
	}
	return "", errors.New("unknown key type " + t.Name)
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
		return fmt.Sprintf("meta load %s => reg %d", metaKeyName[e.Key], e.Register)
	case *expr.Lookup:
		return fmt.Sprintf("lookup reg %d set %s", e.SourceRegister, e.SetName)
	case *expr.Ct:
		return fmt.Sprintf("ct load %s => reg %d", map[expr.CtKey]string{expr.CtKeySTATE: "state", expr.CtKeySTATUS: "status"}[e.Key], e.Register)
	case *expr.Bitwise:
		return fmt.Sprintf("bitwise reg %d = ( reg %d & 0x%x ) ^ 0x%x", e.DestRegister, e.SourceRegister, e.Mask, e.Xor)
	case *expr.Cmp:
		return fmt.Sprintf("cmp %s reg %d 0x%x", map[expr.CmpOp]string{expr.CmpOpEq: "eq", expr.CmpOpNeq: "neq"}[e.Op], e.Register, e.Data)
	case *expr.Payload:
		return fmt.Sprintf("payload load %db @ network header + %d => reg %d", e.Len, e.Offset, e.DestRegister)
	case *expr.Verdict:
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
}
