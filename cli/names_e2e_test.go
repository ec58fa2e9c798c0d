package cli_test

import (
	"strings"
	"testing"

	"github.com/piernet/pier/internal/nstest"
)

// TestNetworkNamesPierCLI: names Docker accepts work with pier network create,
// inspect and rm.
func TestNetworkNamesPierCLI(t *testing.T) {
	nstest.Require(t, "root")
	e := startEnv(t)
	for _, name := range []string{"test 01", "réseau-ü", "a/b", strings.Repeat("n", 129)} {
		id := e.mustPier("network", "create", name)
		if got := e.mustPier("network", "inspect", name, "-f", "{{.Name}} {{.Id}}"); got != name+" "+id {
			t.Errorf("inspect %q = %q", name, got)
		}
		if got := e.mustPier("network", "rm", name); got != name {
			t.Errorf("network rm %q = %q", name, got)
		}
	}
}
