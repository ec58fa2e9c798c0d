package member

import (
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/piernet/pier/errdefs"
)

// Default ports: etcd's client and peer ports, and Docker swarm's cluster management
// port for the join service.
const (
	DefaultClientPort = 2379
	DefaultPeerPort   = 2380
	DefaultJoinPort   = 2377
	DefaultMaxMembers = 3
)

// Files under Options.DataDir.
const (
	FileCACert = "ca.crt"     // cluster CA certificate (every node)
	FileCAKey  = "ca.key"     // cluster CA key (etcd members only), 0600
	FileCert   = "node.crt"   // this node's certificate
	FileKey    = "node.key"   // this node's key, 0600
	FileToken  = "token"      // the join token (etcd members only), 0600
	FileState  = "state.json" // role, name, address, ports, endpoints: written last
	DirEtcd    = "etcd"       // the embedded member's data (etcd members only)
)

// Options configure Init and Join.
type Options struct {
	DataDir   string     // required; created 0700 if missing
	Name      string     // node and etcd member name; default the host name
	Advertise netip.Addr // required: the address other nodes reach this one at

	// Ports this node serves on Advertise; 0 means the default.
	ClientPort, PeerPort, JoinPort int

	JoinURL  string // Join: etcd://A:2379 of an existing member
	JoinAddr string // Join: host:port of its join service; default A's host and JoinPort
	Token    string // Join: the join token (PIER1-…)

	ClientOnly bool // Join: never become an etcd member
	MaxMembers int  // Join: become a member while the cluster has fewer; default 3

	Logger *slog.Logger // warnings and errors of etcd go here, component=etcd

	// For tests: faster elections, no fsync. Zero values keep etcd's defaults.
	UnsafeNoFsync      bool
	TickMs, ElectionMs uint
}

func (o *Options) defaults() error {
	if o.DataDir == "" {
		return errdefs.InvalidArgument("cluster data dir must not be empty")
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.Name == "" {
		h, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("node name: %w", err)
		}
		o.Name = h
	}
	for _, p := range []*int{&o.ClientPort, &o.PeerPort, &o.JoinPort} {
		if *p < 0 || *p > 65535 {
			return errdefs.InvalidArgument("port %d out of range", *p)
		}
	}
	setDefault(&o.ClientPort, DefaultClientPort)
	setDefault(&o.PeerPort, DefaultPeerPort)
	setDefault(&o.JoinPort, DefaultJoinPort)
	setDefault(&o.MaxMembers, DefaultMaxMembers)
	return nil
}

func setDefault(p *int, v int) {
	if *p == 0 {
		*p = v
	}
}

func (o *Options) needAdvertise() error {
	if !o.Advertise.IsValid() || o.Advertise.IsUnspecified() || o.Advertise.IsMulticast() {
		return errdefs.InvalidArgument("cluster advertise address %q: want a unicast IP address of this node", o.Advertise)
	}
	return nil
}

// state is what FileState records: enough to resume without a token.
type state struct {
	Name       string     `json:"name"`
	Member     bool       `json:"member"`
	Advertise  netip.Addr `json:"advertise"`
	ClientPort int        `json:"client_port"`
	PeerPort   int        `json:"peer_port"`
	JoinPort   int        `json:"join_port"`
	Endpoints  []string   `json:"endpoints,omitempty"` // client-only: the members' client URLs
}

func (s state) clientURL() string { return httpsURL(s.Advertise, s.ClientPort) }
func (s state) peerURL() string   { return httpsURL(s.Advertise, s.PeerPort) }

func httpsURL(a netip.Addr, port int) string {
	return (&url.URL{Scheme: "https", Host: net.JoinHostPort(a.String(), strconv.Itoa(port))}).String()
}

func loadState(dir string) (state, bool, error) {
	data, err := os.ReadFile(filepath.Join(dir, FileState))
	if errors.Is(err, fs.ErrNotExist) {
		return state{}, false, nil
	}
	if err != nil {
		return state{}, false, err
	}
	var s state
	if err := json.Unmarshal(data, &s); err != nil || s.Name == "" {
		return state{}, false, fmt.Errorf("cluster state %s is corrupt (remove %s to set the node up again): %v", filepath.Join(dir, FileState), dir, err)
	}
	return s, true, nil
}

