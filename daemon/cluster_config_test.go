package daemon

import (
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/piernet/pier/errdefs"
)

// a well-formed token (52 base32 characters each side).
var goodToken = "PIER1-" + strings.Repeat("a", 52) + "-" + strings.Repeat("b", 52)

func TestClusterFlags(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "pierd.json")
	writeFile(t, file, `{"cluster-join":"etcd://192.0.2.1:2379","cluster-advertise":"eth0","node-name":"h2",
		"cluster-token":"`+goodToken+`","cluster-node-ttl":"2s","cluster-vxlan-port":8472}`)
	for _, tc := range []struct {
		name string
		args []string
		want ClusterConfig
	}{
		{"none", nil, ClusterConfig{}},
		{"init", []string{"--cluster-init", "--cluster-advertise", "192.0.2.1", "--node-name", "h1"},
			ClusterConfig{ClusterInit: true, ClusterAdvertise: "192.0.2.1", NodeName: "h1"}},
		{"join", []string{"--cluster-join", "etcd://192.0.2.1:2379", "--cluster-advertise", "192.0.2.2", "--cluster-token", goodToken},
			ClusterConfig{ClusterJoin: "etcd://192.0.2.1:2379", ClusterAdvertise: "192.0.2.2", ClusterToken: goodToken}},
		{"store", []string{"--cluster-store", "etcd://192.0.2.1:2379,etcd://[2001:db8::1]:2379", "--cluster-advertise", "eth0",
			"--cluster-store-cacert", "/ca", "--cluster-store-cert", "/c", "--cluster-store-key", "/k", "--cluster-node-ttl", "1500ms", "--cluster-vxlan-port", "4790"},
			ClusterConfig{ClusterStore: "etcd://192.0.2.1:2379,etcd://[2001:db8::1]:2379", ClusterAdvertise: "eth0",
				ClusterStoreCACert: "/ca", ClusterStoreCert: "/c", ClusterStoreKey: "/k", ClusterNodeTTL: Duration(1500 * time.Millisecond), ClusterVXLANPort: 4790}},
		{"file", []string{"--config", file},
			ClusterConfig{ClusterJoin: "etcd://192.0.2.1:2379", ClusterAdvertise: "eth0", NodeName: "h2", ClusterToken: goodToken,
				ClusterNodeTTL: Duration(2 * time.Second), ClusterVXLANPort: 8472}},
		{"flag over file", []string{"--config", file, "--node-name", "other"},
			ClusterConfig{ClusterJoin: "etcd://192.0.2.1:2379", ClusterAdvertise: "eth0", NodeName: "other", ClusterToken: goodToken,
				ClusterNodeTTL: Duration(2 * time.Second), ClusterVXLANPort: 8472}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseArgs(tc.args, new(strings.Builder))
			if err != nil {
				t.Fatal(err)
			}
			if got.ClusterConfig != tc.want {
				t.Errorf("cluster config\n got %+v\nwant %+v", got.ClusterConfig, tc.want)
			}
		})
	}
}

func TestClusterDefaults(t *testing.T) {
	var c ClusterConfig
	if c.Enabled() || c.NodeTTL() != 3*time.Second || c.VXLANPort() != 4789 {
		t.Fatalf("zero config: enabled %v ttl %v port %d", c.Enabled(), c.NodeTTL(), c.VXLANPort())
	}
	var out strings.Builder
	ParseArgs([]string{"--help"}, &out)
	for _, want := range []string{"--cluster-node-ttl duration", "(default 3s)", "--cluster-vxlan-port port", "(default 4789)", "--cluster-init"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("--help lacks %q:\n%s", want, out.String())
		}
	}
}

