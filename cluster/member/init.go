package member

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"go.etcd.io/etcd/server/v3/embed"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/internal/undo"
)

// Init creates a cluster: the cluster CA, this node's member certificate and join
// token under o.DataDir, then starts the first embedded etcd member and the join
// service. On a data dir that already holds a node's state, Init resumes that node
// (member or client-only) from disk instead: no new CA, no token needed.
func Init(ctx context.Context, o Options) (*Member, error) {
	if err := o.defaults(); err != nil {
		return nil, err
	}
	if m, ok, err := resumeIfSetUp(ctx, o); ok || err != nil {
		return m, err
	}
	if err := ValidateName(o.Name); err != nil {
		return nil, err
	}
	if err := o.needAdvertise(); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(o.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("cluster data dir: %w", err)
	}
	var u undo.Stack
	m, err := initNew(ctx, o, &u)
	if err != nil {
		return nil, u.Rollback(err)
	}
	u.Release()
	return m, nil
}

// initNew writes the CA, the member certificate, the token and the state, then starts
// the member. Every file written is pushed on u for removal on failure.
func initNew(ctx context.Context, o Options, u *undo.Stack) (*Member, error) {
	c, err := newCA(o.Name)
	if err != nil {
		return nil, err
	}
	key, err := newKey()
	if err != nil {
		return nil, err
	}
	crt, err := c.sign(o.Name, &key.PublicKey, true, o.Advertise)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(key)
	if err != nil {
		return nil, err
	}
	secret, err := newSecret()
	if err != nil {
		return nil, err
	}
	tok := Token{Fingerprint: fingerprint(c.cert), Secret: secret}
	st := state{Name: o.Name, Member: true, Advertise: o.Advertise, ClientPort: o.ClientPort, PeerPort: o.PeerPort, JoinPort: o.JoinPort}
	files := []file{
		{FileCACert, c.certPEM, 0o644}, {FileCAKey, c.keyPEM, 0o600},
		{FileCert, crt, 0o644}, {FileKey, keyPEM, 0o600},
		{FileToken, []byte(tok.String() + "\n"), 0o600},
	}
	if err := writeFiles(o.DataDir, files, u); err != nil {
		return nil, err
	}
	if err := writeState(o.DataDir, st, u); err != nil {
		return nil, err
	}
	return startMember(ctx, o, st, embed.ClusterStateFlagNew, []peer{{st.Name, st.peerURL()}}, nil)
}

// file is one file to write under the data dir.
type file struct {
	name string
	data []byte
	perm os.FileMode
}

func writeFiles(dir string, files []file, u *undo.Stack) error {
	for _, f := range files {
		path := filepath.Join(dir, f.name)
		if err := writeFile(dir, f.name, f.data, f.perm); err != nil {
			return fmt.Errorf("writing %s: %w", path, err)
		}
		u.Push(func() error { return ignoreNotExist(os.Remove(path)) })
	}
	return nil
}

// writeState records st (the commit point of a node's set-up) and registers the
// removal of the state and of the etcd data dir on u.
func writeState(dir string, st state, u *undo.Stack) error {
	u.Push(func() error { return os.RemoveAll(filepath.Join(dir, DirEtcd)) })
	u.Push(func() error { return ignoreNotExist(os.Remove(filepath.Join(dir, FileState))) })
	if err := saveState(dir, st); err != nil {
		return fmt.Errorf("writing cluster state: %w", err)
	}
	return nil
}

func ignoreNotExist(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// resumeIfSetUp resumes the node recorded under o.DataDir, if there is one.
func resumeIfSetUp(ctx context.Context, o Options) (*Member, bool, error) {
	st, ok, err := loadState(o.DataDir)
	if !ok || err != nil {
		return nil, false, err
	}
	if o.Advertise.IsValid() && st.Member && o.Advertise != st.Advertise {
		return nil, true, errdefs.Conflict("cluster data dir %s belongs to the etcd member %q advertised at %s, not %s: use that address, or remove the member and the dir to set the node up again",
			o.DataDir, st.Name, st.Advertise, o.Advertise)
	}
	if o.Name != st.Name {
		o.Logger.Warn("resuming cluster node under its recorded name", "name", st.Name, "requested", o.Name)
	}
	if !st.Member {
		m, err := clientMember(o, st)
		return m, true, err
	}
	// initial cluster and state are ignored by etcd when its data dir has a WAL.
	m, err := startMember(ctx, o, st, embed.ClusterStateFlagExisting, []peer{{st.Name, st.peerURL()}}, nil)
	return m, true, err
}

// clientMember is a client-only node's Member, from its files.
func clientMember(o Options, st state) (*Member, error) {
	tc, _, err := nodeTLS(o.DataDir)
	if err != nil {
		return nil, fmt.Errorf("resuming cluster node %q: %w", st.Name, err)
	}
	return &Member{name: st.Name, clientURLs: st.Endpoints, tls: tc, autoSync: true, zl: zapLogger(o.Logger)}, nil
}

// startMember starts the embedded member, runs after (if not nil; a joiner's
// promotion) and then starts the join service.
func startMember(ctx context.Context, o Options, st state, clusterState string, initial []peer, after func(context.Context) error) (*Member, error) {
	tc, c, err := nodeTLS(o.DataDir)
	if err != nil {
		return nil, err
	}
	tok, err := ReadToken(o.DataDir)
	if err != nil {
		return nil, err
	}
	zl := zapLogger(o.Logger)
	em, err := startEtcd(ctx, o.DataDir, st, o, zl, clusterState, initial)
	if err != nil {
		return nil, err
	}
	m := &Member{name: st.Name, member: true, clientURLs: []string{st.clientURL()}, tls: tc, token: tok, autoSync: true, zl: zl, etcd: em}
	if after != nil {
		if err := after(ctx); err != nil {
			m.Close()
			return nil, err
		}
		// The promotion is decided by the others; this member serves clients only
		// once it has applied it ("rpc not supported for learner" until then).
		if err := em.waitVoter(ctx); err != nil {
			m.Close()
			return nil, err
		}
	}
	if err := m.serveJoins(o, st, c); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}
