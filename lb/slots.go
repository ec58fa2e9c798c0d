package lb

import "net/netip"

// Slots is the size of every service's slot table: a new connection takes slot
// "numgen random mod Slots" of its VIP, and each slot names a backend. With N
// backends each has ⌊64/N⌋ or ⌈64/N⌉ slots, so its share is exact when N divides 64
// and otherwise within 1/64 of 1/N (N = 3: 22, 21, 21 slots, 34.4 % and 32.8 %).
// A backend change rewrites only the slots that change hands (~64/N elements), never
// a rule: rule changes make the kernel re-validate the whole table, whose cost grows
// with the number of services; element changes do not.
const Slots = 64

// Assign returns the slot table for backends (sorted, unique), keeping every slot of
// old whose backend stays within its quota, so that a change moves as few slots as
// it can. No backends: nil.
func Assign(old []netip.Addr, backends []netip.Addr) []netip.Addr {
	if len(backends) == 0 {
		return nil
	}
	quota := make(map[netip.Addr]int, len(backends))
	for i, b := range backends {
		quota[b] = Slots / len(backends)
		if i < Slots%len(backends) {
			quota[b]++
		}
	}
	out := make([]netip.Addr, Slots)
	if len(old) == Slots {
		for i, a := range old {
			if quota[a] > 0 {
				out[i] = a
				quota[a]--
			}
		}
	}
	next := 0
	for i := range out {
		if out[i].IsValid() {
			continue
		}
		for quota[backends[next]] == 0 {
			next++
		}
		out[i] = backends[next]
		quota[backends[next]]--
	}
	return out
}

// Moved returns the slots whose backend differs between the slot tables from and to
// (nil: no backends): those to delete (from has a backend there) and those to add
// (to has one).
func Moved(from, to []netip.Addr) (del, add []int) {
	for i := range Slots {
		var a, b netip.Addr
		if from != nil {
			a = from[i]
		}
		if to != nil {
			b = to[i]
		}
		if a == b {
			continue
		}
		if a.IsValid() {
			del = append(del, i)
		}
		if b.IsValid() {
			add = append(add, i)
		}
	}
	return del, add
}
