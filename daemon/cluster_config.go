package daemon

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/piernet/pier/cluster/member"
	"github.com/piernet/pier/errdefs"
)

// Cluster defaults and limits.
const (
	DefaultClusterNodeTTL   = 3 * time.Second
	MinClusterNodeTTL       = 1500 * time.Millisecond // etcd's minimum lease TTL
	DefaultClusterVXLANPort = 4789                    // IANA's VXLAN port, as Docker and Calico
)

// ClusterConfig holds the cluster settings. All empty: single-host pierd, exactly as
// without them. Zero TTL and port mean their defaults (NodeTTL, VXLANPort).
type ClusterConfig struct {
	ClusterStore       string   `json:"cluster-store"`     // etcd://A:2379[,B:2379]: an external etcd
	ClusterAdvertise   string   `json:"cluster-advertise"` // IP or interface name, resolved at start (AdvertiseAddr)
	NodeName           string   `json:"node-name"`         // default: the host name
	ClusterInit        bool     `json:"cluster-init"`      // create a cluster with an embedded etcd member
	ClusterJoin        string   `json:"cluster-join"`      // etcd://A:2379 of an embedded member to join
	ClusterToken       string   `json:"cluster-token"`
	ClusterTokenFile   string   `json:"cluster-token-file"`
	ClusterStoreCACert string   `json:"cluster-store-cacert"`
	ClusterStoreCert   string   `json:"cluster-store-cert"`
	ClusterStoreKey    string   `json:"cluster-store-key"`
	ClusterNodeTTL     Duration `json:"cluster-node-ttl"`
	ClusterVXLANPort   int      `json:"cluster-vxlan-port"`
	// ClusterWGPort is the UDP port of the WireGuard tunnel of encrypted overlays;
	// ClusterKeyRotation rotates this node's WireGuard key that often (0: never).
	ClusterWGPort      int      `json:"cluster-wireguard-port"`
	ClusterKeyRotation Duration `json:"cluster-key-rotation"`
}

// Enabled reports whether pierd runs in cluster mode.
func (c ClusterConfig) Enabled() bool {
	return c.ClusterInit || c.ClusterJoin != "" || c.ClusterStore != ""
}

// NodeTTL is the node lease's TTL.
func (c ClusterConfig) NodeTTL() time.Duration {
	if c.ClusterNodeTTL == 0 {
		return DefaultClusterNodeTTL
	}
	return time.Duration(c.ClusterNodeTTL)
}

// VXLANPort is the overlay's UDP port.
func (c ClusterConfig) VXLANPort() int {
	if c.ClusterVXLANPort == 0 {
		return DefaultClusterVXLANPort
	}
	return c.ClusterVXLANPort
}

// StoreEndpoints are the host:port parts of --cluster-store.
func (c ClusterConfig) StoreEndpoints() ([]string, error) {
	return member.ParseStoreURLs(c.ClusterStore)
}

// JoinToken is the join token from --cluster-token or --cluster-token-file (read
// now), checked for format.
func (c ClusterConfig) JoinToken() (string, error) {
	s := c.ClusterToken
	if c.ClusterTokenFile != "" {
		b, err := os.ReadFile(c.ClusterTokenFile)
		if err != nil {
			return "", errdefs.InvalidArgument("reading --cluster-token-file: %w", err)
		}
		s = string(b)
	}
	t, err := member.ParseToken(s)
	if err != nil {
		return "", err
	}
	return t.String(), nil
}

// validate checks the cluster settings without I/O.
func (c ClusterConfig) validate() error {
	if !c.Enabled() {
		return c.validateUnused()
	}
	if c.ClusterInit && (c.ClusterJoin != "" || c.ClusterStore != "") {
		return errdefs.InvalidArgument("--cluster-init creates a cluster: it cannot be combined with --cluster-join or --cluster-store")
	}
	if c.ClusterJoin != "" && c.ClusterStore != "" {
		return errdefs.InvalidArgument("--cluster-join (embedded etcd) and --cluster-store (external etcd) exclude each other")
	}
	if c.ClusterAdvertise == "" {
		return errdefs.InvalidArgument("cluster mode needs --cluster-advertise IP|IFACE: the address other nodes reach this one at")
	}
	if err := checkAdvertise(c.ClusterAdvertise); err != nil {
		return err
	}
	if c.NodeName != "" {
		if err := member.ValidateName(c.NodeName); err != nil {
			return err
		}
	}
	if err := c.validateJoin(); err != nil {
		return err
	}
	if err := c.validateStore(); err != nil {
		return err
	}
	if c.ClusterNodeTTL != 0 && time.Duration(c.ClusterNodeTTL) < MinClusterNodeTTL {
		return errdefs.InvalidArgument("--cluster-node-ttl %s is below etcd's minimum lease TTL of %s", time.Duration(c.ClusterNodeTTL), MinClusterNodeTTL)
	}
	if c.ClusterVXLANPort < 0 || c.ClusterVXLANPort > 65535 {
		return errdefs.InvalidArgument("--cluster-vxlan-port %d: want a UDP port between 1 and 65535", c.ClusterVXLANPort)
	}
	if c.ClusterWGPort < 0 || c.ClusterWGPort > 65535 {
		return errdefs.InvalidArgument("--cluster-wireguard-port %d: want a UDP port between 1 and 65535", c.ClusterWGPort)
	}
	if d := time.Duration(c.ClusterKeyRotation); d != 0 && d < MinClusterKeyRotation {
		return errdefs.InvalidArgument("--cluster-key-rotation %s: at least %s (WireGuard re-keys its sessions every 2 minutes by itself)", d, MinClusterKeyRotation)
	}
	return nil
}

