package firewall

import (
	"flag"
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/piernet/pier/internal/nstest"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden files")

// checkGolden compares got with testdata/name, or rewrites it with -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s mismatch (-want +got):\n%s", path, diff)
	}
}

const (
	ownerDefault  = "0000000000000000000000000000000000000000000000000000000000000001"
	ownerICCOff   = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
	ownerInternal = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
)

const (
	ownerWeb = "c0ffee0000000000000000000000000000000000000000000000000000000001"
	ownerDNS = "c0ffee0000000000000000000000000000000000000000000000000000000002"
)

// goldenState is the small state of the golden files: a default bridge with
// IPv4 and IPv6, an ICC-off bridge, and an internal bridge; a web container
// publishing 8080/tcp on all addresses of both families, and a DNS
// container publishing 53/udp on one host address per family and 5353/sctp
// on the ICC-off bridge, plus a loopback binding (not programmed).
func goldenState() State {
	return State{
		Bridges: []Bridge{
			{Name: "br-aaaaaaaaaaaa", Owner: ownerICCOff, Subnets4: nstest.Prefixes("172.18.0.0/16"), Masquerade: true},
			{Name: "br-bbbbbbbbbbbb", Owner: ownerInternal, Subnets4: nstest.Prefixes("172.19.0.0/16"), ICC: true, Masquerade: true, Internal: true},
			{Name: "pier0", Owner: ownerDefault, Subnets4: nstest.Prefixes("172.17.0.0/16"), Subnets6: nstest.Prefixes("fd00:17::/64"), ICC: true, Masquerade: true},
		},
		Ports: map[string][]PortBinding{
			ownerWeb: {
				pb("0.0.0.0", 8080, "tcp", "172.17.0.2", 80),
				pb("::", 8080, "tcp", "fd00:17::2", 80),
			},
			ownerDNS: {
				pb("198.51.100.1", 53, "udp", "172.18.0.3", 53),
				pb("2001:db8::1", 53, "udp", "fd00:17::3", 53),
				pb("0.0.0.0", 5353, "sctp", "172.18.0.3", 5353),
				pb("127.0.0.1", 9053, "udp", "172.18.0.3", 53),
			},
		},
	}
}

func pb(host string, hostPort uint16, proto, ctr string, ctrPort uint16) PortBinding {
	return PortBinding{HostIP: netip.MustParseAddr(host), HostPort: hostPort, Proto: proto,
		ContainerIP: netip.MustParseAddr(ctr), ContainerPort: ctrPort}
}
