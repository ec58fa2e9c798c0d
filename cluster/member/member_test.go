package member

import (
	"context"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/nstest"
)

func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// testOptions are fast, loopback-only options for a node named name; its data dir
// does not exist yet.
func testOptions(t *testing.T, name string) Options {
	return Options{
		DataDir: filepath.Join(t.TempDir(), name), Name: name, Advertise: netip.MustParseAddr("127.0.0.1"),
		ClientPort: freePort(t), PeerPort: freePort(t), JoinPort: freePort(t),
		Logger:        nstest.Log(t, slog.LevelInfo),
		UnsafeNoFsync: true, TickMs: 10, ElectionMs: 100,
	}
}

func startInit(t *testing.T, o Options) *Member {
	t.Helper()
	m, err := Init(t.Context(), o)
	if err != nil {
		t.Fatalf("Init: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func joinOptions(t *testing.T, name string, via Options, token string) Options {
	o := testOptions(t, name)
	o.JoinURL = "etcd://127.0.0.1:" + strconv.Itoa(via.ClientPort)
	o.JoinAddr = "127.0.0.1:" + strconv.Itoa(via.JoinPort)
	o.Token = token
	return o
}

func startJoin(t *testing.T, o Options) *Member {
	t.Helper()
	m, err := Join(t.Context(), o)
	if err != nil {
		t.Fatalf("Join %s: %v", o.Name, err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func client(t *testing.T, cfg clientv3.Config) *clientv3.Client {
	t.Helper()
	cfg.DialTimeout = 2 * time.Second
	if cfg.Logger == nil {
		cfg.Logger = zap.NewNop()
	}
	c, err := clientv3.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func putGet(ctx context.Context, c *clientv3.Client, k, v string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := c.Put(ctx, k, v); err != nil {
		return err
	}
	r, err := c.Get(ctx, k)
	if err != nil {
		return err
	}
	if len(r.Kvs) != 1 || string(r.Kvs[0].Value) != v {
		return errors.New("read back something else")
	}
	return nil
}

func memberCount(t *testing.T, c *clientv3.Client) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	l, err := c.MemberList(ctx)
	if err != nil {
		t.Fatalf("MemberList: %v", err)
	}
	return len(l.Members)
}

func TestInitServesOnlyMutualTLS(t *testing.T) {
	o := testOptions(t, "a")
	m := startInit(t, o)
	if !m.IsMember() || m.Name() != "a" {
		t.Fatalf("IsMember %v Name %q", m.IsMember(), m.Name())
	}
	c := client(t, m.ClientConfig())
	if err := putGet(t.Context(), c, "/k", "v"); err != nil {
		t.Fatalf("with the node certificate: %v", err)
	}

	// A client that trusts the CA but has no certificate is refused.
	noCert := m.ClientTLS()
	noCert.Certificates = nil
	c2 := client(t, clientv3.Config{Endpoints: m.ClientURLs(), TLS: noCert})
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	if _, err := c2.Get(ctx, "/k"); err == nil {
		t.Fatal("read without a client certificate succeeded")
	}
	// The reason is the missing certificate (not, say, a closed port).
	conn, err := tls.Dial("tcp", strings.TrimPrefix(m.ClientURLs()[0], "https://"), noCert)
	if err == nil {
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate required") {
		t.Fatalf("TLS without a client certificate: %v, want \"certificate required\"", err)
	}
	if _, err := c2.Put(ctx, "/k", "x"); err == nil {
		t.Fatal("write without a client certificate succeeded")
	}
	// Plain text is not served at all.
	plain := client(t, clientv3.Config{Endpoints: []string{strings.Replace(m.ClientURLs()[0], "https", "http", 1)}})
	ctx2, cancel2 := context.WithTimeout(t.Context(), time.Second)
	defer cancel2()
	if _, err := plain.Get(ctx2, "/k"); err == nil {
		t.Fatal("plain-text read succeeded")
	}
	if err := putGet(t.Context(), c, "/k", "v"); err != nil { // nothing was overwritten
		t.Fatal(err)
	}

	for _, f := range []string{FileCAKey, FileKey, FileToken, FileState} {
		fi, err := os.Stat(filepath.Join(o.DataDir, f))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Errorf("%s: %v mode %v, want 0600", f, err, fi.Mode())
		}
	}
	tok, err := ReadToken(o.DataDir)
	if err != nil || tok != m.Token() {
		t.Fatalf("ReadToken = %q, %v; Token() = %q", tok, err, m.Token())
	}
	if _, err := ParseToken(tok); err != nil {
		t.Fatal(err)
	}
	etcdctl(t, o, m)
}

// etcdctl checks Debian's etcdctl against the member: refused without a client
// certificate, served with one.
func etcdctl(t *testing.T, o Options, m *Member) {
	path, err := exec.LookPath("etcdctl")
	if err != nil {
		t.Log("etcdctl not installed: skipping the etcdctl checks")
		return
	}
	base := []string{"--endpoints", m.ClientURLs()[0], "--cacert", filepath.Join(o.DataDir, FileCACert), "--dial-timeout", "1s", "--command-timeout", "2s"}
	run := func(extra ...string) (string, error) {
		cmd := exec.CommandContext(t.Context(), path, append(append([]string(nil), base...), extra...)...)
		cmd.Env = append(os.Environ(), "ETCDCTL_API=3")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	if out, err := run("put", "/etcdctl", "x"); err == nil {
		t.Fatalf("etcdctl put without a certificate succeeded: %s", out)
	}
	if out, err := run("get", "/k"); err == nil {
		t.Fatalf("etcdctl get without a certificate succeeded: %s", out)
	}
	if out, err := run("--cert", filepath.Join(o.DataDir, FileCert), "--key", filepath.Join(o.DataDir, FileKey), "get", "/k"); err != nil || !strings.Contains(out, "v") {
		t.Fatalf("etcdctl get with the node certificate: %v: %s", err, out)
	}
}

func TestJoinThreeMembersThenClientsSurviveAMemberLoss(t *testing.T) {
	oa := testOptions(t, "a")
	a := startInit(t, oa)
	ob := joinOptions(t, "b", oa, a.Token())
	b := startJoin(t, ob)
	oc := joinOptions(t, "c", oa, a.Token())
	c := startJoin(t, oc)
	// The 4th node joins through the 2nd member's join service: every member serves joins.
	od := joinOptions(t, "d", ob, a.Token())
	d := startJoin(t, od)
	if !b.IsMember() || !c.IsMember() || d.IsMember() {
		t.Fatalf("members: b %v c %v d %v, want true true false", b.IsMember(), c.IsMember(), d.IsMember())
	}
	if d.Token() != "" || b.Token() != a.Token() {
		t.Fatalf("tokens: b %q d %q", b.Token(), d.Token())
	}
	ca := client(t, a.ClientConfig())
	if n := memberCount(t, ca); n != 3 {
		t.Fatalf("MemberList: %d members, want 3", n)
	}
	if got := len(d.ClientURLs()); got != 3 {
		t.Fatalf("client-only node has %d endpoints, want 3: %v", got, d.ClientURLs())
	}
	cd := client(t, d.ClientConfig())
	if err := putGet(t.Context(), cd, "/from-d", "1"); err != nil {
		t.Fatalf("client-only node: %v", err)
	}

	// The client-only node restarts from its data dir, without a token.
	d.Close()
	od.Token = ""
	d2 := startJoin(t, od)
	if d2.IsMember() || len(d2.ClientURLs()) != 3 {
		t.Fatalf("restarted client-only node: member %v endpoints %v", d2.IsMember(), d2.ClientURLs())
	}
	if err := putGet(t.Context(), client(t, d2.ClientConfig()), "/from-d", "again"); err != nil {
		t.Fatalf("restarted client-only node: %v", err)
	}
	// A token of another cluster is refused on that data dir.
	other := Token{Fingerprint: strings.Repeat("a", 52), Secret: strings.Repeat("b", 52)}
	od.Token = other.String()
	if _, err := Join(t.Context(), od); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("join of a set-up data dir with another cluster's token: %v, want a conflict", err)
	}

	// A name already held by a member is refused.
	if _, err := Join(t.Context(), joinOptions(t, "b", oa, a.Token())); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("join with a member's name: %v, want a conflict", err)
	}

	// Lose one member: the two others keep a quorum.
	c.Close()
	cb := client(t, b.ClientConfig())
	for _, cl := range []*clientv3.Client{ca, cb, cd} {
		if err := putGet(t.Context(), cl, "/after-loss", "2"); err != nil {
			t.Fatalf("write after losing a member: %v", err)
		}
	}

	// The lost member restarts from its data dir, without a token.
	oc.Token = ""
	c2, err := Init(t.Context(), oc)
	if err != nil {
		t.Fatalf("restarting member c: %v", err)
	}
	t.Cleanup(func() { c2.Close() })
	if !c2.IsMember() || c2.Token() != a.Token() {
		t.Fatalf("restarted c: member %v token %q", c2.IsMember(), c2.Token())
	}
	cc := client(t, c2.ClientConfig())
	if err := putGet(t.Context(), cc, "/after-restart", "3"); err != nil {
		t.Fatalf("write via the restarted member: %v", err)
	}
	if n := memberCount(t, cc); n != 3 {
		t.Fatalf("MemberList after restart: %d members, want 3", n)
	}
}

func TestJoinRefusedWritesNothing(t *testing.T) {
	oa := testOptions(t, "a")
	a := startInit(t, oa)
	tok, _ := ParseToken(a.Token())
	other, _ := newSecret()
	cases := []struct {
		name  string
		token string
		kind  errdefs.Kind
		msg   string
	}{
		{"missing", "", errdefs.KindInvalidArgument, "empty join token"},
		{"malformed", "SWMTKN-1-abc", errdefs.KindInvalidArgument, "malformed join token"},
		{"wrong secret", Token{Fingerprint: tok.Fingerprint, Secret: other}.String(), errdefs.KindForbidden, "wrong join token"},
		{"other cluster", Token{Fingerprint: other, Secret: tok.Secret}.String(), errdefs.KindForbidden, "not from the cluster CA"},
	}
	ca := client(t, a.ClientConfig())
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			o := joinOptions(t, "x", oa, tc.token)
			m, err := Join(t.Context(), o)
			if err == nil {
				m.Close()
				t.Fatal("join succeeded")
			}
			if errdefs.KindOf(err) != tc.kind || !strings.Contains(err.Error(), tc.msg) {
				t.Fatalf("error %v (kind %v), want kind %v containing %q", err, errdefs.KindOf(err), tc.kind, tc.msg)
			}
			if _, err := os.Stat(o.DataDir); !errors.Is(err, os.ErrNotExist) {
				t.Fatalf("joiner's data dir exists after a refused join: %v", err)
			}
			if n := memberCount(t, ca); n != 1 {
				t.Fatalf("MemberList: %d members after a refused join, want 1", n)
			}
		})
	}
}

