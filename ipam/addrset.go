package ipam

import (
	"net/netip"
	"slices"
	"sort"
)

// addrSet is a set of addresses of one family stored as sorted, disjoint,
// non-adjacent runs. Serial allocation extends the last run, so the set stays a
// handful of runs however many addresses it holds; lookups are a binary search.
type addrSet struct {
	runs []bounds
}

// index returns the index of the first run that ends at or after a.
func (s *addrSet) index(a netip.Addr) int {
	return sort.Search(len(s.runs), func(i int) bool { return s.runs[i].last.Compare(a) >= 0 })
}

func (s *addrSet) contains(a netip.Addr) bool {
	i := s.index(a)
	return i < len(s.runs) && s.runs[i].first.Compare(a) <= 0
}

// add inserts a, which must not be in the set, merging it with adjacent runs.
func (s *addrSet) add(a netip.Addr) {
	i := s.index(a)
	joinLeft := i > 0 && s.runs[i-1].last.Next() == a
	joinRight := i < len(s.runs) && s.runs[i].first.Prev() == a
	switch {
	case joinLeft && joinRight:
		s.runs[i-1].last = s.runs[i].last
		s.runs = slices.Delete(s.runs, i, i+1)
	case joinLeft:
		s.runs[i-1].last = a
	case joinRight:
		s.runs[i].first = a
	default:
		s.runs = slices.Insert(s.runs, i, bounds{first: a, last: a})
	}
}

// remove deletes a from the set and reports whether it was there.
func (s *addrSet) remove(a netip.Addr) bool {
	i := s.index(a)
	if i == len(s.runs) || s.runs[i].first.Compare(a) > 0 {
		return false
	}
	r := s.runs[i]
	switch {
	case r.first == a && r.last == a:
		s.runs = slices.Delete(s.runs, i, i+1)
	case r.first == a:
		s.runs[i].first = a.Next()
	case r.last == a:
		s.runs[i].last = a.Prev()
	default:
		s.runs[i].last = a.Prev()
		s.runs = slices.Insert(s.runs, i+1, bounds{first: a.Next(), last: r.last})
	}
	return true
}

// nextFree returns the first address in [from, last] that is not in the set.
func (s *addrSet) nextFree(from, last netip.Addr) (netip.Addr, bool) {
	i := s.index(from)
	if i < len(s.runs) && s.runs[i].first.Compare(from) <= 0 {
		// Runs are non-adjacent, so the address after a run is free.
		from = s.runs[i].last.Next()
	}
	return from, from.IsValid() && from.Compare(last) <= 0
}
