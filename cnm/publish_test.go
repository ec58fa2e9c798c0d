package cnm

import (
	"slices"
	"strings"
	"testing"
)

func TestParsePublish(t *testing.T) {
	ing := func(pub, target uint16, proto string) PublishPort {
		return PublishPort{Mode: PublishIngress, Proto: proto, Published: pub, Target: target}
	}
	for _, tc := range []struct {
		in   string
		want []PublishPort
		err  string
	}{
		{in: "8080:80", want: []PublishPort{ing(8080, 80, "tcp")}},
		{in: "8080:80/udp", want: []PublishPort{ing(8080, 80, "udp")}},
		{in: "8080-8081:80-81", want: []PublishPort{ing(8080, 80, "tcp"), ing(8081, 81, "tcp")}},
		{in: "mode=host,published=8080,target=80,protocol=udp", want: []PublishPort{{Mode: PublishHost, Proto: "udp", Published: 8080, Target: 80}}},
		{in: "published=9000,target=90", want: []PublishPort{ing(9000, 90, "tcp")}},
		{in: "80", err: "give the published port"},
		{in: "127.0.0.1:8080:80", err: "no host IP"},
		{in: "8080-8081:80", err: "target range"},
		{in: "8080:80/sctp", err: "not supported"},
		{in: "mode=bridge,published=1,target=2", err: "use ingress or host"},
		{in: "published=8080", err: "target is required"},
		{in: "target=80", err: "published is required"},
		{in: "published=x,target=80", err: "not a number"},
		{in: "published=8080,target=80,colour=red", err: "unknown key"},
	} {
		got, err := ParsePublish(tc.in)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("ParsePublish(%q) = %v, %v; want an error with %q", tc.in, got, err, tc.err)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ParsePublish(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		for _, p := range got {
			if back, err := ParsePublish(p.String()); err != nil || !slices.Equal(back, []PublishPort{p}) {
				t.Errorf("%v does not parse back: %v, %v", p, back, err)
			}
		}
	}
}
