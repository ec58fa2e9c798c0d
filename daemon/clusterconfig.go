package daemon

import (
	"flag"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/piernet/pier/cluster"
	"github.com/piernet/pier/errdefs"
)

// ClusterConfig are pierd's cluster settings; all zero = single-host pierd.
type ClusterConfig struct {
	// Store lists the etcd endpoints of an existing cluster store (etcd://host:port).
	Store []string `json:"cluster-store,omitempty"`
	// StoreCACert, StoreCert, StoreKey are TLS files for the store (all optional).
	StoreCACert string `json:"cluster-store-cacert,omitempty"`
	StoreCert   string `json:"cluster-store-cert,omitempty"`
	StoreKey    string `json:"cluster-store-key,omitempty"`
	// Advertise is this node's underlay address, or an interface holding it.
	Advertise string `json:"cluster-advertise,omitempty"`
	// NodeName names this node in the cluster (default: the hostname).
	NodeName string `json:"node-name,omitempty"`
	// NodeTTL is the node lease's time to live (default 3s, at least 1.5s).
	NodeTTL Duration `json:"cluster-node-ttl,omitempty"`
	// VXLANPort is the overlays' UDP port, the same on every node (default 4789).
	VXLANPort int `json:"cluster-vxlan-port,omitempty"`
}

// Duration is a time.Duration written as "3s" in the config file.
type Duration time.Duration

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return fmt.Errorf("invalid duration %q", b)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(time.Duration(d).String()), nil }

// Enabled reports whether pierd joins a cluster.
func (c ClusterConfig) Enabled() bool { return len(c.Store) > 0 }

// TTL is the node lease TTL with its default.
func (c ClusterConfig) TTL() time.Duration {
	if c.NodeTTL == 0 {
		return cluster.DefaultTTL
	}
	return time.Duration(c.NodeTTL)
}

func (c *ClusterConfig) register(fs *flag.FlagSet) {
	fs.Func("cluster-store", "join the cluster whose state is in etcd at `etcd://host:port[,host:port...]`", func(s string) error {
		c.Store = nil
		for _, e := range strings.Split(strings.TrimPrefix(s, "etcd://"), ",") {
			c.Store = append(c.Store, "etcd://"+strings.TrimPrefix(e, "etcd://"))
		}
		return nil
	})
	fs.StringVar(&c.StoreCACert, "cluster-store-cacert", "", "CA `file` the cluster store's certificate is signed by")
	fs.StringVar(&c.StoreCert, "cluster-store-cert", "", "client certificate `file` for the cluster store")
	fs.StringVar(&c.StoreKey, "cluster-store-key", "", "client key `file` for the cluster store")
	fs.StringVar(&c.Advertise, "cluster-advertise", "", "this node's underlay `address` (IP or interface name), reachable from the other nodes")
	fs.StringVar(&c.NodeName, "node-name", "", "this node's `name` in the cluster (default: the hostname)")
	fs.Func("cluster-node-ttl", "node lease `duration`: a node that stops renewing it is down after this long (default 3s)", func(s string) error {
		return c.NodeTTL.UnmarshalText([]byte(s))
	})
	fs.IntVar(&c.VXLANPort, "cluster-vxlan-port", 0, "UDP `port` of the overlays' VXLAN traffic, the same on every node (default 4789)")
}

func (c *ClusterConfig) apply(name string, dst *ClusterConfig) {
	switch name {
	case "cluster-store":
		dst.Store = c.Store
	case "cluster-store-cacert":
		dst.StoreCACert = c.StoreCACert
	case "cluster-store-cert":
		dst.StoreCert = c.StoreCert
	case "cluster-store-key":
		dst.StoreKey = c.StoreKey
	case "cluster-advertise":
		dst.Advertise = c.Advertise
	case "node-name":
		dst.NodeName = c.NodeName
	case "cluster-node-ttl":
		dst.NodeTTL = c.NodeTTL
	case "cluster-vxlan-port":
		dst.VXLANPort = c.VXLANPort
	}
}

// Validate checks the cluster settings (pure: nothing is resolved or dialled).
func (c ClusterConfig) Validate() error {
	if !c.Enabled() {
		if c.Advertise != "" || c.NodeName != "" || c.NodeTTL != 0 || c.VXLANPort != 0 || c.StoreCACert+c.StoreCert+c.StoreKey != "" {
			return errdefs.InvalidArgument("cluster settings given without --cluster-store: say which cluster to join")
		}
		return nil
	}
	for _, e := range c.Store {
		if _, err := storeHostPort(e); err != nil {
			return err
		}
	}
	if c.Advertise == "" {
		return errdefs.InvalidArgument("--cluster-store needs --cluster-advertise: the address other nodes reach this one at")
	}
	if (c.StoreCert == "") != (c.StoreKey == "") {
		return errdefs.InvalidArgument("--cluster-store-cert and --cluster-store-key go together")
	}
	if c.NodeTTL != 0 && time.Duration(c.NodeTTL) < 1500*time.Millisecond {
		return errdefs.InvalidArgument("--cluster-node-ttl %s is too short: etcd's minimum lease is 1.5s", time.Duration(c.NodeTTL))
	}
	if c.VXLANPort < 0 || c.VXLANPort > 65535 {
		return errdefs.InvalidArgument("--cluster-vxlan-port %d is not a UDP port", c.VXLANPort)
	}
	if c.NodeName != "" && (strings.ContainsAny(c.NodeName, "/ \t\n") || len(c.NodeName) > 64) {
		return errdefs.InvalidArgument("invalid --node-name %q: up to 64 characters, no spaces or slashes", c.NodeName)
	}
	return nil
}

// storeHostPort checks an etcd://host:port endpoint and returns host:port.
func storeHostPort(e string) (string, error) {
	u, err := url.Parse(e)
	if err != nil || u.Scheme != "etcd" || u.Host == "" || u.Path != "" && u.Path != "/" {
		return "", errdefs.InvalidArgument("invalid cluster store %q: want etcd://host:port", e)
	}
	host, port, err := net.SplitHostPort(u.Host)
	if err != nil || host == "" {
		return "", errdefs.InvalidArgument("invalid cluster store %q: want etcd://host:port (the port is required)", e)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 1 || p > 65535 {
		return "", errdefs.InvalidArgument("invalid cluster store %q: bad port %q", e, port)
	}
	return u.Host, nil
}
