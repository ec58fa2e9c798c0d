package firewall

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strconv"
	"strings"

	"github.com/google/nftables"
)

// element is one desired set element.
type element struct {
	names   []string     // ifname keys: one name, or two for ifname . ifname
	prefix  netip.Prefix // interval keys
	comment string       // owner network ID
}

// key is the element's nft text without the comment; it is unique in its set.
func (e element) key() string {
	if e.prefix.IsValid() {
		if e.prefix.IsSingleIP() {
			return e.prefix.Addr().String() // nft prints a /32 or /128 as an address
		}
		return e.prefix.String()
	}
	quoted := make([]string, len(e.names))
	for i, n := range e.names {
		quoted[i] = strconv.Quote(n)
	}
	return strings.Join(quoted, " . ")
}

// text is the element as nft prints it.
func (e element) text() string {
	if e.comment == "" {
		return e.key()
	}
	return e.key() + " comment " + strconv.Quote(e.comment)
}

// encode returns the kernel elements for e. An interval is a start element
// and an end element holding the first address after the prefix; a prefix
// that ends at the top of the address space has no end element.
func (e element) encode() []nftables.SetElement {
	if !e.prefix.IsValid() {
		var key []byte
		for _, n := range e.names {
			key = append(key, ifname(n)...)
		}
		return []nftables.SetElement{{Key: key, Comment: e.comment}}
	}
	out := []nftables.SetElement{{Key: e.prefix.Addr().AsSlice(), Comment: e.comment}}
	if end := lastAddr(e.prefix).Next(); end.IsValid() {
		out = append(out, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
	}
	return out
}

// ifname returns name zero-padded to IFNAMSIZ, the way the kernel loads
// iifname/oifname into a register.
func ifname(name string) []byte {
	b := make([]byte, ifnameLen)
	copy(b, name)
	return b
}

// lastAddr returns the highest address in p.
func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Masked().Addr().AsSlice()
	for i := p.Bits(); i < len(b)*8; i++ {
		b[i/8] |= 0x80 >> (i % 8)
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// contents maps a set name to its elements, keyed by element key.
type contents map[string]map[string]element

// desired computes every set's elements for bridges.
func desired(bridges map[string]Bridge) contents {
	c := contents{}
	for _, d := range allSets {
		c[d.name] = map[string]element{}
	}
	add := func(d setDef, e element) { c[d.name][e.key()] = e }
	var masq []element
	for _, name := range slices.Sorted(maps.Keys(bridges)) {
		b := bridges[name]
		add(setBridges, element{names: []string{name}, comment: b.Owner})
		if b.Internal {
			add(setInternal, element{names: []string{name}, comment: b.Owner})
		}
		if b.ICC {
			add(setIntra, element{names: []string{name, name}, comment: b.Owner})
		}
		if b.Masquerade && !b.Internal {
			for _, p := range slices.Concat(b.Subnets4, b.Subnets6) {
				masq = append(masq, element{prefix: p, comment: b.Owner})
			}
		}
	}
	for _, e := range outermost(masq) {
		if e.prefix.Addr().Is4() {
			add(setMasq4, e)
		} else {
			add(setMasq6, e)
		}
	}
	return c
}

// outermost drops prefixes that lie inside another one (and duplicates,
// keeping the first), because an interval set must not hold overlapping
// elements. Bridges' subnets normally never overlap; this keeps the kernel
// from rejecting the batch if they do. Two prefixes either nest or are
// disjoint, so after sorting by address (wider first) a prefix is nested
// exactly when it overlaps the last one kept.
func outermost(in []element) []element {
	sorted := slices.Clone(in)
	slices.SortStableFunc(sorted, func(a, b element) int {
		if c := a.prefix.Addr().Compare(b.prefix.Addr()); c != 0 {
			return c
		}
		return cmp.Compare(a.prefix.Bits(), b.prefix.Bits())
	})
	var out []element
	for _, e := range sorted {
		if len(out) == 0 || !out[len(out)-1].prefix.Overlaps(e.prefix) {
			out = append(out, e)
		}
	}
	return out
}

// setChange is the difference of one set between two contents.
type setChange struct {
	set      setDef
	del, add []element
}

// diff returns the element changes that turn old into new, in set order;
// sets that do not change are left out. An element whose comment changed is
// deleted and added again.
func diff(old, new contents) []setChange {
	var out []setChange
	for _, d := range allSets {
		ch := setChange{set: d}
		for _, k := range slices.Sorted(maps.Keys(old[d.name])) {
			if e, ok := new[d.name][k]; !ok || e.comment != old[d.name][k].comment {
				ch.del = append(ch.del, old[d.name][k])
			}
		}
		for _, k := range slices.Sorted(maps.Keys(new[d.name])) {
			if e, ok := old[d.name][k]; !ok || e.comment != new[d.name][k].comment {
				ch.add = append(ch.add, new[d.name][k])
			}
		}
		if len(ch.del)+len(ch.add) > 0 {
			out = append(out, ch)
		}
	}
	return out
}

// encodeAll returns the kernel elements of es.
func encodeAll(es []element) []nftables.SetElement {
	var out []nftables.SetElement
	for _, e := range es {
		out = append(out, e.encode()...)
	}
	return out
}

// sortedElements returns a set's elements ordered by key.
func sortedElements(m map[string]element) []element {
	return slices.SortedFunc(maps.Values(m), func(a, b element) int { return strings.Compare(a.key(), b.key()) })
}
