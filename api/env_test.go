package api

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/internal/stacktest"
	"github.com/piernet/pier/ipam"
	"github.com/piernet/pier/stack"
)

// env is a real controller in a fresh network namespace behind an API server.
// Tests that build their own env run with t.Parallel(), except those that create
// services: see stack/helpers_test.go.
type env struct {
	t        testing.TB
	hostPath string
	st       *stack.Stack
	srv      *Server
	execRoot string
}

func newEnv(t testing.TB) *env {
	t.Helper()
	h := stacktest.NewHost(t, "nameserver 192.0.2.53\n")
	log := h.Logger
	e := &env{t: t, hostPath: h.NetNS, execRoot: h.ExecRoot}
	st, err := stack.Open(t.Context(), stack.Options{DataRoot: h.DataRoot, ExecRoot: e.execRoot,
		HostNetNS: h.NetNS, HostResolvConf: h.ResolvConf, Logger: log,
		DefaultPools: []ipam.PredefinedPool{{Base: netip.MustParsePrefix("10.128.0.0/9"), Size: 24}}})
	if err != nil {
		t.Fatalf("opening stack: %v", err)
	}
	e.st = st
	t.Cleanup(e.teardown)
	if err := st.Controller.EnsurePredefined(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	e.srv = New(Config{Controller: st.Controller, Logger: log, Version: "test", ID: "test-id",
		DataRoot: h.DataRoot, Drivers: []string{"bridge", "host", "null"}})
	return e
}

// teardown removes every sandbox and network so pinned namespaces are unmounted.
func (e *env) teardown() {
	stacktest.DeleteAll(e.t, e.st.Controller)
	e.st.Close()
	stacktest.Unpin(e.execRoot)
}

// reply is a recorded response.
type reply struct {
	status int
	header http.Header
	body   []byte
}

// message is the error message of an error reply.
func (r reply) message() string {
	var e types.ErrorResponse
	_ = json.Unmarshal(r.body, &e)
	return e.Message
}

func (r reply) decode(t testing.TB, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

// do sends a request to the server; body may be a string (sent as is) or a value
// (sent as JSON).
func (e *env) do(method, path string, body any) reply {
	e.t.Helper()
	var data []byte
	switch b := body.(type) {
	case nil:
	case string:
		data = []byte(b)
	default:
		var err error
		if data, err = json.Marshal(b); err != nil {
			e.t.Fatal(err)
		}
	}
	req := httptest.NewRequestWithContext(e.t.Context(), method, path, bytes.NewReader(data))
	rec := httptest.NewRecorder()
	e.srv.ServeHTTP(rec, req)
	return reply{status: rec.Code, header: rec.Header(), body: rec.Body.Bytes()}
}

// must sends a request and fails the test unless the status is want.
func (e *env) must(want int, method, path string, body any) reply {
	e.t.Helper()
	r := e.do(method, path, body)
	if r.status != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body)
	}
	return r
}

// state is a text dump of networks, their endpoints and the sandboxes, to prove that a
// failed request changed nothing.
func (e *env) state() string {
	e.t.Helper()
	ctx := context.Background()
	var b strings.Builder
	for _, n := range e.st.Controller.Networks(ctx) {
		eps, _ := e.st.Controller.Endpoints(ctx, n.ID)
		b.WriteString(n.Name + " " + n.ID[:12])
		for _, ep := range eps {
			b.WriteString(" " + ep.Name + "=" + ep.Addr4.String())
		}
		b.WriteString("\n")
	}
	for _, sb := range e.st.Controller.Sandboxes(ctx) {
		b.WriteString("sandbox " + sb.Name + "\n")
	}
	return b.String()
}
