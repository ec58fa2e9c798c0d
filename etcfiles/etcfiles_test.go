package etcfiles

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHostsHasLocalhostOwnNamesAndExtras(t *testing.T) {
	got := string(Hosts(Config{
		Names:      []string{"web", "web", "abc123"},
		Addrs:      []netip.Addr{netip.MustParseAddr("172.18.0.2"), netip.MustParseAddr("fd00::2")},
		ExtraHosts: []HostEntry{{"db", netip.MustParseAddr("10.0.0.5")}},
	}))
	want := localhost + "10.0.0.5\tdb\n172.18.0.2\tweb abc123\nfd00::2\tweb abc123\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("hosts (-want +got):\n%s", diff)
	}
}

func TestResolvConfDropsLoopbackAndHonoursOverrides(t *testing.T) {
	host := ParseResolvConf([]byte("# c\nnameserver 127.0.0.53\nnameserver 192.0.2.53\nsearch example.org corp\noptions edns0\n"))
	got := string(ResolvConf(host, Config{}))
	want := "nameserver 192.0.2.53\nsearch example.org corp\noptions edns0\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("default resolv.conf (-want +got):\n%s", diff)
	}
	got = string(ResolvConf(host, Config{DNS: []netip.Addr{netip.MustParseAddr("198.51.100.1")},
		DNSSearch: []string{"x.test"}, DNSOptions: []string{"ndots:2"}}))
	want = "nameserver 198.51.100.1\nsearch x.test\noptions ndots:2\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("overridden resolv.conf (-want +got):\n%s", diff)
	}
}

func TestOnlyLoopbackUpstreamsFallBackToPublic(t *testing.T) {
	got := Upstreams(ParseResolvConf([]byte("nameserver 127.0.0.1\nnameserver ::1\n")))
	if len(got) != 2 || got[0].String() != "8.8.8.8" {
		t.Fatalf("upstreams = %v, want Docker's public fallbacks", got)
	}
}

func TestWriteCreatesThreeFiles(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "sb")
	if err := Write(dir, Parsed{}, Config{Hostname: "box"}); err != nil {
		t.Fatal(err)
	}
	_, _, hn := Paths(dir)
	b, err := os.ReadFile(hn)
	if err != nil || string(b) != "box\n" {
		t.Fatalf("hostname file = %q, %v", b, err)
	}
}

func TestEmbeddedDNSResolvConf(t *testing.T) {
	host := ParseResolvConf([]byte("nameserver 192.0.2.53\nsearch example.org\noptions edns0\n"))
	got := string(ResolvConf(host, Config{EmbeddedDNS: true}))
	want := "nameserver 127.0.0.11\nsearch example.org\noptions edns0 ndots:0\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("embedded resolv.conf (-want +got):\n%s", diff)
	}
	got = string(ResolvConf(host, Config{EmbeddedDNS: true, DNSOptions: []string{"ndots:3"}}))
	want = "nameserver 127.0.0.11\nsearch example.org\noptions ndots:3\n"
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("user ndots kept (-want +got):\n%s", diff)
	}
}

// TestRewriteKeepsInodeAndLength: a rewrite keeps the inode (bind mounts pin it) and
// leaves exactly the new content, also when it is shorter than the old.
func TestRewriteKeepsInodeAndLength(t *testing.T) {
	dir := t.TempDir()
	long := Config{Hostname: "h", Names: []string{"h", "web"}, ExtraHosts: []HostEntry{{Name: "a-very-long-name.example", Addr: netip.MustParseAddr("192.0.2.1")}}}
	short := Config{Hostname: "h", Names: []string{"h"}}
	if err := Write(dir, Parsed{}, long); err != nil {
		t.Fatal(err)
	}
	hosts, _, _ := Paths(dir)
	before, err := os.Stat(hosts)
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(dir, Parsed{}, short); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(hosts)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) {
		t.Error("hosts was replaced by another file: a bind mount of it would keep the old one")
	}
	if got, _ := os.ReadFile(hosts); string(got) != string(Hosts(short)) {
		t.Errorf("hosts after a shorter rewrite:\n%q\nwant\n%q", got, Hosts(short))
	}
}
