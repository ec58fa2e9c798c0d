package api

import (
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/etcfiles"
)

var equateNetip = cmpopts.EquateComparable(netip.Prefix{}, netip.Addr{})

func TestDecodeNetworkCreate(t *testing.T) {
	got, err := decodeNetworkCreate([]byte(`{"Name":"app","Driver":"bridge","EnableIPv6":true,"Attachable":true,
		"IPAM":{"Driver":"default","Options":{"o":"v"},"Config":[{"Subnet":"10.1.0.0/16","IPRange":"10.1.4.0/24",
		"Gateway":"10.1.0.1/16","AuxiliaryAddresses":{"r":"10.1.0.2"}},{"Subnet":"fd00:1::/64"}]},
		"Options":{"k":"v"},"Labels":{"l":"m"},"Ingress":false,"ConfigOnly":false,"ConfigFrom":{"Network":""}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := cnm.NetworkSpec{Name: "app", Driver: "bridge", EnableIPv6: true, Attachable: true,
		Options: map[string]string{"k": "v"}, Labels: map[string]string{"l": "m"},
		IPAMDriver: "default", IPAMOptions: map[string]string{"o": "v"},
		IPAM: []cnm.PoolSpec{
			{Subnet: netip.MustParsePrefix("10.1.0.0/16"), IPRange: netip.MustParsePrefix("10.1.4.0/24"),
				Gateway: netip.MustParseAddr("10.1.0.1"), Aux: map[string]netip.Addr{"r": netip.MustParseAddr("10.1.0.2")}},
			{Subnet: netip.MustParsePrefix("fd00:1::/64")},
		}}
	if diff := cmp.Diff(want, got, equateNetip); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
}

func TestDecodeErrorsAreKinded(t *testing.T) {
	for _, tc := range []struct {
		body string
		kind errdefs.Kind
	}{
		{`[`, errdefs.KindInvalidArgument},
		{`{"Name":"x","IPAM":{"Config":[{"Subnet":"x"}]}}`, errdefs.KindInvalidArgument},
		{`{"Name":"x","IPAM":{"Config":[{"IPRange":"10.0.0.0/33"}]}}`, errdefs.KindInvalidArgument},
		{`{"Name":"x","IPAM":{"Config":[{"AuxiliaryAddresses":{"a":"b"}}]}}`, errdefs.KindInvalidArgument},
		{`{"Name":"x","Ingress":true}`, errdefs.KindNotImplemented},
		{`{"Name":"x","ConfigFrom":{"Network":"y"}}`, errdefs.KindNotImplemented},
		{`{"Name":"none"}`, errdefs.KindForbidden},
	} {
		_, err := decodeNetworkCreate([]byte(tc.body))
		if errdefs.KindOf(err) != tc.kind {
			t.Errorf("%s: error %v of kind %v, want %v", tc.body, err, errdefs.KindOf(err), tc.kind)
		}
	}
}

func TestDecodeConnect(t *testing.T) {
	got, err := decodeConnect([]byte(`{"Container":"web","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.0.0.5",
		"IPv6Address":"fd00::5"},"Aliases":["a"],"MacAddress":"02:42:ac:11:00:09","GwPriority":3,"DNSNames":["x"]}}`))
	if err != nil {
		t.Fatal(err)
	}
	want := cnm.EndpointSpec{Addr4: netip.MustParseAddr("10.0.0.5"), Addr6: netip.MustParseAddr("fd00::5"),
		Aliases: []string{"a"}, MAC: net.HardwareAddr(mustMAC("02:42:ac:11:00:09")), Priority: 3}
	if got.sandbox != "web" {
		t.Errorf("sandbox %q", got.sandbox)
	}
	if diff := cmp.Diff(want, got.spec, equateNetip, cmpopts.IgnoreUnexported(cnm.EndpointSpec{})); diff != "" {
		t.Errorf("spec (-want +got):\n%s", diff)
	}
}

func TestParseExtraHost(t *testing.T) {
	for in, want := range map[string]etcfiles.HostEntry{
		"db:10.0.0.7":           {Name: "db", Addr: netip.MustParseAddr("10.0.0.7")},
		"db=10.0.0.7":           {Name: "db", Addr: netip.MustParseAddr("10.0.0.7")},
		"v6:fd00::1":            {Name: "v6", Addr: netip.MustParseAddr("fd00::1")},
		"v6:[fd00::1]":          {Name: "v6", Addr: netip.MustParseAddr("fd00::1")},
		"mapped:::ffff:1.2.3.4": {Name: "mapped", Addr: netip.MustParseAddr("1.2.3.4")},
	} {
		got, err := parseExtraHost(in)
		if err != nil || got != want {
			t.Errorf("parseExtraHost(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "db", ":1.2.3.4", "db:host-gateway", "a b:1.2.3.4"} {
		if _, err := parseExtraHost(in); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("parseExtraHost(%q) error %v, want InvalidArgument", in, err)
		}
	}
}

func TestParseFilters(t *testing.T) {
	for _, tc := range []struct {
		raw  string
		want filters
		err  string
	}{
		{``, filters{}, ""},
		{`{"name":{"a":true,"b":true,"c":false}}`, filters{"name": {"a", "b"}}, ""},
		{`{"name":["a"],"label":["k=v"]}`, filters{"name": {"a"}, "label": {"k=v"}}, ""},
		{`{"nope":["a"]}`, nil, "invalid filter 'nope'"},
		{`name=a`, nil, "invalid filters"},
	} {
		got, err := parseFilters(tc.raw, "name", "label")
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) || !errdefs.Is(err, errdefs.KindInvalidArgument) {
				t.Errorf("parseFilters(%s) error %v, want %q", tc.raw, err, tc.err)
			}
			continue
		}
		if diff := cmp.Diff(tc.want, got); err != nil || diff != "" {
			t.Errorf("parseFilters(%s): %v (-want +got):\n%s", tc.raw, err, diff)
		}
	}
}

func TestParseUntil(t *testing.T) {
	now := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	for in, want := range map[string]time.Time{
		"2h":                   now.Add(-2 * time.Hour),
		"2025-05-01T10:00:00Z": time.Date(2025, 5, 1, 10, 0, 0, 0, time.UTC),
		"2025-05-01":           time.Date(2025, 5, 1, 0, 0, 0, 0, time.UTC),
		"1700000000":           time.Unix(1700000000, 0),
		"1700000000.5":         time.Unix(1700000000, 5e8),
	} {
		got, err := parseUntil(in, now)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseUntil(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseUntil("tomorrow", now); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("parseUntil(tomorrow) error %v", err)
	}
}

func TestStatusOf(t *testing.T) {
	for err, want := range map[error]int{
		errdefs.NotFound("x"): 404, errdefs.InvalidArgument("x"): 400, errdefs.Conflict("x"): 409,
		errdefs.Forbidden("x"): 403, errdefs.Unavailable("x"): 503, errdefs.NotImplemented("x"): 501,
		errdefs.Internal("x"): 500, errors.New("plain"): 500,
	} {
		if got := statusOf(err); got != want {
			t.Errorf("statusOf(%v) = %d, want %d", err, got, want)
		}
	}
}

func TestCompareVersions(t *testing.T) {
	for _, tc := range []struct {
		a, b string
		want int
	}{{"1.41", "1.5", 1}, {"1.24", "1.24", 0}, {"1.9", "1.24", -1}, {"2", "1.50", 1}} {
		if got := compareVersions(tc.a, tc.b); got != tc.want {
			t.Errorf("compareVersions(%s, %s) = %d, want %d", tc.a, tc.b, got, tc.want)
		}
	}
}
