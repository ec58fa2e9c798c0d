package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/piernet/pier/cluster"
	"github.com/piernet/pier/cluster/member"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/stack"
)

// dialTimeout bounds reaching the cluster store at start.
const dialTimeout = 5 * time.Second

// clusterDir holds the node's cluster files (CA, certificates, token, the embedded
// etcd member's data) under the data root.
func clusterDir(dataRoot string) string { return filepath.Join(dataRoot, "cluster") }

// openCluster sets up this node's part of the cluster store (an embedded member on
// --cluster-init/--cluster-join, or an external etcd), checks it answers and that the
// node name is free, and returns the stack's cluster options and a closer. Bad input
// fails before pierd writes anything to its own store.
func openCluster(ctx context.Context, cfg Config, nodeID string, log *slog.Logger) (_ *stack.ClusterOptions, closeFn func() error, err error) {
	adv, err := AdvertiseAddr(cfg.ClusterAdvertise)
	if err != nil {
		return nil, nil, err
	}
	name := cfg.NodeName
	if name == "" {
		if name, err = os.Hostname(); err != nil {
			return nil, nil, fmt.Errorf("no --node-name and no hostname: %w", err)
		}
	}
	m, err := startMember(ctx, cfg, name, adv, log)
	if err != nil {
		return nil, nil, err
	}
	defer func() {
		if err != nil {
			_ = m.Close()
		}
	}()
	cli, err := clientv3.New(m.ClientConfig())
	if err != nil {
		return nil, nil, errdefs.Unavailable("cluster store %v: %v", m.ClientURLs(), err)
	}
	closeAll := func() error { return errors.Join(cli.Close(), m.Close()) }
	pctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	if _, err = cli.Get(pctx, cluster.Root, clientv3.WithCountOnly()); err != nil {
		cli.Close()
		return nil, nil, errdefs.Unavailable("cannot reach the cluster store at %v: %v", m.ClientURLs(), err)
	}
	kv := cluster.NewEtcdKV(cli)
	if err = cluster.CheckName(ctx, kv, nodeID, name); err != nil {
		cli.Close()
		return nil, nil, err
	}
	o := &stack.ClusterOptions{KV: kv, Endpoints: m.ClientURLs(), NodeID: nodeID, NodeName: name, Advertise: adv,
		TTL: cfg.NodeTTL(), VXLANPort: cfg.VXLANPort(), WGPort: cfg.ClusterWGPort,
		KeyRotation: time.Duration(cfg.ClusterKeyRotation), Version: Version, EtcdMember: m.IsMember(),
		Capabilities: kernelCapabilities()}
	if m.IsMember() {
		o.Token = m.Token
	}
	return o, closeAll, nil
}

// startMember runs the node's embedded etcd member or client settings.
func startMember(ctx context.Context, cfg Config, name string, adv netip.Addr, log *slog.Logger) (*member.Member, error) {
	o := member.Options{DataDir: clusterDir(cfg.DataRoot), Name: name, Advertise: adv, Logger: log}
	switch {
	case cfg.ClusterInit:
		return member.Init(ctx, o)
	case cfg.ClusterJoin != "":
		tok, err := cfg.JoinToken()
		if err != nil && !resumable(o.DataDir) {
			return nil, err
		}
		o.JoinURL, o.Token = cfg.ClusterJoin, tok
		return member.Join(ctx, o)
	}
	eps, err := cfg.StoreEndpoints()
	if err != nil {
		return nil, err
	}
	return member.External(member.ExternalOptions{Endpoints: eps, CACert: cfg.ClusterStoreCACert, Cert: cfg.ClusterStoreCert,
		Key: cfg.ClusterStoreKey, Logger: log})
}

// resumable reports whether a joined node's cluster files exist: it restarts without
// a token.
func resumable(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, member.FileState))
	return err == nil
}
