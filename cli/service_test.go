package cli

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestServiceCreateRequest(t *testing.T) {
	f := newFakePierd(t, map[string]reply{"POST /pier/v1/services": {201, `{"ID":"svc1","Name":"web"}`}})
	res := f.pier(t, "", "service", "create", "web", "--network", "app", "--network", "back", "--port", "80/tcp", "--port", "53/udp",
		"--sticky", "10m", "--stop-grace", "30s")
	if res.code != 0 || res.out != "svc1\n" {
		t.Fatalf("pier = %+v", res)
	}
	want := `{"Name":"web","Networks":["app","back"],"EndpointMode":"vip","Ports":["80/tcp","53/udp"],"Sticky":"10m","StopGrace":"30s"}`
	if got := f.requests(); len(got) != 1 || cmp.Diff(jsonValue(t, want), got[0].Body) != "" {
		t.Fatalf("requests = %+v", got)
	}
	// A bad port fails before anything is sent.
	f2 := newFakePierd(t, nil)
	if res := f2.pier(t, "", "service", "create", "x", "--network", "app", "--port", "80/sctp"); res.code == 0 || !strings.Contains(res.err, "tcp or udp") {
		t.Fatalf("bad port: %+v", res)
	}
	if got := f2.requests(); len(got) != 0 {
		t.Fatalf("a bad port sent %+v", got)
	}
}

func TestServiceLs(t *testing.T) {
	f := newFakePierd(t, map[string]reply{"GET /pier/v1/services": {200, `[{"ID":"0123456789abcdef","Name":"web","EndpointMode":"vip",
		"VirtualIPs":[{"Network":"app","Addr":"10.0.0.2/24"}],"Tasks":[{"Name":"t1"},{"Name":"t2","Draining":true}]}]`}})
	res := f.pier(t, "", "service", "ls")
	lines := strings.Split(strings.TrimSpace(res.out), "\n")
	if res.code != 0 || len(lines) != 2 || strings.Join(strings.Fields(lines[1]), " ") != "0123456789ab web vip app=10.0.0.2/24 * 1/2" {
		t.Fatalf("service ls:\n%s%s", res.out, res.err)
	}
}
