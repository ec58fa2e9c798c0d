package dns

import (
	"cmp"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
)

// Record is one endpoint's names on one network.
type Record struct {
	NetworkID, NetworkName string
	EndpointID, SandboxID  string
	// Names are the sandbox name (first: it is the PTR answer), its aliases on
	// this network and the 12-character sandbox ID. Matching is case-insensitive.
	Names        []string
	Addr4, Addr6 netip.Addr // zero when absent
}

// registry holds the records and the immutable view that queries read.
// Changes only invalidate the view; the next query rebuilds it once, so a burst
// of changes (a restore adding every endpoint) costs one rebuild, not one each.
type registry struct {
	view atomic.Pointer[view] // nil when stale

	mu      sync.Mutex // guards the fields below and serialises rebuilds
	records map[string]Record
}

func newRegistry() *registry {
	r := &registry{records: map[string]Record{}}
	r.view.Store(buildView(nil))
	return r
}

// upsert replaces the record of r.EndpointID.
func (g *registry) upsert(r Record) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.records[r.EndpointID] = normalize(r)
	g.view.Store(nil)
}

// remove forgets an endpoint's record.
func (g *registry) remove(endpointID string) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if _, ok := g.records[endpointID]; ok {
		delete(g.records, endpointID)
		g.view.Store(nil)
	}
}

// current returns the view, rebuilding it if a change made it stale.
func (g *registry) current() *view {
	if v := g.view.Load(); v != nil {
		return v
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if v := g.view.Load(); v != nil {
		return v
	}
	v := buildView(g.records)
	g.view.Store(v)
	return v
}

// normalize lower-cases names, drops trailing dots, empty and duplicate names,
// and unmaps addresses so Addr4 is always 4-byte and Addr6 16-byte.
func normalize(r Record) Record {
	names := make([]string, 0, len(r.Names))
	for _, n := range r.Names {
		n = strings.ToLower(strings.TrimSuffix(n, "."))
		if n != "" && !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	r.Names = names
	r.NetworkName = strings.ToLower(strings.TrimSuffix(r.NetworkName, "."))
	if r.Addr4 = r.Addr4.Unmap(); !r.Addr4.Is4() {
		r.Addr4 = netip.Addr{}
	}
	if !r.Addr6.Is6() || r.Addr6.Is4In6() {
		r.Addr6 = netip.Addr{}
	}
	return r
}

// view is an immutable index of the records, read without locks by queries.
type view struct {
	sandboxes map[string]*sandboxView // by sandbox ID
}

// sandboxView is what one sandbox can see: the networks it has a record on.
type sandboxView struct {
	nets []*netView // sorted by network name
}

// netView is one network's names and reverse entries.
type netView struct {
	name  string // lower-cased network name
	names map[string]*nameEntry
	ptr   map[netip.Addr][]byte // address → PTR target, wire form
}

// nameEntry is every address one name has on one network.
type nameEntry struct {
	v4, v6 []netip.Addr
	next   atomic.Uint32 // round-robin cursor
}

// buildView indexes the records. Records are visited in endpoint-ID order so the
// result (address order, which endpoint wins a PTR) is deterministic.
func buildView(records map[string]Record) *view {
	nets := map[string]*netView{}
	sbNets := map[string]map[*netView]bool{}
	for _, id := range slices.Sorted(maps.Keys(records)) {
		r := records[id]
		nv := nets[r.NetworkID]
		if nv == nil {
			nv = &netView{name: r.NetworkName, names: map[string]*nameEntry{}, ptr: map[netip.Addr][]byte{}}
			nets[r.NetworkID] = nv
		}
		nv.add(r)
		if r.SandboxID != "" {
			if sbNets[r.SandboxID] == nil {
				sbNets[r.SandboxID] = map[*netView]bool{}
			}
			sbNets[r.SandboxID][nv] = true
		}
	}
	v := &view{sandboxes: make(map[string]*sandboxView, len(sbNets))}
	for sb, set := range sbNets {
		list := slices.SortedFunc(maps.Keys(set), func(a, b *netView) int { return cmp.Compare(a.name, b.name) })
		v.sandboxes[sb] = &sandboxView{nets: list}
	}
	return v
}

// add indexes one record's names and addresses on the network.
func (nv *netView) add(r Record) {
	for _, n := range r.Names {
		e := nv.names[n]
		if e == nil {
			e = &nameEntry{}
			nv.names[n] = e
		}
		if r.Addr4.IsValid() {
			e.v4 = append(e.v4, r.Addr4)
		}
		if r.Addr6.IsValid() {
			e.v6 = append(e.v6, r.Addr6)
		}
	}
	if len(r.Names) == 0 {
		return
	}
	target := r.Names[0]
	if nv.name != "" {
		target += "." + nv.name
	}
	wire, ok := encodeName(target)
	if !ok {
		return
	}
	for _, a := range []netip.Addr{r.Addr4, r.Addr6} {
		if _, dup := nv.ptr[a]; a.IsValid() && !dup {
			nv.ptr[a] = wire
		}
	}
}

// match appends the entries name has on the sandbox's networks, trying the name
// as given, then as "name.network", then with each search domain removed.
func (sv *sandboxView) match(dst []*nameEntry, name []byte, search []string) []*nameEntry {
	if dst = sv.matchName(dst, name); len(dst) > 0 {
		return dst
	}
	for _, s := range search {
		if rest, ok := hasSuffixLabel(name, s); ok {
			if dst = sv.matchName(dst, rest); len(dst) > 0 {
				return dst
			}
		}
	}
	return dst
}

// matchName looks name up on every network, then as "name.network".
func (sv *sandboxView) matchName(dst []*nameEntry, name []byte) []*nameEntry {
	for _, nv := range sv.nets {
		if e := nv.names[string(name)]; e != nil {
			dst = append(dst, e)
		}
	}
	if len(dst) > 0 {
		return dst
	}
	for _, nv := range sv.nets {
		if rest, ok := hasSuffixLabel(name, nv.name); ok {
			if e := nv.names[string(rest)]; e != nil {
				dst = append(dst, e)
			}
		}
	}
	return dst
}

// reverse returns the PTR target of an address on one of the sandbox's networks.
func (sv *sandboxView) reverse(a netip.Addr) []byte {
	for _, nv := range sv.nets {
		if t := nv.ptr[a]; t != nil {
			return t
		}
	}
	return nil
}
