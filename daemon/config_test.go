package daemon

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/piernet/pier/ipam"
)

func TestParseArgs(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pierd.json")
	writeFile(t, file, `{"data-root":"/file/data","exec-root":"/file/exec","hosts":["unix:///file.sock"],
		"default-bridge":false,"default-address-pools":[{"base":"10.10.0.0/16","size":24}],"log-level":"debug"}`)
	pool := func(s string, n int) ipam.PredefinedPool {
		return ipam.PredefinedPool{Base: netip.MustParsePrefix(s), Size: n}
	}
	for _, tc := range []struct {
		name string
		args []string
		want Config
	}{
		{"defaults", nil, Defaults()},
		{"flags", []string{"--data-root", "/d", "--exec-root=/e", "-H", "unix:///a.sock", "--host", "unix:///b.sock",
			"--default-bridge=false", "--default-address-pool", "base=10.0.0.0/8,size=24",
			"--default-address-pool", "base=fd00::/48,size=64", "--log-level", "warn", "--sandbox-stop-timeout", "2"},
			Config{DataRoot: "/d", ExecRoot: "/e", Hosts: []string{"unix:///a.sock", "unix:///b.sock"},
				DefaultAddressPools: []ipam.PredefinedPool{pool("10.0.0.0/8", 24), pool("fd00::/48", 64)}, LogLevel: "warn", SandboxStopTimeout: 2}},
		{"file", []string{"--config", file},
			Config{DataRoot: "/file/data", ExecRoot: "/file/exec", Hosts: []string{"unix:///file.sock"},
				DefaultAddressPools: []ipam.PredefinedPool{pool("10.10.0.0/16", 24)}, LogLevel: "debug", SandboxStopTimeout: 5}},
		{"flags override file", []string{"--config", file, "--data-root", "/flag", "-H", "unix:///flag.sock", "--default-bridge"},
			Config{DataRoot: "/flag", ExecRoot: "/file/exec", Hosts: []string{"unix:///flag.sock"}, DefaultBridge: true,
				DefaultAddressPools: []ipam.PredefinedPool{pool("10.10.0.0/16", 24)}, LogLevel: "debug", SandboxStopTimeout: 5}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseArgs(tc.args, new(strings.Builder))
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmpopts.EquateComparable(netip.Prefix{})); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestParseArgsErrors(t *testing.T) {
	dir := t.TempDir()
	typo := filepath.Join(dir, "typo.json")
	writeFile(t, typo, `{"data_root":"/x"}`)
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-H", "tcp://0.0.0.0:2375"}, "refusing to serve the API on tcp://0.0.0.0:2375 without mutual TLS"},
		{[]string{"-H", "tcp://0.0.0.0:2376", "--tlsverify"}, "without mutual TLS"},
		{[]string{"-H", "http://x"}, `invalid API address "http://x"`},
		{[]string{"-H", "unix://"}, `invalid API address "unix://"`},
		{[]string{"--default-address-pool", "base=10.0.0.0/8"}, "both base and size are required"},
		{[]string{"--default-address-pool", "base=10.0.0.0/8,size=4"}, "size 4 must be between"},
		{[]string{"--sandbox-stop-timeout", "0"}, "sandbox-stop-timeout 0: want 1 or more seconds"},
		{[]string{"--log-level", "loud"}, `invalid log level "loud"`},
		{[]string{"--config", typo}, `unknown field "data_root"`},
		{[]string{"--config", filepath.Join(dir, "missing.json")}, "reading config file"},
		{[]string{"--no-such-flag"}, "flag provided but not defined"},
		{[]string{"extra"}, `unexpected argument "extra"`},
	} {
		_, err := ParseArgs(tc.args, new(strings.Builder))
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ParseArgs(%q) error %v, want %q", tc.args, err, tc.msg)
		}
	}
}

func TestHelp(t *testing.T) {
	var out strings.Builder
	if _, err := ParseArgs([]string{"--help"}, &out); err == nil || !strings.Contains(out.String(), "--data-root dir") {
		t.Errorf("--help: err %v, output:\n%s", err, out.String())
	}
}

func writeFile(t *testing.T, path, data string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
