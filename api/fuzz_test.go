package api

import (
	"github.com/piernet/pier/cnm"
	"testing"
	"time"

	"github.com/piernet/pier/errdefs"
)

// The decoders must never panic, and must reject with a user error (a kind) or
// return a spec whose addresses are valid.

func FuzzNetworkCreateBody(f *testing.F) {
	for _, s := range []string{`{"Name":"app"}`, `{"Name":"a","IPAM":{"Config":[{"Subnet":"10.1.0.0/16","Gateway":"10.1.0.1","IPRange":"10.1.1.0/24","AuxiliaryAddresses":{"a":"10.1.0.9"}}]}}`,
		`{"Name":"b","EnableIPv6":true,"IPAM":{"Config":[{"Subnet":"fd00::/64"}]},"Options":{"k":"v"},"Labels":{"l":""}}`, `[]`, `{"Name":null}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := decodeNetworkCreate(data)
		if err != nil {
			requireKind(t, err)
			return
		}
		if spec.Name == "" {
			t.Fatal("accepted a network without a name")
		}
		for _, p := range spec.IPAM {
			if p.Subnet.IsValid() && p.Subnet != p.Subnet.Masked() {
				t.Fatalf("subnet %s not canonical", p.Subnet)
			}
			if p.Gateway.IsValid() && p.Gateway.Is4In6() {
				t.Fatalf("gateway %s left IPv4-mapped", p.Gateway)
			}
		}
	})
}

func FuzzConnectBody(f *testing.F) {
	for _, s := range []string{`{"Container":"web"}`, `{"Container":"w","EndpointConfig":{"IPAMConfig":{"IPv4Address":"10.0.0.2","IPv6Address":"fd00::2"},"Aliases":["a"],"MacAddress":"02:42:ac:11:00:02"}}`, `{"Container":"w","Force":true}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := decodeConnect(data)
		spec := c.spec
		if err != nil {
			requireKind(t, err)
		} else if c.sandbox == "" || spec.Addr4.IsValid() && !spec.Addr4.Is4() || spec.Addr6.IsValid() && !spec.Addr6.Is6() || spec.MAC != nil && len(spec.MAC) != 6 {
			t.Fatalf("accepted %q as %+v", data, c)
		}
		if _, err := decodeDisconnect(data); err != nil {
			requireKind(t, err)
		}
	})
}

func FuzzSandboxCreateBody(f *testing.F) {
	for _, s := range []string{`{"Name":"web","Networks":[{"Network":"app","IPv4Address":"10.0.0.2","Aliases":["x"]}],"DNS":["1.2.3.4"],"ExtraHosts":["h:1.2.3.4"]}`,
		`{"Name":"h","HostNetwork":true}`, `{"ExtraHosts":["v6:[fd00::1]"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		plan, err := decodeSandboxCreate(data)
		if err != nil {
			requireKind(t, err)
			return
		}
		for _, h := range plan.spec.ExtraHosts {
			if h.Name == "" || !h.Addr.IsValid() {
				t.Fatalf("accepted extra host %+v", h)
			}
		}
		for _, c := range plan.conns {
			if c.network == "" {
				t.Fatal("accepted a connection without a network")
			}
		}
	})
}

func FuzzFilters(f *testing.F) {
	for _, s := range []string{`{"name":{"a":true}}`, `{"label":["k=v"],"dangling":["true"]}`, `{"type":["custom"]}`, `{"until":["24h"]}`} {
		f.Add(s)
	}
	now := time.Unix(1700000000, 0)
	f.Fuzz(func(t *testing.T, raw string) {
		if _, err := newNetworkFilter(raw); err != nil {
			requireKind(t, err)
		}
		if _, err := newPruneFilter(raw, now); err != nil {
			requireKind(t, err)
		}
	})
}

func requireKind(t *testing.T, err error) {
	t.Helper()
	if k := errdefs.KindOf(err); k != errdefs.KindInvalidArgument && k != errdefs.KindNotImplemented && k != errdefs.KindForbidden {
		t.Fatalf("error %q has kind %v; a bad request body must be a user error", err, k)
	}
}

func FuzzServiceCreateBody(f *testing.F) {
	for _, s := range []string{`{"Name":"web","Networks":["app"],"Ports":["80/tcp","53/udp"],"Sticky":"10m","StopGrace":"30s"}`,
		`{"Name":"db","Networks":["a","b"],"EndpointMode":"dnsrr"}`, `{"Ports":["x"]}`, `{"Sticky":"-1s"}`, `null`,
		`{"Name":"w","Networks":["o"],"Publish":["8080-8081:80-81/udp","mode=host,published=9,target=9"],"IngressSNAT":true}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		spec, err := decodeServiceCreate(data)
		if err != nil {
			requireKind(t, err)
			return
		}
		if spec.Sticky < 0 || spec.StopGrace < 0 {
			t.Fatalf("negative duration accepted: %+v", spec)
		}
		for _, p := range spec.Ports {
			if p.Port == 0 || (p.Proto != "tcp" && p.Proto != "udp") {
				t.Fatalf("invalid port accepted: %+v", p)
			}
		}
		checkPublished(t, spec.Publish)
	})
}

func checkPublished(t *testing.T, ports []cnm.PublishPort) {
	t.Helper()
	for _, p := range ports {
		if p.Published == 0 || p.Target == 0 || (p.Proto != "tcp" && p.Proto != "udp") ||
			(p.Mode != cnm.PublishIngress && p.Mode != cnm.PublishHost) {
			t.Fatalf("invalid published port accepted: %+v", p)
		}
	}
}

func FuzzServiceUpdateBody(f *testing.F) {
	for _, s := range []string{`{"PublishAdd":["8080:80"],"PublishRm":["9090","53/udp"]}`, `{"IngressSNAT":false}`, `{}`,
		`{"PublishRm":["mode=host,published=1,target=2"]}`, `{"PublishAdd":["0:0"]}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := decodeServiceUpdate(data)
		if err != nil {
			requireKind(t, err)
			return
		}
		checkPublished(t, u.PublishAdd)
		for _, p := range u.PublishRm {
			if p.Published == 0 || (p.Proto != "tcp" && p.Proto != "udp") {
				t.Fatalf("invalid port to remove accepted: %+v", p)
			}
		}
	})
}