func TestClusterFlagErrors(t *testing.T) {
	dir := t.TempDir()
	badTTL := filepath.Join(dir, "ttl.json")
	writeFile(t, badTTL, `{"cluster-init":true,"cluster-advertise":"192.0.2.1","cluster-node-ttl":3}`)
	adv := []string{"--cluster-advertise", "192.0.2.2"}
	join := append([]string{"--cluster-join", "etcd://192.0.2.1:2379"}, adv...)
	with := func(base []string, extra ...string) []string { return append(append([]string(nil), base...), extra...) }
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"--cluster-init"}, "needs --cluster-advertise"},
		{with(adv, "--cluster-init", "--cluster-join", "etcd://192.0.2.1:2379"), "cannot be combined"},
		{with(adv, "--cluster-init", "--cluster-store", "etcd://192.0.2.1:2379"), "cannot be combined"},
		{with(join, "--cluster-store", "etcd://192.0.2.1:2379", "--cluster-token", goodToken), "exclude each other"},
		{join, "needs the cluster's join token"},
		{with(join, "--cluster-token", "SWMTKN-1-abc"), "malformed join token"},
		{with(join, "--cluster-token", "PIER1-"+strings.Repeat("a", 52)+"-"+strings.Repeat("1", 52)), "malformed join token"},
		{with(join, "--cluster-token", goodToken, "--cluster-token-file", "/t"), "not both"},
		{with(adv, "--cluster-join", "http://192.0.2.1:2379", "--cluster-token", goodToken), "want etcd://host:port"},
		{with(adv, "--cluster-join", "etcd://192.0.2.1", "--cluster-token", goodToken), "the port is required"},
		{with(adv, "--cluster-join", "etcd://192.0.2.1:0", "--cluster-token", goodToken), "between 1 and 65535"},
		{with(adv, "--cluster-join", "etcd://192.0.2.1:2379/path", "--cluster-token", goodToken), "without user, path or query"},
		{with(adv, "--cluster-store", "etcd://192.0.2.1:2379,"), "want etcd://host:port"},
		{with(adv, "--cluster-store", "etcd://a:1", "--cluster-store-cert", "/c"), "both --cluster-store-cert and --cluster-store-key"},
		{with(adv, "--cluster-init", "--cluster-store-cacert", "/ca"), "only used with --cluster-store"},
		{with(adv, "--cluster-init", "--cluster-token", goodToken), "only used with --cluster-join"},
		{with(adv, "--cluster-init", "--cluster-node-ttl", "1s"), "below etcd's minimum lease TTL of 1.5s"},
		{with(adv, "--cluster-init", "--cluster-node-ttl", "soon"), `invalid duration "soon"`},
		{with(adv, "--cluster-init", "--cluster-vxlan-port", "70000"), "between 1 and 65535"},
		{with(adv, "--cluster-init", "--node-name", "-bad"), `node name "-bad"`},
		{[]string{"--cluster-init", "--cluster-advertise", "0.0.0.0"}, "want a unicast address"},
		{[]string{"--cluster-init", "--cluster-advertise", "eth0/1"}, "want an IP address or an interface name"},
		{[]string{"--cluster-advertise", "192.0.2.1"}, "needs a cluster mode"},
		{[]string{"--cluster-node-ttl", "5s"}, "need a cluster mode"},
		{[]string{"--config", badTTL}, `want a duration string such as "3s"`},
	} {
		_, err := ParseArgs(tc.args, new(strings.Builder))
		if err == nil || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("ParseArgs(%q) error %v, want %q", tc.args, err, tc.msg)
		}
	}
}

func TestJoinToken(t *testing.T) {
	dir := t.TempDir()
	good, bad := filepath.Join(dir, "good"), filepath.Join(dir, "bad")
	writeFile(t, good, goodToken+"\n")
	writeFile(t, bad, "nope\n")
	if tok, err := (ClusterConfig{ClusterTokenFile: good}).JoinToken(); err != nil || tok != goodToken {
		t.Fatalf("token file: %q, %v", tok, err)
	}
	for _, c := range []ClusterConfig{{ClusterTokenFile: bad}, {ClusterTokenFile: filepath.Join(dir, "missing")}, {}} {
		if _, err := c.JoinToken(); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("JoinToken(%+v) = %v, want an invalid argument", c, err)
		}
	}
}

func TestAdvertiseAddr(t *testing.T) {
	if a, err := AdvertiseAddr("127.0.0.1"); err != nil || a != netip.MustParseAddr("127.0.0.1") {
		t.Fatalf("an address of this host: %v %v", a, err)
	}
	if _, err := AdvertiseAddr("192.0.2.7"); err == nil || !strings.Contains(err.Error(), "no interface of this host") {
		t.Fatalf("an address this host does not have: %v", err)
	}
	if _, err := AdvertiseAddr("nosuchif0"); !errdefs.Is(err, errdefs.KindNotFound) {
		t.Fatalf("missing interface: %v", err)
	}
	// lo has only loopback addresses: not something other nodes can reach.
	if _, err := AdvertiseAddr("lo"); err == nil || !strings.Contains(err.Error(), "no global unicast address") {
		t.Fatalf("lo: %v", err)
	}
	if _, err := AdvertiseAddr("0.0.0.0"); err == nil {
		t.Fatal("0.0.0.0 accepted")
	}
}
