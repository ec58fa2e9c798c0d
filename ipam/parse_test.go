package ipam_test

import (
	"net/netip"
	"testing"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/ipam"
)

func TestParsePrefix(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.Prefix
		wantErr string
	}{
		{in: "10.1.0.0/16", want: pfx("10.1.0.0/16")},
		{in: "10.1.2.3/16", want: pfx("10.1.0.0/16")},
		{in: " 10.1.2.3/32 ", want: pfx("10.1.2.3/32")},
		{in: "fd00:1::5/64", want: pfx("fd00:1::/64")},
		{in: "::ffff:10.1.2.3/120", want: pfx("10.1.2.0/24")},
		{in: "0.0.0.0/0", want: pfx("0.0.0.0/0")},
		{in: "10.1.2.3", wantErr: `invalid CIDR prefix "10.1.2.3": missing prefix length; want an address and a prefix length such as 10.1.0.0/16 or fd00:1::/64`},
		{in: "10.1.2.3/33", wantErr: `invalid CIDR prefix "10.1.2.3/33": bad prefix length "33"; want an address and a prefix length such as 10.1.0.0/16 or fd00:1::/64`},
		{in: "10.1.2/24", wantErr: `invalid CIDR prefix "10.1.2/24": "10.1.2" is not an IP address; want an address and a prefix length such as 10.1.0.0/16 or fd00:1::/64`},
		{in: "fe80::1%eth0/64", wantErr: `invalid CIDR prefix "fe80::1%eth0/64": zones are not allowed; want an address and a prefix length such as 10.1.0.0/16 or fd00:1::/64`},
		{in: "", wantErr: `invalid CIDR prefix "": missing prefix length; want an address and a prefix length such as 10.1.0.0/16 or fd00:1::/64`},
		{in: "::ffff:10.1.2.3/90", wantErr: `invalid CIDR prefix ::ffff:10.1.2.3/90: an IPv4-mapped prefix must be /96 or longer`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ipam.ParsePrefix(tt.in)
			checkParsed(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestParseAddr(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.Addr
		wantErr string
	}{
		{in: "10.1.2.3", want: addr("10.1.2.3")},
		{in: "::ffff:10.1.2.3", want: addr("10.1.2.3")},
		{in: "fd00::1", want: addr("fd00::1")},
		{in: "10.1.2.3/24", wantErr: `invalid IP address "10.1.2.3/24": want an address such as 10.1.2.3 or fd00::1`},
		{in: "fe80::1%eth0", wantErr: `invalid IP address "fe80::1%eth0": zones (%name) are not allowed`},
		{in: "", wantErr: `invalid IP address "": want an address such as 10.1.2.3 or fd00::1`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ipam.ParseAddr(tt.in)
			checkParsed(t, got, err, tt.want, tt.wantErr)
		})
	}
}

func TestParsePredefinedPool(t *testing.T) {
	const hint = "; want base=CIDR,size=N such as base=10.10.0.0/16,size=24"
	tests := []struct {
		in      string
		want    ipam.PredefinedPool
		wantErr string
	}{
		{in: "base=10.10.0.0/16,size=24", want: ipam.PredefinedPool{Base: pfx("10.10.0.0/16"), Size: 24}},
		{in: "Size=24, BASE=10.10.1.1/16", want: ipam.PredefinedPool{Base: pfx("10.10.0.0/16"), Size: 24}},
		{in: "base=fd00:1::/48,size=64", want: ipam.PredefinedPool{Base: pfx("fd00:1::/48"), Size: 64}},
		{in: "base=10.0.0.0/8,size=8", want: ipam.PredefinedPool{Base: pfx("10.0.0.0/8"), Size: 8}},
		{in: "base=10.10.0.0/16", wantErr: `invalid address pool "base=10.10.0.0/16": both base and size are required` + hint},
		{in: "", wantErr: `invalid address pool "": field "" is not a key=value pair` + hint},
		{in: "base=10.10.0.0/16,size=24,x=1", wantErr: `invalid address pool "base=10.10.0.0/16,size=24,x=1": unknown key "x"` + hint},
		{in: "base=10.10.0.0/16,size=24,size=25", wantErr: `invalid address pool "base=10.10.0.0/16,size=24,size=25": size given twice` + hint},
		{in: "base=10.10.0.0,size=24", wantErr: `invalid address pool "base=10.10.0.0,size=24": base "10.10.0.0" is not a CIDR prefix` + hint},
		{in: "base=10.10.0.0/16,size=abc", wantErr: `invalid address pool "base=10.10.0.0/16,size=abc": size "abc" is not a number` + hint},
		{in: "base=10.10.0.0/16,size=8", wantErr: `invalid address pool "base=10.10.0.0/16,size=8": size 8 must be between the base prefix length 16 and 32` + hint},
		{in: "base=10.10.0.0/16,size=33", wantErr: `invalid address pool "base=10.10.0.0/16,size=33": size 33 must be between the base prefix length 16 and 32` + hint},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ipam.ParsePredefinedPool(tt.in)
			checkParsed(t, got, err, tt.want, tt.wantErr)
		})
	}
}

// checkParsed checks a parser's result: want, or an InvalidArgument wantErr.
func checkParsed[T comparable](t *testing.T, got T, err error, want T, wantErr string) {
	t.Helper()
	if wantErr != "" {
		checkErr(t, err, errdefs.KindInvalidArgument, wantErr)
		return
	}
	if err != nil || got != want {
		t.Errorf("got %v, %v; want %v", got, err, want)
	}
}
