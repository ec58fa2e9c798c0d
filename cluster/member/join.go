package member

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
)

// Join adds this node to the cluster of o.JoinURL with o.Token: it gets a
// certificate from the join service, then, if the service says so (fewer than
// o.MaxMembers members) and o.ClientOnly is not set, adds an etcd member (as a learner,
// promoted once in sync) and serves joins too; otherwise it is a client-only node.
// A wrong or missing token is refused before anything is written. On a data dir
// that already holds a node's state, Join resumes that node without a token (a token
// of another cluster is refused).
func Join(ctx context.Context, o Options) (*Member, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	tok, tokErr := ParseToken(o.Token)
	if err := checkSameCluster(o, tok, tokErr); err != nil {
		return nil, err
	}
	if m, ok, err := resumeIfSetUp(ctx, o); ok || err != nil {
		return m, err
	}
	if tokErr != nil {
		return nil, tokErr
	}
	if err := ValidateName(o.Name); err != nil {
		return nil, err
	}
	if err := o.needAdvertise(); err != nil {
		return nil, err
	}
	addr, err := o.joinAddr()
	if err != nil {
		return nil, err
	}
	csrPEM, keyPEM, err := newCSR(o.Name)
	if err != nil {
		return nil, err
	}
	req := joinRequest{Secret: tok.Secret, CSR: string(csrPEM), Name: o.Name, Advertise: o.Advertise.String(), Member: !o.ClientOnly}
	resp, err := requestJoin(ctx, addr, tok, req)
	if err != nil {
		return nil, err
	}
	// Accepted: from here on files are written (and removed again on failure).
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster data dir: %w", err)
	}
	return joinWith(ctx, o, tok, resp, keyPEM)
}

// checkSameCluster refuses a token of another cluster than the one in the data dir.
func checkSameCluster(o Options, tok Token, tokErr error) error {
	if tokErr != nil {
		return nil
	}
	crt, err := os.ReadFile(filepath.Join(o.DataDir, FileCACert))
	if err != nil {
		return nil // nothing set up yet (or Join reports the real problem later)
	}
	c, err := parseCA(crt, nil)
	if err == nil && fingerprint(c.cert) != tok.Fingerprint {
		return errdefs.Conflict("cluster data dir %s belongs to another cluster than the join token's (CA fingerprints differ)", o.DataDir)
	}
	return nil
}

// joinAddr is the join service's host:port: o.JoinAddr, or JoinURL's host and JoinPort.
func (o *Options) joinAddr() (string, error) {
	if o.JoinAddr != "" {
		if _, _, err := net.SplitHostPort(o.JoinAddr); err != nil {
			return "", errdefs.InvalidArgument("join service address %q: want host:port", o.JoinAddr)
		}
		return o.JoinAddr, nil
	}
	hp, err := ParseStoreURL(o.JoinURL)
	if err != nil {
		return "", err
	}
	host, _, _ := net.SplitHostPort(hp)
	return net.JoinHostPort(host, strconv.Itoa(o.JoinPort)), nil
}

// errNotOurCluster is returned by the TLS check when the server's chain does not
// lead to the CA the token names.
var errNotOurCluster = errors.New("the server's certificate is not from the cluster CA named in the join token")

// pinnedTLS trusts exactly the CA whose fingerprint is fp (sent by the server in its
// chain), not the system roots.
func pinnedTLS(fp string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyPeerCertificate: the pin is the trust
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyPinned(raw, fp)
		},
	}
}

