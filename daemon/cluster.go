package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/piernet/pier/cluster"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/stack"
)

// dialTimeout bounds reaching the cluster store at start.
const dialTimeout = 5 * time.Second

// openCluster connects to the cluster store and returns the stack's cluster options
// and a closer for the client. Nothing is written here: an unreachable store or a bad
// advertise address fails before pierd changes anything.
func openCluster(ctx context.Context, cfg Config, nodeID string) (*stack.ClusterOptions, func() error, error) {
	adv, err := AdvertiseAddr(cfg.Advertise)
	if err != nil {
		return nil, nil, err
	}
	tlsCfg, err := storeTLS(cfg.ClusterConfig)
	if err != nil {
		return nil, nil, err
	}
	var eps []string
	for _, e := range cfg.Store {
		hp, _ := storeHostPort(e) // validated
		scheme := "http://"
		if tlsCfg != nil {
			scheme = "https://"
		}
		eps = append(eps, scheme+hp)
	}
	cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: dialTimeout, TLS: tlsCfg, Logger: zap.NewNop(),
		DialKeepAliveTime: 2 * time.Second, DialKeepAliveTimeout: 2 * time.Second})
	if err != nil {
		return nil, nil, errdefs.Unavailable("cluster store %v: %v", cfg.Store, err)
	}
	pctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if _, err := cli.Get(pctx, cluster.Root, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, nil, errdefs.Unavailable("cannot reach the cluster store at %v: %v", cfg.Store, err)
	}
	name := cfg.NodeName
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			cli.Close()
			return nil, nil, fmt.Errorf("no --node-name and no hostname: %w", err)
		}
	}
	kv := cluster.NewEtcdKV(cli)
	if err := cluster.CheckName(ctx, kv, nodeID, name); err != nil {
		cli.Close()
		return nil, nil, err
	}
	o := &stack.ClusterOptions{KV: kv, Endpoints: cfg.Store, NodeID: nodeID, NodeName: name,
		Advertise: adv, TTL: cfg.TTL(), VXLANPort: cfg.VXLANPort, Version: Version}
	return o, cli.Close, nil
}

// AdvertiseAddr resolves --cluster-advertise: an IP address, or an interface whose
// first global address (IPv4 preferred) is used.
func AdvertiseAddr(s string) (netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		if a.IsUnspecified() {
			return netip.Addr{}, errdefs.InvalidArgument("--cluster-advertise %s: other nodes cannot reach an unspecified address", s)
		}
		if !hasAddr(a) {
			return netip.Addr{}, errdefs.InvalidArgument("--cluster-advertise %s: no interface of this host has that address", s)
		}
		return a.Unmap(), nil
	}
	ifc, err := net.InterfaceByName(s)
	if err != nil {
		return netip.Addr{}, errdefs.InvalidArgument("--cluster-advertise %q is neither an IP address nor an interface of this host", s)
	}
	addrs, _ := ifc.Addrs()
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
	if v6.IsValid() {
		return v6, nil
	}
	return netip.Addr{}, errdefs.InvalidArgument("--cluster-advertise %s: the interface has no global address", s)
}

func hasAddr(want netip.Addr) bool {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return false
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Unmap() == want.Unmap() {
			return true
		}
	}
	return false
}

func storeTLS(c ClusterConfig) (*tls.Config, error) {
	if c.StoreCACert == "" && c.StoreCert == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if c.StoreCACert != "" {
		pem, err := os.ReadFile(c.StoreCACert)
		if err != nil {
			return nil, fmt.Errorf("reading --cluster-store-cacert: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, errdefs.InvalidArgument("--cluster-store-cacert %s holds no PEM certificate", c.StoreCACert)
		}
	}
	if c.StoreCert != "" {
		cert, err := tls.LoadX509KeyPair(c.StoreCert, c.StoreKey)
		if err != nil {
			return nil, errdefs.InvalidArgument("--cluster-store-cert/--cluster-store-key: %v", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}
