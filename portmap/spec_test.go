package portmap

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/piernet/pier/errdefs"
)

var equateAddr = cmpopts.EquateComparable(netip.Addr{})

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestParseSpec(t *testing.T) {
	one := func(hostIP string, h, hEnd, c uint16, p Proto) Spec {
		s := Spec{HostPort: h, HostPortEnd: hEnd, ContainerPort: c, ContainerPortEnd: c, Proto: p}
		if hostIP != "" {
			s.HostIP = ip(hostIP)
		}
		return s
	}
	for _, tc := range []struct {
		in   string
		want []Spec
	}{
		{"80", []Spec{one("", 0, 0, 80, TCP)}},
		{"8080:80", []Spec{one("", 8080, 8080, 80, TCP)}},
		{"8080:80/udp", []Spec{one("", 8080, 8080, 80, UDP)}},
		{"8080:80/SCTP", []Spec{one("", 8080, 8080, 80, SCTP)}},
		{"0:80", []Spec{one("", 0, 0, 80, TCP)}},
		{":80", []Spec{one("", 0, 0, 80, TCP)}},
		{"127.0.0.1:8080:80", []Spec{one("127.0.0.1", 8080, 8080, 80, TCP)}},
		{"127.0.0.1::80", []Spec{one("127.0.0.1", 0, 0, 80, TCP)}},
		{"[::1]:8080:80", []Spec{one("::1", 8080, 8080, 80, TCP)}},
		{"[::]::53/udp", []Spec{one("::", 0, 0, 53, UDP)}},
		{"[2001:db8::1]:443:8443", []Spec{one("2001:db8::1", 443, 443, 8443, TCP)}},
		{"::1:8080:80", []Spec{one("::1", 8080, 8080, 80, TCP)}}, // Docker accepts it unbracketed
		{"[::ffff:192.0.2.1]:80:80", []Spec{one("192.0.2.1", 80, 80, 80, TCP)}},
		{"8000-8002:80-82", []Spec{one("", 8000, 8000, 80, TCP), one("", 8001, 8001, 81, TCP), one("", 8002, 8002, 82, TCP)}},
		{"80-81/udp", []Spec{one("", 0, 0, 80, UDP), one("", 0, 0, 81, UDP)}},
		{"8000-8010:80", []Spec{one("", 8000, 8010, 80, TCP)}},
		{"192.0.2.1:8000-8000:80-80", []Spec{one("192.0.2.1", 8000, 8000, 80, TCP)}},
		{"65535:65535", []Spec{one("", 65535, 65535, 65535, TCP)}},
	} {
		got, err := ParseSpec(tc.in)
		if err != nil {
			t.Errorf("ParseSpec(%q): %v", tc.in, err)
			continue
		}
		if diff := cmp.Diff(tc.want, got, equateAddr); diff != "" {
			t.Errorf("ParseSpec(%q) (-want +got):\n%s", tc.in, diff)
		}
	}
}

func TestParseSpecErrors(t *testing.T) {
	for _, tc := range []struct{ in, says string }{
		{"", "not a port number"},
		{"abc", `"abc" is not a port number`},
		{"0", `"0" is not a port number`},
		{"65536", "not a port number"},
		{"+80", "not a port number"},
		{"-1", "not a port number"},
		{"80/icmp", `unknown protocol "icmp"`},
		{"80/", `unknown protocol ""`},
		{"82-80", "ends before it starts"},
		{"8080:80-81", "differ in length"},
		{"8000-8001:80-82", "differ in length"},
		{"8080:", "container port"},
		{"1.2.3:80:80", `host IP "1.2.3"`},
		{"1.2.3.4:8080:80:90", "put an IPv6 address in brackets"},
		{"[::1:80", "[IPv6 address]"},
		{"[::1]80", "[IPv6 address]"},
		{"[::1]:80", "[IPv6 address]"},
		{"[fe80::1%eth0]:80:80", "without zone"},
		{"[::1]:8080:80:90", "[IPv6 address]"},
	} {
		_, err := ParseSpec(tc.in)
		if err == nil {
			t.Errorf("ParseSpec(%q) succeeded", tc.in)
			continue
		}
		if !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("ParseSpec(%q): kind %v, want InvalidArgument", tc.in, errdefs.KindOf(err))
		}
		if msg := err.Error(); !strings.Contains(msg, tc.says) || !strings.Contains(msg, syntax) {
			t.Errorf("ParseSpec(%q) = %q; want it to say %q and show the syntax", tc.in, msg, tc.says)
		}
	}
}

func TestSpecString(t *testing.T) {
	for _, in := range []string{"80/tcp", "8080:80/udp", "127.0.0.1::80/tcp", "[::1]:8080:80/tcp", "8000-8010:80/sctp"} {
		specs, err := ParseSpec(in)
		if err != nil {
			t.Fatal(err)
		}
		if got := specs[0].String(); got != in {
			t.Errorf("String() = %q, want %q", got, in)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	for _, s := range []string{"80", "8080:80/udp", "[::1]:8080:80", "127.0.0.1::80", "8000-8002:80-82", "8000-8010:80/sctp", "::1:1:1", "[", "1-2-3"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		specs, err := ParseSpec(s)
		if err != nil {
			if !errdefs.Is(err, errdefs.KindInvalidArgument) {
				t.Fatalf("ParseSpec(%q): error of kind %v", s, errdefs.KindOf(err))
			}
			return
		}
		if len(specs) == 0 {
			t.Fatalf("ParseSpec(%q): no specs and no error", s)
		}
		if len(specs) > 16 { // a container range: check its ends
			specs = append(specs[:8], specs[len(specs)-8:]...)
		}
		for _, sp := range specs {
			if err := validSpec(sp); err != nil {
				t.Fatalf("ParseSpec(%q) returned an invalid spec %+v: %v", s, sp, err)
			}
			if sp.ContainerPortEnd != sp.ContainerPort {
				t.Fatalf("ParseSpec(%q) did not expand %+v", s, sp)
			}
			again, err := ParseSpec(sp.String())
			if err != nil || len(again) != 1 || again[0] != sp {
				t.Fatalf("round trip of %+v via %q: %+v, %v", sp, sp.String(), again, err)
			}
		}
	})
}