// MinClusterKeyRotation is the shortest periodic key rotation.
const MinClusterKeyRotation = 10 * time.Second

// validateUnused refuses cluster settings given without a cluster mode (a typo'd
// setup must not silently run single-host).
func (c ClusterConfig) validateUnused() error {
	for _, s := range []struct{ name, v string }{
		{"--cluster-advertise", c.ClusterAdvertise}, {"--node-name", c.NodeName},
		{"--cluster-token", c.ClusterToken}, {"--cluster-token-file", c.ClusterTokenFile},
		{"--cluster-store-cacert", c.ClusterStoreCACert}, {"--cluster-store-cert", c.ClusterStoreCert},
		{"--cluster-store-key", c.ClusterStoreKey},
	} {
		if s.v != "" {
			return errdefs.InvalidArgument("%s needs a cluster mode: --cluster-init, --cluster-join or --cluster-store", s.name)
		}
	}
	if c.ClusterNodeTTL != 0 || c.ClusterVXLANPort != 0 || c.ClusterWGPort != 0 || c.ClusterKeyRotation != 0 {
		return errdefs.InvalidArgument("--cluster-node-ttl, --cluster-vxlan-port, --cluster-wireguard-port and --cluster-key-rotation need a cluster mode: --cluster-init, --cluster-join or --cluster-store")
	}
	return nil
}

func (c ClusterConfig) validateJoin() error {
	if c.ClusterJoin == "" {
		if c.ClusterToken != "" || c.ClusterTokenFile != "" {
			return errdefs.InvalidArgument("--cluster-token is only used with --cluster-join")
		}
		return nil
	}
	if _, err := member.ParseStoreURL(c.ClusterJoin); err != nil {
		return fmt.Errorf("--cluster-join: %w", err)
	}
	switch {
	case c.ClusterToken != "" && c.ClusterTokenFile != "":
		return errdefs.InvalidArgument("give --cluster-token or --cluster-token-file, not both")
	case c.ClusterTokenFile != "":
		return nil // read and checked at start (JoinToken)
	case c.ClusterToken == "":
		return errdefs.InvalidArgument("--cluster-join needs the cluster's join token: --cluster-token TOKEN or --cluster-token-file FILE (pier cluster token on a member prints it)")
	}
	_, err := member.ParseToken(c.ClusterToken)
	return err
}

func (c ClusterConfig) validateStore() error {
	tlsSet := c.ClusterStoreCACert != "" || c.ClusterStoreCert != "" || c.ClusterStoreKey != ""
	if c.ClusterStore == "" {
		if tlsSet {
			return errdefs.InvalidArgument("--cluster-store-cacert/--cluster-store-cert/--cluster-store-key are only used with --cluster-store")
		}
		return nil
	}
	if (c.ClusterStoreCert == "") != (c.ClusterStoreKey == "") {
		return errdefs.InvalidArgument("give both --cluster-store-cert and --cluster-store-key, or neither")
	}
	if _, err := c.StoreEndpoints(); err != nil {
		return fmt.Errorf("--cluster-store: %w", err)
	}
	return nil
}

// checkAdvertise accepts an IP address (unicast, specified) or an interface name.
func checkAdvertise(s string) error {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.IsUnspecified() || a.IsMulticast() {
			return errdefs.InvalidArgument("--cluster-advertise %s: want a unicast address of this node", s)
		}
		return nil
	}
	if len(s) > 15 || strings.ContainsAny(s, "/: \t") || s == "." || s == ".." {
		return errdefs.InvalidArgument("--cluster-advertise %q: want an IP address or an interface name", s)
	}
	return nil
}

// AdvertiseAddr resolves --cluster-advertise: an IP address as is, an interface name
// to its first global unicast IPv4 address (else IPv6).
func AdvertiseAddr(ifaceOrIP string) (netip.Addr, error) {
	if err := checkAdvertise(ifaceOrIP); err != nil {
		return netip.Addr{}, err
	}
	if a, err := netip.ParseAddr(ifaceOrIP); err == nil {
		if !hostHas(a) {
			return netip.Addr{}, errdefs.InvalidArgument("--cluster-advertise %s: no interface of this host has that address", a)
		}
		return a.Unmap(), nil
	}
	ifi, err := net.InterfaceByName(ifaceOrIP)
	if err != nil {
		return netip.Addr{}, errdefs.NotFound("--cluster-advertise %q: no such interface", ifaceOrIP)
	}
	addrs, err := ifi.Addrs()
	if err != nil {
		return netip.Addr{}, fmt.Errorf("addresses of %s: %w", ifaceOrIP, err)
	}
	var v6 netip.Addr
	for _, a := range addrs {
		p, err := netip.ParsePrefix(a.String())
		if err != nil || !p.Addr().IsGlobalUnicast() {
			continue
		}
		if p.Addr().Is4() {
			return p.Addr(), nil
		}
		if !v6.IsValid() {
			v6 = p.Addr()
		}
	}
	if !v6.IsValid() {
		return netip.Addr{}, errdefs.InvalidArgument("--cluster-advertise %s: the interface has no global unicast address", ifaceOrIP)
	}
	return v6, nil
}

