package ipam

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"
)

// String prints the runs, e.g. "10.0.0.1-10.0.0.3 10.0.0.7", for test diffs.
func (s *addrSet) String() string {
	var parts []string
	for _, r := range s.runs {
		if r.first == r.last {
			parts = append(parts, r.first.String())
		} else {
			parts = append(parts, fmt.Sprintf("%s-%s", r.first, r.last))
		}
	}
	return strings.Join(parts, " ")
}

func TestAddrSet(t *testing.T) {
	ip := func(n int) netip.Addr { return netip.AddrFrom4([4]byte{10, 0, 0, byte(n)}) }
	tests := []struct {
		name string
		add  []int
		del  []int
		want string
	}{
		{name: "serial adds merge", add: []int{1, 2, 3}, want: "10.0.0.1-10.0.0.3"},
		{name: "gap filled", add: []int{1, 3, 2}, want: "10.0.0.1-10.0.0.3"},
		{name: "join right", add: []int{5, 4}, want: "10.0.0.4-10.0.0.5"},
		{name: "separate", add: []int{9, 1, 5}, want: "10.0.0.1 10.0.0.5 10.0.0.9"},
		{name: "remove middle splits", add: []int{1, 2, 3}, del: []int{2}, want: "10.0.0.1 10.0.0.3"},
		{name: "remove ends", add: []int{1, 2, 3, 4}, del: []int{1, 4}, want: "10.0.0.2-10.0.0.3"},
		{name: "remove single", add: []int{1, 5}, del: []int{5}, want: "10.0.0.1"},
		{name: "remove absent", add: []int{1}, del: []int{2, 0}, want: "10.0.0.1"},
		{name: "both ends of a /24", add: []int{255, 0}, want: "10.0.0.0 10.0.0.255"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var s addrSet
			for _, n := range tt.add {
				s.add(ip(n))
			}
			for _, n := range tt.del {
				was := s.contains(ip(n))
				if s.remove(ip(n)) != was || s.contains(ip(n)) {
					t.Errorf("remove(%s): wrong result or still in the set", ip(n))
				}
			}
			if got := s.String(); got != tt.want {
				t.Errorf("set = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestAddrSetNextFree(t *testing.T) {
	var s addrSet
	for _, a := range []string{"10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.5", "255.255.255.255"} {
		s.add(netip.MustParseAddr(a))
	}
	tests := []struct {
		from, last string
		want       string // "" = none
	}{
		{"10.0.0.0", "10.0.0.9", "10.0.0.0"},
		{"10.0.0.1", "10.0.0.9", "10.0.0.4"},
		{"10.0.0.5", "10.0.0.9", "10.0.0.6"},
		{"10.0.0.5", "10.0.0.5", ""},
		{"10.0.0.2", "10.0.0.3", ""},
		{"255.255.255.255", "255.255.255.255", ""},
	}
	for _, tt := range tests {
		got, ok := s.nextFree(netip.MustParseAddr(tt.from), netip.MustParseAddr(tt.last))
		if (tt.want == "" && ok) || (tt.want != "" && (!ok || got.String() != tt.want)) {
			t.Errorf("nextFree(%s, %s) = %s, %v; want %q", tt.from, tt.last, got, ok, tt.want)
		}
	}
}