func TestInitResumesFromDataDir(t *testing.T) {
	o := testOptions(t, "a")
	m, err := Init(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	tok := m.Token()
	c := client(t, m.ClientConfig())
	if err := putGet(t.Context(), c, "/kept", "yes"); err != nil {
		t.Fatal(err)
	}
	m.Close()
	m2 := startInit(t, o)
	if m2.Token() != tok {
		t.Fatalf("token changed on resume: %q → %q (a new CA?)", tok, m2.Token())
	}
	c2 := client(t, m2.ClientConfig())
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	r, err := c2.Get(ctx, "/kept")
	if err != nil || len(r.Kvs) != 1 || string(r.Kvs[0].Value) != "yes" {
		t.Fatalf("data after resume: %v %v", r, err)
	}
	// The old client certificate is still valid: the CA is the same.
	if err := putGet(t.Context(), client(t, m.ClientConfig()), "/kept", "yes"); err != nil {
		t.Fatalf("old certificate after resume: %v", err)
	}
}

func TestResumeRefusesOtherAdvertise(t *testing.T) {
	o := testOptions(t, "a")
	m := startInit(t, o)
	m.Close()
	o.Advertise = netip.MustParseAddr("192.0.2.1")
	if _, err := Init(t.Context(), o); !errdefs.Is(err, errdefs.KindConflict) {
		t.Fatalf("Init with another advertise address: %v, want a conflict", err)
	}
}

// TestResumeWaitsForItsPortsToBeFreed: a member restarted while its predecessor still
// holds the peer port (a pierd whose threads are still exiting) starts once the port
// is free, and gives up with the bind error when it stays taken.
func TestResumeWaitsForItsPortsToBeFreed(t *testing.T) {
	o := testOptions(t, "a")
	m, err := Init(t.Context(), o)
	if err != nil {
		t.Fatal(err)
	}
	m.Close()
	peerAddr := "127.0.0.1:" + strconv.Itoa(o.PeerPort)
	ln, err := net.Listen("tcp", peerAddr)
	if err != nil {
		t.Fatal(err)
	}
	held := time.AfterFunc(500*time.Millisecond, func() { ln.Close() })
	defer held.Stop()
	start := time.Now()
	m2 := startInit(t, o)
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Fatalf("started after %v while the peer port was held for 500ms", d)
	}
	if err := putGet(t.Context(), client(t, m2.ClientConfig()), "/k", "v"); err != nil {
		t.Fatal(err)
	}
	m2.Close()

	taken, err := net.Listen("tcp", peerAddr)
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, err = Init(t.Context(), o)
	if err == nil || !strings.Contains(err.Error(), "address already in use") || !errdefs.Is(err, errdefs.KindUnavailable) {
		t.Fatalf("Init with the peer port taken for good: %v, want an Unavailable bind error", err)
	}
}
