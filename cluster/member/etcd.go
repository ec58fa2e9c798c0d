package member

import (
	"context"
	"errors"
	"net/url"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"

	"github.com/piernet/pier/errdefs"
)

// etcdMember is a running embedded etcd member.
type etcdMember struct {
	e *embed.Etcd
}

// waitVoter waits until the member has applied its own promotion.
func (m *etcdMember) waitVoter(ctx context.Context) error {
	for m.e.Server.IsLearner() {
		select {
		case <-ctx.Done():
			return errdefs.Unavailable("waiting for this etcd member's promotion to apply: %v", ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// peer is one entry of etcd's initial cluster.
type peer struct{ name, url string }

// startEtcd starts the embedded member described by st with its data under dir and
// waits until it serves clients (which needs a quorum) or ctx ends. Clients and peers
// are served over mutual TLS with the cluster CA only.
func startEtcd(ctx context.Context, dir string, st state, o Options, zl *zap.Logger, clusterState string, initial []peer) (*etcdMember, error) {
	cfg := embed.NewConfig()
	cfg.Name = st.Name
	cfg.Dir = filepath.Join(dir, DirEtcd)
	cu, err := url.Parse(st.clientURL())
	if err != nil {
		return nil, err
	}
	pu, err := url.Parse(st.peerURL())
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	tlsInfo := transport.TLSInfo{
		CertFile:       filepath.Join(dir, FileCert),
		KeyFile:        filepath.Join(dir, FileKey),
		TrustedCAFile:  filepath.Join(dir, FileCACert),
		ClientCertAuth: true,
	}
	cfg.ClientTLSInfo, cfg.PeerTLSInfo = tlsInfo, tlsInfo
	cfg.ClusterState = clusterState
	cfg.InitialClusterToken = "pier"
	var ic []string
	for _, p := range initial {
		ic = append(ic, p.name+"="+p.url)
	}
	cfg.InitialCluster = strings.Join(ic, ",")
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zl)
	cfg.UnsafeNoFsync = o.UnsafeNoFsync
	if o.TickMs != 0 {
		cfg.TickMs = o.TickMs
	}
	if o.ElectionMs != 0 {
		cfg.ElectionMs = o.ElectionMs
	}
	e, err := startBinding(ctx, cfg)
	if err != nil {
		return nil, errdefs.Unavailable("starting embedded etcd member %q on %s: %w", st.Name, st.clientURL(), err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return &etcdMember{e: e}, nil
	case err := <-e.Err():
		e.Close()
		return nil, errdefs.Unavailable("embedded etcd member %q: %w", st.Name, err)
	case <-e.Server.StopNotify():
		e.Close()
		return nil, errdefs.Unavailable("embedded etcd member %q stopped while starting", st.Name)
	case <-ctx.Done():
		e.Close()
		return nil, errdefs.Unavailable("embedded etcd member %q not ready (no quorum yet?): %w", st.Name, ctx.Err())
	}
}

func (m *etcdMember) close() { m.e.Close() }

// id is the member's etcd ID.
func (m *etcdMember) id() uint64 { return uint64(m.e.Server.MemberID()) }

// bindWait is how long startBinding retries while the member's ports are still held:
// a pierd restarted at once after a crash or stop can find its predecessor's threads
// still exiting, holding the listening sockets for a moment.
const bindWait = 5 * time.Second

// startBinding starts the member, retrying while its addresses are in use.
func startBinding(ctx context.Context, cfg *embed.Config) (*embed.Etcd, error) {
	deadline := time.Now().Add(bindWait)
	for {
		e, err := embed.StartEtcd(cfg)
		if err == nil || !addrInUse(err) || time.Now().After(deadline) {
			return e, err
		}
		select {
		case <-ctx.Done():
			return nil, err
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func addrInUse(err error) bool {
	return errors.Is(err, syscall.EADDRINUSE) || strings.Contains(err.Error(), "address already in use")
}
