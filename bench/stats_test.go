package bench

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSummarize(t *testing.T) {
	tests := []struct {
		name string
		in   []float64
		want summary
	}{
		{"empty", nil, summary{}},
		{"one", []float64{3}, summary{N: 1, Median: 3, P95: 3, Min: 3, Max: 3}},
		{"even count averages the middle", []float64{4, 1, 3, 2}, summary{N: 4, Median: 2.5, P95: 4, Min: 1, Max: 4}},
		{"p95 is nearest rank", seq(1, 20), summary{N: 20, Median: 10.5, P95: 19, Min: 1, Max: 20}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, summarize(tt.in)); diff != "" {
				t.Errorf("summarize(%v) (-want +got):\n%s", tt.in, diff)
			}
		})
	}
}

func seq(from, to int) []float64 {
	var out []float64
	for i := to; i >= from; i-- { // unsorted on purpose
		out = append(out, float64(i))
	}
	return out
}
