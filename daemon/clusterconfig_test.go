package daemon

import (
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func TestClusterFlags(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pierd.json")
	writeFile(t, file, `{"cluster-store":["etcd://192.0.2.254:2379"],"cluster-advertise":"192.0.2.1","node-name":"h1","cluster-node-ttl":"5s"}`)
	for _, tc := range []struct {
		name string
		args []string
		want ClusterConfig
	}{
		{"flags", []string{"--cluster-store", "etcd://192.0.2.254:2379,192.0.2.253:2379", "--cluster-advertise", "eth0",
			"--node-name", "h1", "--cluster-node-ttl", "2s", "--cluster-vxlan-port", "8472"},
			ClusterConfig{Store: []string{"etcd://192.0.2.254:2379", "etcd://192.0.2.253:2379"}, Advertise: "eth0", NodeName: "h1",
				NodeTTL: Duration(2 * time.Second), VXLANPort: 8472}},
		{"file", []string{"--config", file},
			ClusterConfig{Store: []string{"etcd://192.0.2.254:2379"}, Advertise: "192.0.2.1", NodeName: "h1", NodeTTL: Duration(5 * time.Second)}},
		{"flag over file", []string{"--config", file, "--node-name", "h9"},
			ClusterConfig{Store: []string{"etcd://192.0.2.254:2379"}, Advertise: "192.0.2.1", NodeName: "h9", NodeTTL: Duration(5 * time.Second)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := ParseArgs(tc.args, io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, cfg.ClusterConfig); diff != "" {
				t.Fatalf("(-want +got):\n%s", diff)
			}
		})
	}
}

func TestClusterFlagErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--cluster-store", "http://192.0.2.1:2379", "--cluster-advertise", "192.0.2.1"}, "want etcd://host:port"},
		{[]string{"--cluster-store", "etcd://192.0.2.1", "--cluster-advertise", "192.0.2.1"}, "port is required"},
		{[]string{"--cluster-store", "etcd://192.0.2.1:99999", "--cluster-advertise", "192.0.2.1"}, "bad port"},
		{[]string{"--cluster-store", "etcd://192.0.2.1:2379"}, "needs --cluster-advertise"},
		{[]string{"--cluster-advertise", "192.0.2.1"}, "without --cluster-store"},
		{[]string{"--cluster-store", "etcd://192.0.2.1:2379", "--cluster-advertise", "x", "--cluster-node-ttl", "1s"}, "etcd's minimum lease"},
		{[]string{"--cluster-store", "etcd://192.0.2.1:2379", "--cluster-advertise", "x", "--cluster-node-ttl", "soon"}, "invalid duration"},
		{[]string{"--cluster-store", "etcd://192.0.2.1:2379", "--cluster-advertise", "x", "--node-name", "a b"}, "invalid --node-name"},
		{[]string{"--cluster-store", "etcd://192.0.2.1:2379", "--cluster-advertise", "x", "--cluster-store-cert", "c"}, "go together"},
	} {
		_, err := ParseArgs(tc.args, io.Discard)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want an error containing %q", tc.args, err, tc.want)
		}
	}
}

func TestAdvertiseAddr(t *testing.T) {
	if a, err := AdvertiseAddr("lo"); err == nil {
		t.Errorf("lo has no global address, got %v", a)
	}
	for _, bad := range []string{"0.0.0.0", "203.0.113.77", "no-such-if"} {
		if _, err := AdvertiseAddr(bad); err == nil {
			t.Errorf("--cluster-advertise %s accepted", bad)
		}
	}
}
