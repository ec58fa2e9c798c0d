// Package clustertest starts an embedded etcd for tests: one member, on loopback, in a
// temporary directory, without fsync, removed when the test ends.
package clustertest

import (
	"net"
	"net/url"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Etcd is a running embedded member.
type Etcd struct {
	URL string // client URL (http://127.0.0.1:port)
	e   *embed.Etcd
	cfg *embed.Config
}

// Start runs a single-member etcd on 127.0.0.1 with free ports.
func Start(t testing.TB) *Etcd {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Dir = t.TempDir()
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 10, 50
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.New(zapcore.NewNopCore()))
	client, peer := freeURL(t), freeURL(t)
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.Name + "=" + peer.String()
	e := &Etcd{URL: client.String(), cfg: cfg}
	e.start(t)
	t.Cleanup(e.Stop)
	return e
}

func (e *Etcd) start(t testing.TB) {
	t.Helper()
	srv, err := embed.StartEtcd(e.cfg)
	if err != nil {
		t.Fatalf("starting etcd: %v", err)
	}
	select {
	case <-srv.Server.ReadyNotify():
	case <-time.After(10 * time.Second):
		srv.Close()
		t.Fatal("etcd did not become ready in 10 s")
	}
	e.e = srv
}

// Stop stops the member (idempotent); Restart starts it again on the same data.
func (e *Etcd) Stop() {
	if e.e != nil {
		e.e.Close()
		e.e = nil
	}
}

// Restart starts a stopped member again with its data.
func (e *Etcd) Restart(t testing.TB) { e.start(t) }

// Client returns a client of the member, closed when the test ends.
func (e *Etcd) Client(t testing.TB) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.URL}, DialTimeout: 2 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func freeURL(t testing.TB) url.URL {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return url.URL{Scheme: "http", Host: ln.Addr().String()}
}
