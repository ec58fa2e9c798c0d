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

// element is one desired set or map element.
type element struct {
	key     string                // the key as nft prints it; unique in its set
	val     string                // a map element's value as nft prints it; "" in sets
	comment string                // owner: network or endpoint ID
	enc     []nftables.SetElement // kernel encoding, without the comment
}

// text is the element as nft prints it.
func (e element) text() string {
	t := e.key
	if e.comment != "" {
		t += " comment " + strconv.Quote(e.comment)
	}
	if e.val != "" {
		t += " : " + e.val
	}
	return t
}

// same reports whether e and o are the same element with the same payload.
func (e element) same(o element) bool {
	return e.key == o.key && e.val == o.val && e.comment == o.comment
}

// encode returns the kernel elements for e, the comment on the first.
func (e element) encode() []nftables.SetElement {
	out := slices.Clone(e.enc)
	out[0].Comment = e.comment
	return out
}

// ifnameElement is an element of an ifname or ifname . ifname set.
func ifnameElement(comment string, names ...string) element {
	quoted := make([]string, len(names))
	var key []byte
	for i, n := range names {
		quoted[i] = strconv.Quote(n)
		key = append(key, ifname(n)...)
	}
	return element{key: strings.Join(quoted, " . "), comment: comment, enc: []nftables.SetElement{{Key: key}}}
}

// prefixElement is an element of an interval set of addresses: a start
// element and an end element holding the first address after the prefix;
// a prefix that ends at the top of the address space has no end element.
func prefixElement(p netip.Prefix, comment string) element {
	enc := []nftables.SetElement{{Key: p.Addr().AsSlice()}}
	if end := lastAddr(p).Next(); end.IsValid() {
		enc = append(enc, nftables.SetElement{Key: end.AsSlice(), IntervalEnd: true})
	}
	return element{key: prefixText(p), comment: comment, enc: enc}
}

// prefixText is p as nft prints it: a /32 or /128 as an address.
func prefixText(p netip.Prefix) string {
	if p.IsSingleIP() {
		return p.Addr().String()
	}
	return p.String()
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

// desired computes every set's elements for bridges and published ports.
func desired(bridges map[string]Bridge, ports map[string][]PortBinding) contents {
	c := newContents()
	for _, b := range bridges {
		c.addBridge(b)
	}
	c.addMasq(bridges, func(netip.Prefix) bool { return true })
	for owner, bs := range ports {
		c.addPorts(owner, bs)
	}
	return c
}

// affected is the part of desired(bridges, …) that changing bridge name
// from prev to next can alter: that bridge's own elements, and the
// masquerade elements overlapping its previous or next subnets. Diffing it
// instead of the whole state keeps a change's cost from growing with the
// number of bridges (but for a linear scan of their subnets).
//
// Why the overlap filter is exact: a masquerade element's fate (kept, or
// hidden inside a wider prefix) depends only on the prefixes that contain
// it, and every prefix containing an element that overlaps a changed subnet
// overlaps that subnet too.
func affected(bridges map[string]Bridge, name string, prev, next Bridge) contents {
	c := newContents()
	if b, ok := bridges[name]; ok {
		c.addBridge(b)
	}
	changed := slices.Concat(prev.Subnets4, prev.Subnets6, next.Subnets4, next.Subnets6)
	c.addMasq(bridges, func(p netip.Prefix) bool {
		return slices.ContainsFunc(changed, p.Overlaps)
	})
	return c
}

// newContents returns empty contents; a set's map is made on its first
// element (reading a missing set gives a nil map, which reads as empty).
func newContents() contents { return contents{} }

func (c contents) add(d setDef, e element) {
	m := c[d.name]
	if m == nil {
		m = map[string]element{}
		c[d.name] = m
	}
	m[e.key] = e
}

// addBridge adds b's elements of the ifname-keyed sets.
func (c contents) addBridge(b Bridge) {
	c.add(setBridges, ifnameElement(b.Owner, b.Name))
	if b.Internal {
		c.add(setInternal, ifnameElement(b.Owner, b.Name))
	}
	if b.ICC {
		c.add(setIntra, ifnameElement(b.Owner, b.Name, b.Name))
	}
	if !b.Internal { // internal networks never publish ports: no hairpin
		c.add(setHairpin, ifnameElement(b.Owner, b.Name, b.Name))
	}
}

// addMasq adds the subnets of non-internal masquerading bridges that are
// in scope.
func (c contents) addMasq(bridges map[string]Bridge, inScope func(netip.Prefix) bool) {
	var masq []masqPrefix
	for _, b := range bridges {
		if !b.Masquerade || b.Internal {
			continue
		}
		for _, subnets := range [][]netip.Prefix{b.Subnets4, b.Subnets6} {
			for _, p := range subnets {
				if inScope(p) {
					masq = append(masq, masqPrefix{p, b.Name, b.Owner})
				}
			}
		}
	}
	for _, m := range outermost(masq) {
		e := prefixElement(m.prefix, m.owner)
		if m.prefix.Addr().Is4() {
			c.add(setMasq4, e)
		} else {
			c.add(setMasq6, e)
		}
	}
}

// masqPrefix is one subnet to masquerade and the bridge it belongs to.
type masqPrefix struct {
	prefix netip.Prefix
	bridge string
	owner  string
}

// outermost drops prefixes that lie inside another one, and duplicates
// (the bridge first by name wins), because an interval set must not hold
// overlapping elements. Bridges' subnets normally never overlap; this keeps
// the kernel from rejecting the batch if they do. Two prefixes either nest
// or are disjoint, so after sorting by address (wider first) a prefix is
// nested exactly when it overlaps the last one kept.
func outermost(in []masqPrefix) []masqPrefix {
	slices.SortFunc(in, func(a, b masqPrefix) int {
		if c := a.prefix.Addr().Compare(b.prefix.Addr()); c != 0 {
			return c
		}
		if c := cmp.Compare(a.prefix.Bits(), b.prefix.Bits()); c != 0 {
			return c
		}
		return strings.Compare(a.bridge, b.bridge)
	})
	var out []masqPrefix
	for _, m := range in {
		if len(out) == 0 || !out[len(out)-1].prefix.Overlaps(m.prefix) {
			out = append(out, m)
		}
	}
	return out
}

// setChange is the difference of one set between two contents.
type setChange struct {
	set      setDef
	del, add []element
}

// diff returns the element changes that turn from into to, in set order;
// sets that do not change are left out. An element whose comment or value
// changed is deleted and added again.
func diff(from, to contents) []setChange {
	var out []setChange
	for _, d := range allSets {
		ch := setChange{set: d}
		for _, k := range slices.Sorted(maps.Keys(from[d.name])) {
			if e, ok := to[d.name][k]; !ok || !e.same(from[d.name][k]) {
				ch.del = append(ch.del, from[d.name][k])
			}
		}
		for _, k := range slices.Sorted(maps.Keys(to[d.name])) {
			if e, ok := from[d.name][k]; !ok || !e.same(to[d.name][k]) {
				ch.add = append(ch.add, to[d.name][k])
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
	return slices.SortedFunc(maps.Values(m), func(a, b element) int { return strings.Compare(a.key, b.key) })
}
