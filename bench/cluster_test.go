package bench

import (
	"encoding/json"
	"net"
	"strings"
	"testing"
	"time"
)

func TestPct(t *testing.T) {
	xs := make([]float64, 100)
	for i := range xs {
		xs[i] = float64(i + 1)
	}
	for _, tc := range []struct{ p, want float64 }{{50, 50}, {95, 95}, {99, 99}, {100, 100}, {0, 1}} {
		if got := pct(xs, tc.p); got != tc.want {
			t.Errorf("pct(1..100, %v) = %v, want %v", tc.p, got, tc.want)
		}
	}
	if got := pct([]float64{7}, 99); got != 7 {
		t.Errorf("pct of one sample = %v, want 7", got)
	}
}

func TestProbeBadInput(t *testing.T) {
	for _, args := range [][]string{nil, {"nonsense"}, {"appear", "-bogus"}} {
		if err := Probe(args, strings.NewReader(""), &strings.Builder{}); err == nil {
			t.Errorf("Probe(%q) succeeded, want an error", args)
		}
	}
}

func TestRatioTo(t *testing.T) {
	if got := ratioTo([]float64{2, 4, 6}, []float64{8}); got != "0.50" {
		t.Errorf("ratioTo = %q, want 0.50", got)
	}
	if got := ratioTo(nil, []float64{1}); got != "" {
		t.Errorf("ratioTo without samples = %q, want empty", got)
	}
}

// TestHTTPProbe: http-client against http-server on loopback records one duration
// per exchange, each a real connect + GET + answer.
func TestHTTPProbe(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	go func() { _ = httpServer(addr) }()
	var out strings.Builder
	if err := httpClient(addr, 5, 5*time.Second, &out); err != nil {
		t.Fatal(err)
	}
	var ts []float64
	if err := json.Unmarshal([]byte(out.String()), &ts); err != nil || len(ts) != 5 {
		t.Fatalf("http-client printed %q (%v), want 5 durations", out.String(), err)
	}
}

func TestLogKeyCut(t *testing.T) {
	l := `msg="Failed Adding rSA{Aead: {Name: rfc4106(gcm(aes)), Key: 0xdeadbeef01, ICVLen: 128}}: invalid argument"`
	got := logKey.ReplaceAllString(l, "${1}…")
	if strings.Contains(got, "deadbeef") || !strings.HasSuffix(got, "invalid argument\"") {
		t.Errorf("cut line %q still has the key or lost the reason", got)
	}
}
