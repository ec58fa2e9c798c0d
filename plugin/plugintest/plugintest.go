// Package plugintest is a scripted plugin for unit tests: it listens on a unix socket
// in a test's temp dir, records every call and answers from a table.
package plugintest

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/piernet/pier/plugin"
)

// Reply is a scripted answer.
type Reply struct {
	Status int    // 0 = 200
	Body   string // raw reply body
	Hang   bool   // never answer (until the client gives up)
	Drop   bool   // close the connection without answering
}

// Server is a scripted plugin.
type Server struct {
	Sock string

	mu      sync.Mutex // guards the fields below
	replies map[string]Reply
	calls   []Call
}

// Call is one recorded request.
type Call struct {
	Method string
	Body   string
	Accept string
}

// New starts a plugin implementing subsystems that answers Plugin.Activate and, for
// other methods, from Set (unset methods get 404, as from a plugin without them).
func New(t testing.TB, subsystems ...string) *Server {
	t.Helper()
	s := &Server{Sock: filepath.Join(t.TempDir(), "p.sock"), replies: map[string]Reply{}}
	s.Set("Plugin.Activate", Reply{Body: fmt.Sprintf(`{"Implements": [%s]}`, quoteAll(subsystems))})
	l, err := net.Listen("unix", s.Sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: s}
	go srv.Serve(l)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		srv.Close()
	})
	return s
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// Set scripts the reply to method ("NetworkDriver.Join").
func (s *Server) Set(method string, r Reply) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replies[method] = r
}

// OK scripts a 200 reply with body.
func (s *Server) OK(method, body string) { s.Set(method, Reply{Body: body}) }

// Spec is where the plugin listens.
func (s *Server) Spec(name string) plugin.Spec {
	return plugin.Spec{Name: name, Addr: "unix://" + s.Sock, Source: s.Sock}
}

// Plugin activates the plugin as name with the given per-call timeout.
func (s *Server) Plugin(t testing.TB, name string, timeout time.Duration) *plugin.Plugin {
	t.Helper()
	c, err := plugin.NewClient(s.Spec(name), timeout)
	if err != nil {
		t.Fatal(err)
	}
	impl, err := plugin.Activate(t.Context(), c)
	if err != nil {
		t.Fatal(err)
	}
	return &plugin.Plugin{Name: name, Implements: impl, Client: c}
}

// Calls returns the recorded calls, except Plugin.Activate.
func (s *Server) Calls() []Call {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []Call
	for _, c := range s.calls {
		if c.Method != "Plugin.Activate" {
			out = append(out, c)
		}
	}
	return out
}

// Methods returns the recorded methods, in order, except Plugin.Activate.
func (s *Server) Methods() []string {
	var out []string
	for _, c := range s.Calls() {
		out = append(out, c.Method)
	}
	return out
}

// Transcript prints the recorded calls as "POST /method" and the body, for golden files.
func (s *Server) Transcript() string {
	var b strings.Builder
	for _, c := range s.Calls() {
		fmt.Fprintf(&b, "POST /%s\n%s", c.Method, c.Body)
		if c.Body == "" || !strings.HasSuffix(c.Body, "\n") {
			b.WriteString("\n")
		}
	}
	return b.String()
}

// Reset forgets the recorded calls.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = nil
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	method := strings.TrimPrefix(r.URL.Path, "/")
	s.mu.Lock()
	s.calls = append(s.calls, Call{Method: method, Body: string(body), Accept: r.Header.Get("Accept")})
	rep, ok := s.replies[method]
	s.mu.Unlock()
	switch {
	case !ok:
		http.NotFound(w, r)
	case rep.Hang:
		<-r.Context().Done()
	case rep.Drop:
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	default:
		if rep.Status != 0 {
			w.WriteHeader(rep.Status)
		}
		io.WriteString(w, rep.Body)
	}
}