// Duration is a time.Duration written as "3s" in the config file and on flags.
type Duration time.Duration

func (d Duration) String() string { return time.Duration(d).String() }

func (d *Duration) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return errdefs.InvalidArgument("invalid duration %q: want e.g. 3s or 1500ms", s)
	}
	*d = Duration(v)
	return nil
}

func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(d.String()) }

func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return errors.New(`want a duration string such as "3s"`)
	}
	return d.Set(s)
}

// addClusterFlags registers the cluster flags over c.
func addClusterFlags(fs *flag.FlagSet, c *ClusterConfig) {
	fs.StringVar(&c.ClusterStore, "cluster-store", "", "join the cluster whose state is in this external etcd: `etcd://host:port[,host:port…]`")
	fs.StringVar(&c.ClusterAdvertise, "cluster-advertise", "", "`IP|IFACE` other nodes reach this one at (cluster mode)")
	fs.StringVar(&c.NodeName, "node-name", "", "this node's `name` in the cluster (default the host name)")
	fs.BoolVar(&c.ClusterInit, "cluster-init", false, "create a cluster: run an embedded etcd member and print a join token")
	fs.StringVar(&c.ClusterJoin, "cluster-join", "", "join the cluster of the embedded member at `etcd://host:port`")
	fs.StringVar(&c.ClusterToken, "cluster-token", "", "join `token` (printed by --cluster-init, pier cluster token)")
	fs.StringVar(&c.ClusterTokenFile, "cluster-token-file", "", "read the join token from this `file`")
	fs.StringVar(&c.ClusterStoreCACert, "cluster-store-cacert", "", "CA `file` the external etcd's certificate is signed by")
	fs.StringVar(&c.ClusterStoreCert, "cluster-store-cert", "", "client certificate `file` for the external etcd")
	fs.StringVar(&c.ClusterStoreKey, "cluster-store-key", "", "client key `file` for the external etcd")
	c.ClusterNodeTTL = Duration(DefaultClusterNodeTTL)
	fs.Var(&c.ClusterNodeTTL, "cluster-node-ttl", "node lease `duration`: a node silent this long is down (at least 1.5s)")
	fs.IntVar(&c.ClusterVXLANPort, "cluster-vxlan-port", DefaultClusterVXLANPort, "UDP `port` of the overlay networks' VXLAN")
	fs.IntVar(&c.ClusterWGPort, "cluster-wireguard-port", 51820, "UDP `port` of the WireGuard tunnel that carries encrypted overlays")
	fs.Var(&c.ClusterKeyRotation, "cluster-key-rotation", "rotate this node's WireGuard key every `duration` (default 0: only with pier node rotate-key)")
}

// applyCluster copies the cluster flag named name from v over c; false if name is
// not a cluster flag.
func applyCluster(name string, v, c *ClusterConfig) bool {
	switch name {
	case "cluster-store":
		c.ClusterStore = v.ClusterStore
	case "cluster-advertise":
		c.ClusterAdvertise = v.ClusterAdvertise
	case "node-name":
		c.NodeName = v.NodeName
	case "cluster-init":
		c.ClusterInit = v.ClusterInit
	case "cluster-join":
		c.ClusterJoin = v.ClusterJoin
	case "cluster-token":
		c.ClusterToken = v.ClusterToken
	case "cluster-token-file":
		c.ClusterTokenFile = v.ClusterTokenFile
	case "cluster-store-cacert":
		c.ClusterStoreCACert = v.ClusterStoreCACert
	case "cluster-store-cert":
		c.ClusterStoreCert = v.ClusterStoreCert
	case "cluster-store-key":
		c.ClusterStoreKey = v.ClusterStoreKey
	case "cluster-node-ttl":
		c.ClusterNodeTTL = v.ClusterNodeTTL
	case "cluster-vxlan-port":
		c.ClusterVXLANPort = v.ClusterVXLANPort
	case "cluster-wireguard-port":
		c.ClusterWGPort = v.ClusterWGPort
	case "cluster-key-rotation":
		c.ClusterKeyRotation = v.ClusterKeyRotation
	default:
		return false
	}
	return true
}

// hostHas reports whether an interface of this host (network namespace) has a.
func hostHas(a netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, x := range addrs {
		if p, err := netip.ParsePrefix(x.String()); err == nil && p.Addr().Unmap() == a.Unmap() {
			return true
		}
	}
	return false
}