func saveState(dir string, s state) error {
	data, err := json.MarshalIndent(s, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(dir, FileState, append(data, '\n'), 0o600)
}

// Member is this node's place in the cluster: an embedded etcd member (with the join
// service) or a client-only configuration, or an external etcd's client settings.
type Member struct {
	name       string
	member     bool
	clientURLs []string
	tls        *tls.Config // nil: plain-text external etcd
	token      string
	autoSync   bool
	zl         *zap.Logger

	etcd *etcdMember // nil unless member
	join *joinServer // nil unless member

	closeOnce sync.Once
	closeErr  error
}

// Name is the node's (and etcd member's) name; empty for External.
func (m *Member) Name() string { return m.name }

// IsMember reports whether this node runs an embedded etcd member.
func (m *Member) IsMember() bool { return m.member }

// ClientURLs are the etcd client URLs to use: this member's own, or the cluster's.
func (m *Member) ClientURLs() []string { return append([]string(nil), m.clientURLs...) }

// ClientTLS is the TLS configuration for etcd clients (this node's client certificate,
// the cluster CA as the only root). It is nil for an external etcd without TLS.
func (m *Member) ClientTLS() *tls.Config {
	if m.tls == nil {
		return nil
	}
	return m.tls.Clone()
}

// Token is the join token; empty on client-only nodes and for External.
func (m *Member) Token() string { return m.token }

// ClientConfig is a ready clientv3 configuration: ClientURLs, ClientTLS, etcd's client
// logs filtered into the logger, and (for embedded clusters) endpoint auto-sync so
// client-only nodes follow membership changes.
func (m *Member) ClientConfig() clientv3.Config {
	c := clientv3.Config{Endpoints: m.ClientURLs(), TLS: m.ClientTLS(), Logger: m.zl,
		DialTimeout: 5 * time.Second, DialKeepAliveTime: 10 * time.Second, DialKeepAliveTimeout: 5 * time.Second}
	if m.autoSync {
		c.AutoSyncInterval = 30 * time.Second
	}
	return c
}

// Close stops the join service and the embedded member, if any. It is idempotent.
func (m *Member) Close() error {
	m.closeOnce.Do(func() {
		var errs []error
		if m.join != nil {
			errs = append(errs, m.join.close())
		}
		if m.etcd != nil {
			m.etcd.close()
		}
		m.closeErr = errors.Join(errs...)
	})
	return m.closeErr
}

// ReadToken returns the join token stored under dataDir (for `pier cluster token`).
func ReadToken(dataDir string) (string, error) {
	b, err := os.ReadFile(filepath.Join(dataDir, FileToken))
	if errors.Is(err, fs.ErrNotExist) {
		return "", errdefs.NotFound("no join token in %s: this node does not hold an etcd member", dataDir)
	}
	if err != nil {
		return "", err
	}
	t, err := ParseToken(string(b))
	if err != nil {
		return "", err
	}
	return t.String(), nil
}

// nodeTLS loads the node's certificate and the CA from dir into a client TLS config.
func nodeTLS(dir string) (*tls.Config, *ca, error) {
	caPEM, err := os.ReadFile(filepath.Join(dir, FileCACert))
	if err != nil {
		return nil, nil, err
	}
	keyPEM, err := os.ReadFile(filepath.Join(dir, FileCAKey))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, nil, err
	}
	c, err := parseCA(caPEM, keyPEM)
	if err != nil {
		return nil, nil, err
	}
	pair, err := tls.LoadX509KeyPair(filepath.Join(dir, FileCert), filepath.Join(dir, FileKey))
	if err != nil {
		return nil, nil, fmt.Errorf("node certificate: %w", err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: c.pool(), MinVersion: tls.VersionTLS12}, c, nil
}