func verifyPinned(raw [][]byte, fp string) error {
	var certs []*x509.Certificate
	for _, r := range raw {
		c, err := x509.ParseCertificate(r)
		if err != nil {
			return err
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return errNotOurCluster
	}
	roots := x509.NewCertPool()
	for _, c := range certs[1:] {
		if c.IsCA && fingerprint(c) == fp {
			roots.AddCert(c)
		}
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("%w: %v", errNotOurCluster, err)
	}
	return nil
}

// requestJoin POSTs req to the join service at addr.
func requestJoin(ctx context.Context, addr string, tok Token, req joinRequest) (*joinResponse, error) {
	body, err := json.Marshal(req)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, "https://"+addr+joinPath, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	hr.Header.Set("Content-Type", "application/json")
	tr := &http.Transport{TLSClientConfig: pinnedTLS(tok.Fingerprint)}
	defer tr.CloseIdleConnections()
	res, err := (&http.Client{Transport: tr}).Do(hr)
	if errors.Is(err, errNotOurCluster) {
		return nil, errdefs.Forbidden("join service at %s: %v (wrong join token, or the address of another cluster)", addr, err)
	}
	if err != nil {
		return nil, errdefs.Unavailable("contacting the join service at %s: %w", addr, err)
	}
	defer res.Body.Close()
	dec := json.NewDecoder(http.MaxBytesReader(nil, res.Body, 1<<20))
	if res.StatusCode != http.StatusOK {
		var e errorResponse
		dec.Decode(&e)
		return nil, errdefs.New(kindOfStatus(res.StatusCode), "join refused by %s: %s", addr, e.Message)
	}
	var resp joinResponse
	if err := dec.Decode(&resp); err != nil {
		return nil, errdefs.Unavailable("join service at %s: bad answer: %w", addr, err)
	}
	return &resp, nil
}

func kindOfStatus(code int) errdefs.Kind {
	switch code {
	case http.StatusBadRequest:
		return errdefs.KindInvalidArgument
	case http.StatusForbidden:
		return errdefs.KindForbidden
	case http.StatusConflict:
		return errdefs.KindConflict
	}
	return errdefs.KindUnavailable
}

// joined is a checked join answer: the CA and this node's TLS client configuration.
type joined struct {
	resp *joinResponse
	ca   *ca
	tls  *tls.Config
	cert []byte
	key  []byte
}

func checkAnswer(tok Token, resp *joinResponse, keyPEM []byte) (*joined, error) {
	caKey := []byte(nil)
	if resp.Member {
		caKey = []byte(resp.CAKey)
	}
	c, err := parseCA([]byte(resp.CA), caKey)
	if err != nil {
		return nil, errdefs.Unavailable("join answer: %w", err)
	}
	if fingerprint(c.cert) != tok.Fingerprint {
		return nil, errdefs.Forbidden("join answer: %v", errNotOurCluster)
	}
	pair, err := tls.X509KeyPair([]byte(resp.Cert), keyPEM)
	if err != nil {
		return nil, errdefs.Unavailable("join answer: certificate: %w", err)
	}
	if resp.Member && !secretEqual(resp.Secret, tok.Secret) {
		return nil, errdefs.Unavailable("join answer: the cluster's secret differs from the token's")
	}
	tc := &tls.Config{Certificates: []tls.Certificate{pair}, RootCAs: c.pool(), MinVersion: tls.VersionTLS12}
	return &joined{resp: resp, ca: c, tls: tc, cert: []byte(resp.Cert), key: keyPEM}, nil
}

// joinWith sets the node up from an accepted join: as a member or as a client.
func joinWith(ctx context.Context, o Options, tok Token, resp *joinResponse, keyPEM []byte) (*Member, error) {
	j, err := checkAnswer(tok, resp, keyPEM)
	if err != nil {
		return nil, err
	}
	var u undo.Stack
	var m *Member
	if resp.Member {
		m, err = joinAsMember(ctx, o, tok, j, &u)
	} else {
		m, err = joinAsClient(o, j, &u)
	}
	if err != nil {
		return nil, u.Rollback(err)
	}
	u.Release()
	return m, nil
}

func clientURLsOf(ms []memberInfo) []string {
	var out []string
	for _, m := range ms {
		out = append(out, m.ClientURLs...)
	}
	return out
}

func joinAsClient(o Options, j *joined, u *undo.Stack) (*Member, error) {
	files := []file{{FileCACert, j.ca.certPEM, 0o644}, {FileCert, j.cert, 0o644}, {FileKey, j.key, 0o600}}
	if err := writeFiles(o.DataDir, files, u); err != nil {
		return nil, err
	}
	st := state{Name: o.Name, Advertise: o.Advertise, Endpoints: clientURLsOf(j.resp.Members)}
	if err := writeState(o.DataDir, st, u); err != nil {
		return nil, err
	}
	return clientMember(o, st)
}

// joinAsMember adds a learner for this node, writes the member's files, starts the
// embedded member and promotes it to a voting member once it is in sync.
func joinAsMember(ctx context.Context, o Options, tok Token, j *joined, u *undo.Stack) (*Member, error) {
	zl := zapLogger(o.Logger)
	cli, err := clientv3.New(clientv3.Config{Endpoints: clientURLsOf(j.resp.Members), TLS: j.tls.Clone(), Logger: zl, DialTimeout: 5 * time.Second})
	if err != nil {
		return nil, errdefs.Unavailable("etcd client to the cluster: %w", err)
	}
	defer cli.Close()
	st := state{Name: o.Name, Member: true, Advertise: o.Advertise, ClientPort: o.ClientPort, PeerPort: o.PeerPort, JoinPort: o.JoinPort}
	add, err := addLearner(ctx, cli, st.peerURL(), o.MaxMembers)
	if err != nil {
		return nil, err
	}
	if add == nil { // the cluster filled up meanwhile
		j.resp.Member = false
		return joinAsClient(o, j, u)
	}
	id := add.Member.ID
	u.Push(func() error { return removeMember(ctx, cli, id) })
	files := []file{
		{FileCACert, j.ca.certPEM, 0o644}, {FileCAKey, j.ca.keyPEM, 0o600},
		{FileCert, j.cert, 0o644}, {FileKey, j.key, 0o600},
		{FileToken, []byte(tok.String() + "\n"), 0o600},
	}
	if err := writeFiles(o.DataDir, files, u); err != nil {
		return nil, err
	}
	if err := writeState(o.DataDir, st, u); err != nil {
		return nil, err
	}
	var initial []peer
	for _, mm := range add.Members {
		name := mm.Name
		if mm.ID == id {
			name = st.Name
		}
		for _, pu := range mm.PeerURLs {
			initial = append(initial, peer{name, pu})
		}
	}
	return startMember(ctx, o, st, embed.ClusterStateFlagExisting, initial, func(ctx context.Context) error {
		return promote(ctx, cli, id)
	})
}

// addLearner adds a learner at peerURL unless the cluster already has max members
// (then it returns nil). etcd allows one learner at a time and refuses changes right
// after a promotion until the new member is connected: meanwhile it waits.
func addLearner(ctx context.Context, cli *clientv3.Client, peerURL string, max int) (*clientv3.MemberAddResponse, error) {
	for {
		list, err := cli.MemberList(ctx)
		if err != nil {
			return nil, errdefs.Unavailable("listing etcd members: %w", err)
		}
		if len(list.Members) >= max {
			return nil, nil
		}
		add, err := cli.MemberAddAsLearner(ctx, []string{peerURL})
		if err == nil {
			return add, nil
		}
		if !errors.Is(err, rpctypes.ErrTooManyLearners) && !errors.Is(err, rpctypes.ErrUnhealthy) {
			return nil, errdefs.Unavailable("adding etcd member %s: %w", peerURL, err)
		}
		if err := pause(ctx, 100*time.Millisecond); err != nil {
			return nil, errdefs.Unavailable("adding etcd member %s: another node is still joining: %w", peerURL, err)
		}
	}
}

// promote makes learner id a voting member; etcd refuses until it has caught up.
func promote(ctx context.Context, cli *clientv3.Client, id uint64) error {
	for {
		_, err := cli.MemberPromote(ctx, id)
		if err == nil {
			return nil
		}
		if err := pause(ctx, 50*time.Millisecond); err != nil {
			return errdefs.Unavailable("promoting etcd member %x: %w", id, err)
		}
	}
}

func removeMember(ctx context.Context, cli *clientv3.Client, id uint64) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := cli.MemberRemove(ctx, id); err != nil {
		return fmt.Errorf("removing etcd member %x again: %w", id, err)
	}
	return nil
}

func pause(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
