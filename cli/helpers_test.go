package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
)

// TestMain lets the test binary play pier's namespace child: `pier exec` re-executes
// os.Args[0] (Options.Self) as `__enter ...`.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == enterCommandName {
		os.Exit(Run(context.Background(), os.Args[1:], Options{}))
	}
	os.Exit(m.Run())
}

// request is one request the fake pierd received.
type request struct {
	Method, Path, Query string
	Body                any // decoded JSON, nil when empty
}

// reply is a canned response.
type reply struct {
	status int
	body   string
}

// fakePierd records requests and answers "METHOD /path" from a table; unknown routes
// get 404 with a Docker-style message.
type fakePierd struct {
	srv     *httptest.Server
	replies map[string]reply

	mu  sync.Mutex // guards got
	got []request
}

func newFakePierd(t *testing.T, replies map[string]reply) *fakePierd {
	t.Helper()
	f := &fakePierd{replies: replies}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakePierd) serve(w http.ResponseWriter, r *http.Request) {
	data, _ := io.ReadAll(r.Body)
	req := request{Method: r.Method, Path: r.URL.EscapedPath(), Query: r.URL.Query().Get("filters")}
	if r.URL.Query().Has("force") {
		req.Query = "force=" + r.URL.Query().Get("force")
	}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &req.Body); err != nil {
			req.Body = "invalid JSON: " + string(data)
		}
	}
	f.mu.Lock()
	f.got = append(f.got, req)
	f.mu.Unlock()
	rep, ok := f.replies[r.Method+" "+r.URL.Path]
	if !ok {
		rep = reply{404, `{"message":"no such route in the fake: ` + r.Method + " " + r.URL.Path + `"}`}
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(rep.status)
	_, _ = io.WriteString(w, rep.body)
}

func (f *fakePierd) requests() []request {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]request(nil), f.got...)
}

func (f *fakePierd) host() string { return "tcp://" + f.srv.Listener.Addr().String() }

// result is what one pier invocation printed and returned.
type result struct {
	out, err string
	code     int
}

// pier runs the CLI against the fake (through PIER_HOST) with stdin.
func (f *fakePierd) pier(t *testing.T, stdin string, args ...string) result {
	t.Helper()
	var out, errOut bytes.Buffer
	env := map[string]string{HostEnv: f.host()}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	code := Run(t.Context(), args, Options{
		Streams: Streams{In: strings.NewReader(stdin), Out: &out, Err: &errOut},
		Getenv:  func(k string) string { return env[k] },
		Self:    self,
	})
	return result{out: out.String(), err: errOut.String(), code: code}
}

// jsonValue decodes a JSON literal for expectations.
func jsonValue(t *testing.T, s string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return v
}
