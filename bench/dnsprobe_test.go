package bench

import (
	"encoding/binary"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestBuildQuery(t *testing.T) {
	got := buildQuery(0x1234, "web.app.")
	want := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0,
		3, 'w', 'e', 'b', 3, 'a', 'p', 'p', 0, 0, 1, 0, 1}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("buildQuery (-want +got):\n%s", diff)
	}
}

func TestParseReply(t *testing.T) {
	reply := buildQuery(7, "web")
	reply[2] |= 0x80                         // QR
	reply[3] = 0x03                          // NXDOMAIN
	binary.BigEndian.PutUint16(reply[6:], 2) // ANCOUNT
	if rc, an, ok := parseReply(reply, 7); !ok || rc != 3 || an != 2 {
		t.Errorf("parseReply = %d, %d, %v; want 3, 2, true", rc, an, ok)
	}
	if _, _, ok := parseReply(reply, 8); ok {
		t.Error("parseReply accepted a reply to another ID")
	}
	if _, _, ok := parseReply(buildQuery(7, "web"), 7); ok {
		t.Error("parseReply accepted a query (QR unset)")
	}
	if _, _, ok := parseReply(reply[:5], 7); ok {
		t.Error("parseReply accepted a short packet")
	}
}

func TestParseDNSPerf(t *testing.T) {
	out := `Statistics:

  Queries sent:         137679
  Queries completed:    137679 (100.00%)
  Queries lost:         12 (0.00%)

  Response codes:       NOERROR 137667 (100.00%)
  Average packet size:  request 21, response 40
  Run time (s):         5.054554
  Queries per second:   27238.605028

  Average Latency (s):  0.003225 (min 0.000021, max 0.090844)
  Latency StdDev (s):   0.004093
`
	got, err := parseDNSPerf(out)
	if err != nil {
		t.Fatal(err)
	}
	want := dnsPerfResult{QPS: 27238.605028, AvgMs: 3.225, Sent: 137679, Lost: 12, Rcodes: "NOERROR 137667 (100.00%)"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("parseDNSPerf (-want +got):\n%s", diff)
	}
	if _, err := parseDNSPerf("garbage"); err == nil {
		t.Error("parseDNSPerf accepted garbage")
	}
}
