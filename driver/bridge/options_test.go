package bridge

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/driver/options"
	"github.com/piernet/pier/errdefs"
)

func TestParseOptions(t *testing.T) {
	id := "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	tests := []struct {
		name     string
		internal bool
		opts     map[string]string
		want     Config
		wantErr  string
	}{
		{name: "defaults", want: Config{BridgeName: "br-0123456789ab", ICC: true, Masquerade: true,
			HostBindingIPv4: netip.IPv4Unspecified(), IfacePrefix: "eth"}},
		{name: "docker keys", opts: map[string]string{
			OptBridgeName: "mybr", OptEnableICC: "false", OptEnableIPMasq: "false",
			OptHostBindingIPv4: "192.0.2.10", options.KeyMTU: "9000", options.KeyInternal: "true", options.KeyIfacePrefix: "ens",
		}, want: Config{BridgeName: "mybr", HostBindingIPv4: netip.MustParseAddr("192.0.2.10"), MTU: 9000, Internal: true, IfacePrefix: "ens"}},
		{name: "--internal flag", internal: true, want: Config{BridgeName: "br-0123456789ab", ICC: true,
			Masquerade: true, HostBindingIPv4: netip.IPv4Unspecified(), Internal: true, IfacePrefix: "eth"}},
		{name: "bad mtu", opts: map[string]string{options.KeyMTU: "20"}, wantErr: "not a valid MTU"},
		{name: "bad prefix", opts: map[string]string{options.KeyIfacePrefix: "e/th"}, wantErr: "not a valid interface prefix"},
		{name: "bad bool", opts: map[string]string{OptEnableICC: "yes please"}, wantErr: "not a boolean"},
		{name: "long name", opts: map[string]string{OptBridgeName: "a-very-long-bridge-name"}, wantErr: "invalid bridge name"},
		{name: "v6 host ip", opts: map[string]string{OptHostBindingIPv4: "::1"}, wantErr: "not an IPv4 address"},
		{name: "unknown key", opts: map[string]string{"com.docker.network.bridge.nmae": "x"}, wantErr: "unknown bridge driver option"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseOptions(id, tc.internal, tc.opts)
			if tc.wantErr != "" {
				if !errdefs.Is(err, errdefs.KindInvalidArgument) || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want InvalidArgument containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("config (-want +got):\n%s", diff)
			}
		})
	}
}

func TestDeriveMAC(t *testing.T) {
	if got := DeriveMAC(netip.MustParseAddr("172.17.0.2"), "x").String(); got != "02:42:ac:11:00:02" {
		t.Errorf("MAC from IPv4 = %s, want Docker's 02:42:ac:11:00:02", got)
	}
	a, b := DeriveMAC(netip.Addr{}, "ep-a"), DeriveMAC(netip.Addr{}, "ep-b")
	if a.String() == b.String() || a[0] != 0x02 {
		t.Errorf("IPv6-only MACs %s %s: want distinct, locally administered", a, b)
	}
}

func FuzzParseOptions(f *testing.F) {
	f.Add(options.KeyMTU, "1500")
	f.Add(OptBridgeName, "br0")
	f.Add(OptHostBindingIPv4, "10.0.0.1")
	f.Fuzz(func(t *testing.T, k, v string) {
		cfg, err := ParseOptions("abc", false, map[string]string{k: v})
		if err != nil {
			if !errdefs.Is(err, errdefs.KindInvalidArgument) {
				t.Fatalf("error of wrong kind: %v", err)
			}
			return
		}
		if cfg.BridgeName == "" || len(cfg.BridgeName) > 15 || cfg.MTU != 0 && (cfg.MTU < 68 || cfg.MTU > 65535) {
			t.Fatalf("accepted invalid config %+v from %q=%q", cfg, k, v)
		}
	})
}
