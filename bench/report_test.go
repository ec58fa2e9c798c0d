package bench

import (
	"errors"
	"strings"
	"testing"
)

func TestNum(t *testing.T) {
	for in, want := range map[float64]string{
		0: "0", 0.0123: "0.012", 1.234: "1.23", 12.34: "12.3", 123.4: "123", 9999: "9999", 12345.6: "12,346", 1234567: "1,234,567",
	} {
		if got := num(in); got != want {
			t.Errorf("num(%v) = %q, want %q", in, got, want)
		}
	}
}

func TestRatioCell(t *testing.T) {
	s := func(xs ...float64) side { return side{Samples: xs} }
	tests := []struct {
		name string
		rw   row
		want string
	}{
		{"faster", row{Kind: lowerTime, Pier: s(2), Docker: s(40)}, "0.05 (20.0× faster)"},
		{"just over ten", row{Kind: lowerTime, Pier: s(3.25), Docker: s(32.7)}, "0.099 (10.1× faster)"},
		{"much faster", row{Kind: lowerTime, Pier: s(1), Docker: s(355)}, "0.0028 (355× faster)"},
		{"both below the floor", row{Kind: lowerAmount, Floor: 1, Pier: s(0.05), Docker: s(0.5)}, "both < 1.00"},
		{"below the floor", row{Kind: lowerAmount, Floor: 1, Pier: s(0.012), Docker: s(1297)}, "pier < 1.00: > 1297× less"},
		{"slower", row{Kind: lowerTime, Pier: s(3), Docker: s(2)}, "1.5 (1.5× slower)"},
		{"less memory", row{Kind: lowerAmount, Pier: s(1), Docker: s(250)}, "0.004 (250× less)"},
		{"pier none", row{Kind: lowerAmount, Pier: s(0), Docker: s(400)}, "≤ 0 (pier: none measurable)"},
		{"pier below zero", row{Kind: lowerAmount, Pier: s(-0.2), Docker: s(1300)}, "≤ 0 (pier: none measurable)"},
		{"docker below zero", row{Kind: lowerAmount, Pier: s(1), Docker: s(-0.3)}, "—"},
		{"both zero", row{Kind: lowerAmount, Pier: s(0), Docker: s(0)}, "= (both 0)"},
		{"throughput", row{Kind: higher, Pier: s(9.5), Docker: s(10)}, "0.95×"},
		{"pending", row{Kind: higher, Pier: side{Pending: "later"}, Docker: s(10)}, "—"},
		{"failed", row{Kind: higher, Pier: s(1), Docker: side{Err: errors.New("boom")}}, "—"},
	}
	for _, tt := range tests {
		if got := ratioCell(tt.rw); got != tt.want {
			t.Errorf("%s: ratioCell = %q, want %q", tt.name, got, tt.want)
		}
	}
}

func TestReportShowsPendingAndFailures(t *testing.T) {
	rep := &report{Command: "make bench-docker", Sections: []*section{{
		Title: "T",
		Rows: []row{
			{Key: "a", Name: "a (ms)", Pier: side{Pending: "no Ports field"}, Docker: side{Samples: []float64{5}}},
			{Key: "b", Name: "b (ms)", Pier: side{Pending: "no Ports field"}, Docker: side{Samples: []float64{1, 2}, Err: errors.New("daemon | died")}},
		},
	}}}
	var b strings.Builder
	rep.write(&b)
	out := b.String()
	for _, want := range []string{
		"| a (ms) | 0 / 1 | pending |  |  | 5.00 | 5.00 | 5.00–5.00 | — |",
		"| b (ms) | 0 / 2 | pending |  |  | 1.50 | 2.00 | 1.00–2.00 | — |",
		"- **pier pending**: no Ports field (rows: a (ms); b (ms))",
		`- **Docker failed**: daemon \| died (rows: b (ms))`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("report lacks %q:\n%s", want, out)
		}
	}
}
