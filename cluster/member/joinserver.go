package member

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/piernet/pier/errdefs"
)

// joinPath is the join service's only route.
const joinPath = "/pier/v1/cluster/join"

// joinRequest is what a joiner POSTs. Secret is the token's secret.
type joinRequest struct {
	Secret    string `json:"secret"`
	CSR       string `json:"csr"`       // PEM certificate request
	Name      string `json:"name"`      // the joiner's node name
	Advertise string `json:"advertise"` // the joiner's address (member certificates name it)
	Member    bool   `json:"member"`    // the joiner may become an etcd member
}

// joinResponse is the join service's answer to an accepted request.
type joinResponse struct {
	Cert    string       `json:"cert"`    // PEM, signed by the cluster CA
	CA      string       `json:"ca"`      // PEM cluster CA certificate
	Members []memberInfo `json:"members"` // the etcd members now
	Member  bool         `json:"member"`  // the joiner is to become an etcd member
	// Only when Member: what an etcd member needs to serve joins itself.
	CAKey  string `json:"ca_key,omitempty"`
	Secret string `json:"secret,omitempty"`
}

type memberInfo struct {
	Name       string   `json:"name"`
	ClientURLs []string `json:"client_urls"`
	PeerURLs   []string `json:"peer_urls"`
}

type errorResponse struct {
	Message string `json:"message"`
}

// joinServer is the HTTPS join service of an etcd member.
type joinServer struct {
	ca     *ca
	secret string
	max    int
	cli    *clientv3.Client
	log    *slog.Logger
	srv    *http.Server
	done   chan struct{}

	mu sync.Mutex // serialises join decisions on this node
}

// serveJoins starts the join service on the member's advertise address and join port.
func (m *Member) serveJoins(o Options, st state, c *ca) error {
	tok, err := ParseToken(m.token)
	if err != nil {
		return err
	}
	cli, err := clientv3.New(m.ClientConfig())
	if err != nil {
		return fmt.Errorf("etcd client for the join service: %w", err)
	}
	leaf := m.tls.Certificates[0]
	leaf.Certificate = append(leaf.Certificate[:1:1], c.cert.Raw) // send the CA: joiners pin it
	addr := net.JoinHostPort(st.Advertise.String(), strconv.Itoa(st.JoinPort))
	ln, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12})
	if err != nil {
		cli.Close()
		return errdefs.Unavailable("join service on %s: %w", addr, err)
	}
	js := &joinServer{ca: c, secret: tok.Secret, max: o.MaxMembers, cli: cli, log: o.Logger.With("component", "cluster-join"), done: make(chan struct{})}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+joinPath, js.handle)
	js.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, ErrorLog: slog.NewLogLogger(slog.DiscardHandler, slog.LevelError)}
	go func() {
		defer close(js.done)
		js.srv.Serve(ln)
	}()
	m.join = js
	return nil
}

func (js *joinServer) close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err := js.srv.Shutdown(ctx)
	<-js.done
	return errors.Join(err, js.cli.Close())
}

func (js *joinServer) handle(w http.ResponseWriter, r *http.Request) {
	var req joinRequest
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10)).Decode(&req); err != nil {
		writeError(w, errdefs.InvalidArgument("join request: %v", err))
		return
	}
	if !secretEqual(req.Secret, js.secret) {
		js.log.Warn("refused a join with a wrong token", "remote", r.RemoteAddr, "name", req.Name)
		writeError(w, errdefs.Forbidden("wrong join token: use the token printed by --cluster-init (pier cluster token) on a member of this cluster"))
		return
	}
	resp, err := js.accept(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	js.log.Info("node joined", "name", req.Name, "remote", r.RemoteAddr, "member", resp.Member)
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(resp)
}

// accept signs the joiner's certificate and decides whether it becomes a member.
func (js *joinServer) accept(ctx context.Context, req joinRequest) (*joinResponse, error) {
	csr, err := parseCSR([]byte(req.CSR))
	if err != nil {
		return nil, err
	}
	if err := ValidateName(req.Name); err != nil {
		return nil, err
	}
	js.mu.Lock()
	defer js.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	list, err := js.cli.MemberList(ctx)
	if err != nil {
		return nil, errdefs.Unavailable("listing etcd members: %w", err)
	}
	members := make([]memberInfo, 0, len(list.Members))
	for _, mm := range list.Members {
		if mm.Name == req.Name {
			return nil, errdefs.Conflict("an etcd member named %q already exists: choose another --node-name", req.Name)
		}
		members = append(members, memberInfo{Name: mm.Name, ClientURLs: mm.ClientURLs, PeerURLs: mm.PeerURLs})
	}
	member := req.Member && len(list.Members) < js.max
	var adv = parseAdvertise(req.Advertise)
	if member && !adv.IsValid() {
		return nil, errdefs.InvalidArgument("joiner advertise address %q is not an IP address", req.Advertise)
	}
	crt, err := js.ca.sign(req.Name, csr.PublicKey, member, adv)
	if err != nil {
		return nil, err
	}
	resp := &joinResponse{Cert: string(crt), CA: string(js.ca.certPEM), Members: members, Member: member}
	if member {
		resp.CAKey, resp.Secret = string(js.ca.keyPEM), js.secret
	}
	return resp, nil
}

func writeError(w http.ResponseWriter, err error) {
	status := http.StatusInternalServerError
	switch errdefs.KindOf(err) {
	case errdefs.KindInvalidArgument:
		status = http.StatusBadRequest
	case errdefs.KindForbidden:
		status = http.StatusForbidden
	case errdefs.KindConflict:
		status = http.StatusConflict
	case errdefs.KindUnavailable:
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(errorResponse{Message: err.Error()})
}
