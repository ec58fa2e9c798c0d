package options

import (
	"errors"
	"strings"
	"testing"

	"github.com/piernet/pier/errdefs"
)

func TestParsers(t *testing.T) {
	for _, tc := range []struct {
		name    string
		parse   func() (any, error)
		want    any
		wantErr string
	}{
		{"mtu", func() (any, error) { return ParseMTU("9000", MinMTU) }, 9000, ""},
		{"mtu at the minimum", func() (any, error) { return ParseMTU("68", MinMTU) }, 68, ""},
		{"mtu too small", func() (any, error) { return ParseMTU("67", MinMTU) }, nil, `"67" is not a valid MTU (68 to 65535)`},
		{"mtu below IPv6's", func() (any, error) { return ParseMTU("1279", MinMTUIPv6) }, nil, "(1280 to 65535)"},
		{"mtu too large", func() (any, error) { return ParseMTU("65536", MinMTU) }, nil, "not a valid MTU"},
		{"mtu not a number", func() (any, error) { return ParseMTU("1500b", MinMTU) }, nil, "option com.docker.network.driver.mtu:"},
		{"bool", func() (any, error) { return ParseBool("k", "false") }, false, ""},
		{"bool as 1", func() (any, error) { return ParseBool("k", "1") }, true, ""},
		{"bad bool", func() (any, error) { return ParseBool("k", "yes") }, nil, `option k: "yes" is not a boolean`},
		{"ifname", func() (any, error) { return "br0", CheckIfName("bridge name", "br0") }, "br0", ""},
		{"ifname too long", func() (any, error) { return nil, CheckIfName("bridge name", "sixteen-chars-xx") }, nil, `invalid bridge name "sixteen-chars-xx": 1 to 15`},
		{"ifname with slash", func() (any, error) { return nil, CheckIfName("parent interface name", "a/b") }, nil, "no '/'"},
		{"ifname dot", func() (any, error) { return nil, CheckIfName("x", ".") }, nil, "invalid x"},
		{"prefix", func() (any, error) { return ParseIfacePrefix("ens") }, "ens", ""},
		{"empty prefix", func() (any, error) { return ParseIfacePrefix("") }, "eth", ""},
		{"prefix ending in a digit", func() (any, error) { return ParseIfacePrefix("v1") }, nil, "not ending in a digit"},
		{"prefix too long", func() (any, error) { return ParseIfacePrefix("thirteen-char") }, nil, "1 to 12 characters"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.parse()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("got %v, %v; want %v", got, err, tc.want)
			}
		})
	}
}

func TestDecode(t *testing.T) {
	var seen []string
	err := Decode(map[string]string{"c": "3", "a": "1", "b": "2"}, func(k, v string) error {
		seen = append(seen, k+"="+v)
		if k == "b" {
			return errors.New("b is bad")
		}
		return nil
	})
	if got := strings.Join(seen, " "); got != "a=1 b=2" {
		t.Errorf("set calls %q, want in key order up to the first error", got)
	}
	if !errdefs.Is(err, errdefs.KindInvalidArgument) || err.Error() != "b is bad" {
		t.Errorf("err = %v, want InvalidArgument with the message kept", err)
	}
	err = Decode(map[string]string{"x": ""}, func(k, v string) error { return errdefs.NotImplemented("not yet") })
	if !errdefs.Is(err, errdefs.KindNotImplemented) {
		t.Errorf("err = %v, want its own kind kept", err)
	}
	err = Unknown("bridge", "nmae", "name", "mtu")
	if !errdefs.Is(err, errdefs.KindInvalidArgument) || err.Error() != `unknown bridge driver option "nmae" (valid options: name, mtu)` {
		t.Errorf("Unknown: %v", err)
	}
}

// FuzzParsers feeds one value to every parser: what they accept is within their
// documented limits, and what Decode refuses is an InvalidArgument.
func FuzzParsers(f *testing.F) {
	for _, s := range []string{"1500", "68", "0", "-1", "true", "eth", "ens", "", "a/b", "v1", "é"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if mtu, err := ParseMTU(s, MinMTU); err == nil && (mtu < MinMTU || mtu > MaxMTU) {
			t.Fatalf("ParseMTU(%q) = %d", s, mtu)
		}
		if p, err := ParseIfacePrefix(s); err == nil {
			if CheckIfName("name", p+"999") != nil {
				t.Fatalf("ParseIfacePrefix(%q) = %q: %q is not an interface name", s, p, p+"999")
			}
		}
		if err := CheckIfName("name", s); err == nil && (len(s) == 0 || len(s) > 15 || strings.ContainsAny(s, "/: ")) {
			t.Fatalf("CheckIfName accepted %q", s)
		}
		err := Decode(map[string]string{KeyMTU: s, KeyInternal: s}, func(k, v string) error {
			if k == KeyMTU {
				_, err := ParseMTU(v, MinMTU)
				return err
			}
			_, err := ParseBool(k, v)
			return err
		})
		if err != nil && !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Fatalf("Decode error of the wrong kind: %v", err)
		}
	})
}
