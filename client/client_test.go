package client

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/moby/moby/api/types/network"

	"github.com/piernet/pier/api/types"
)

// seen is one request as the server received it.
type seen struct {
	Method, Path, Query string
	Body                map[string]any // decoded JSON body, nil when empty
}

// recorder is an httptest server that records requests and replies with a fixed
// status and body.
type recorder struct {
	srv    *httptest.Server
	got    []seen
	status int
	reply  string
	header http.Header
}

func newRecorder(t *testing.T, status int, reply string) (*recorder, *Client) {
	t.Helper()
	r := &recorder{status: status, reply: reply, header: http.Header{}}
	r.srv = httptest.NewServer(http.HandlerFunc(r.serve))
	t.Cleanup(r.srv.Close)
	c, err := New("tcp://" + r.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	return r, c
}

func (r *recorder) serve(w http.ResponseWriter, req *http.Request) {
	data, _ := io.ReadAll(req.Body)
	s := seen{Method: req.Method, Path: req.URL.EscapedPath(), Query: req.URL.RawQuery}
	if len(data) > 0 {
		if err := json.Unmarshal(data, &s.Body); err != nil {
			s.Body = map[string]any{"invalid JSON": string(data)}
		}
	}
	r.got = append(r.got, s)
	for k, v := range r.header {
		w.Header()[k] = v
	}
	w.WriteHeader(r.status)
	_, _ = io.WriteString(w, r.reply)
}

// obj decodes a JSON literal for expectations.
func obj(t *testing.T, s string) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("bad test JSON %s: %v", s, err)
	}
	return m
}

var equateNetip = cmpopts.EquateComparable(netip.Addr{}, netip.Prefix{})

func TestRequests(t *testing.T) {
	tests := []struct {
		name   string
		status int
		reply  string
		call   func(ctx context.Context, c *Client) (any, error)
		want   seen
		result any
	}{{
		name: "list with filters", status: 200, reply: `[{"Name":"app","Id":"abc","Driver":"bridge"}]`,
		call: func(ctx context.Context, c *Client) (any, error) {
			return c.NetworkList(ctx, Filters{"name": {"app"}, "driver": {"bridge"}})
		},
		want:   seen{Method: "GET", Path: "/networks", Query: "filters=%7B%22driver%22%3A%7B%22bridge%22%3Atrue%7D%2C%22name%22%3A%7B%22app%22%3Atrue%7D%7D"},
		result: []network.Summary{{Network: network.Network{Name: "app", ID: "abc", Driver: "bridge"}}},
	}, {
		name: "list without filters", status: 200, reply: `[]`,
		call:   func(ctx context.Context, c *Client) (any, error) { return c.NetworkList(ctx, nil) },
		want:   seen{Method: "GET", Path: "/networks"},
		result: []network.Summary{},
	}, {
		name: "inspect escapes", status: 200, reply: `{"Name":"a/b","IPAM":{"Config":[{"Subnet":"10.1.0.0/24"}]}}`,
		call: func(ctx context.Context, c *Client) (any, error) { return c.NetworkInspect(ctx, "a/b") },
		want: seen{Method: "GET", Path: "/networks/a%2Fb"},
		result: network.Inspect{Network: network.Network{Name: "a/b", IPAM: network.IPAM{
			Config: []network.IPAMConfig{{Subnet: netip.MustParsePrefix("10.1.0.0/24")}}}}},
	}, {
		name: "create", status: 201, reply: `{"Id":"n1","Warning":"w"}`,
		call: func(ctx context.Context, c *Client) (any, error) {
			v6 := true
			return c.NetworkCreate(ctx, network.CreateRequest{Name: "app", Driver: "bridge", EnableIPv6: &v6,
				Internal: true, Labels: map[string]string{"k": "v"},
				IPAM: &network.IPAM{Config: []network.IPAMConfig{{Subnet: netip.MustParsePrefix("10.1.0.0/24"),
					Gateway: netip.MustParseAddr("10.1.0.1"), AuxAddress: map[string]netip.Addr{"r": netip.MustParseAddr("10.1.0.9")}}}}})
		},
		want: seen{Method: "POST", Path: "/networks/create", Body: obj(t, `{"Name":"app","Driver":"bridge","Scope":"",
			"EnableIPv6":true,"Internal":true,"Attachable":false,"Ingress":false,"ConfigOnly":false,"ConfigFrom":null,
			"Options":null,"Labels":{"k":"v"},"IPAM":{"Driver":"","Options":null,"Config":[{"Subnet":"10.1.0.0/24",
			"Gateway":"10.1.0.1","AuxiliaryAddresses":{"r":"10.1.0.9"}}]}}`)},
		result: network.CreateResponse{ID: "n1", Warning: "w"},
	}, {
		name: "remove", status: 204,
		call: func(ctx context.Context, c *Client) (any, error) { return nil, c.NetworkRemove(ctx, "app") },
		want: seen{Method: "DELETE", Path: "/networks/app"},
	}, {
		name: "connect", status: 200,
		call: func(ctx context.Context, c *Client) (any, error) {
			return nil, c.NetworkConnect(ctx, "app", network.ConnectRequest{Container: "web",
				EndpointConfig: &network.EndpointSettings{Aliases: []string{"w"},
					IPAMConfig: &network.EndpointIPAMConfig{IPv4Address: netip.MustParseAddr("10.1.0.5")}}})
		},
		want: seen{Method: "POST", Path: "/networks/app/connect", Body: obj(t, `{"Container":"web","EndpointConfig":{
			"IPAMConfig":{"IPv4Address":"10.1.0.5"},"Links":null,"Aliases":["w"],"DriverOpts":null,"GwPriority":0,
			"NetworkID":"","EndpointID":"","Gateway":"","IPAddress":"","MacAddress":"","IPPrefixLen":0,
			"IPv6Gateway":"","GlobalIPv6Address":"","GlobalIPv6PrefixLen":0,"DNSNames":null}}`)},
	}, {
		name: "disconnect", status: 200,
		call: func(ctx context.Context, c *Client) (any, error) {
			return nil, c.NetworkDisconnect(ctx, "app", network.DisconnectRequest{Container: "web", Force: true})
		},
		want: seen{Method: "POST", Path: "/networks/app/disconnect", Body: obj(t, `{"Container":"web","Force":true}`)},
	}, {
		name: "prune", status: 200, reply: `{"NetworksDeleted":["a","b"]}`,
		call: func(ctx context.Context, c *Client) (any, error) {
			return c.NetworksPrune(ctx, Filters{"label": {"x=y"}})
		},
		want:   seen{Method: "POST", Path: "/networks/prune", Query: "filters=%7B%22label%22%3A%7B%22x%3Dy%22%3Atrue%7D%7D"},
		result: network.PruneReport{NetworksDeleted: []string{"a", "b"}},
	}, {
		name: "sandbox create", status: 201, reply: `{"ID":"s1","Name":"web","Key":"/run/pier/netns/s1"}`,
		call: func(ctx context.Context, c *Client) (any, error) {
			return c.SandboxCreate(ctx, types.SandboxCreateRequest{Name: "web", Hostname: "h",
				Networks: []types.SandboxNetwork{{Network: "app", IPv4Address: "10.1.0.5", Aliases: []string{"w"}}},
				DNS:      []string{"1.1.1.1"}, ExtraHosts: []string{"db:10.0.0.1"}})
		},
		want: seen{Method: "POST", Path: "/pier/v1/sandboxes", Body: obj(t, `{"Name":"web","Hostname":"h",
			"HostNetwork":false,"Networks":[{"Network":"app","IPv4Address":"10.1.0.5","IPv6Address":"","Aliases":["w"]}],
			"DNS":["1.1.1.1"],"DNSSearch":null,"DNSOptions":null,"ExtraHosts":["db:10.0.0.1"]}`)},
		result: types.SandboxInfo{ID: "s1", Name: "web", Key: "/run/pier/netns/s1"},
	}, {
		name: "sandbox list", status: 200, reply: `[{"ID":"s1"},{"ID":"s2"}]`,
		call:   func(ctx context.Context, c *Client) (any, error) { return c.SandboxList(ctx) },
		want:   seen{Method: "GET", Path: "/pier/v1/sandboxes"},
		result: []types.SandboxInfo{{ID: "s1"}, {ID: "s2"}},
	}, {
		name: "sandbox inspect", status: 200, reply: `{"ID":"s1","Endpoints":[{"Network":"app","IPv4Address":"10.1.0.5/24"}]}`,
		call: func(ctx context.Context, c *Client) (any, error) { return c.SandboxInspect(ctx, "web") },
		want: seen{Method: "GET", Path: "/pier/v1/sandboxes/web"},
		result: types.SandboxInfo{ID: "s1", Endpoints: []types.SandboxEndpoint{
			{Network: "app", IPv4Address: "10.1.0.5/24"}}},
	}, {
		name: "sandbox remove force", status: 204,
		call: func(ctx context.Context, c *Client) (any, error) {
			return nil, c.SandboxRemove(ctx, "web", SandboxRemoveOptions{Force: true})
		},
		want: seen{Method: "DELETE", Path: "/pier/v1/sandboxes/web", Query: "force=true"},
	}, {
		name: "sandbox remove", status: 204,
		call: func(ctx context.Context, c *Client) (any, error) {
			return nil, c.SandboxRemove(ctx, "web", SandboxRemoveOptions{})
		},
		want: seen{Method: "DELETE", Path: "/pier/v1/sandboxes/web"},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec, c := newRecorder(t, tt.status, tt.reply)
			res, err := tt.call(t.Context(), c)
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			if diff := cmp.Diff([]seen{tt.want}, rec.got); diff != "" {
				t.Errorf("request (-want +got):\n%s", diff)
			}
			if tt.result != nil {
				if diff := cmp.Diff(tt.result, res, equateNetip); diff != "" {
					t.Errorf("result (-want +got):\n%s", diff)
				}
			}
		})
	}
}

func TestPing(t *testing.T) {
	rec, c := newRecorder(t, 200, "OK")
	rec.header.Set("Api-Version", "1.50")
	rec.header.Set("Ostype", "linux")
	got, err := c.Ping(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if want := (PingResult{APIVersion: "1.50", OSType: "linux"}); got != want {
		t.Errorf("Ping = %+v, want %+v", got, want)
	}
}

func TestAPIErrors(t *testing.T) {
	tests := []struct {
		name   string
		status int
		reply  string
		want   APIError
	}{
		{"docker message", 404, `{"message":"network app not found"}`, APIError{404, "network app not found"}},
		{"plain text", 500, "boom\n", APIError{500, "boom"}},
		{"empty", 409, "", APIError{409, "conflict"}},
		{"json without message", 400, `{"error":"x"}`, APIError{400, `{"error":"x"}`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, c := newRecorder(t, tt.status, tt.reply)
			err := c.NetworkRemove(t.Context(), "app")
			var apiErr *APIError
			if !errors.As(err, &apiErr) {
				t.Fatalf("error %v (%T) is not an *APIError", err, err)
			}
			if *apiErr != tt.want {
				t.Errorf("got %+v, want %+v", *apiErr, tt.want)
			}
			if err.Error() != tt.want.Message {
				t.Errorf("Error() = %q, want %q", err.Error(), tt.want.Message)
			}
		})
	}
}

func TestErrorHelpers(t *testing.T) {
	nf := &APIError{Status: 404, Message: "x"}
	if !IsNotFound(nf) || IsConflict(nf) || StatusOf(errors.New("x")) != 0 {
		t.Error("helpers misclassify")
	}
	wrapped := errors.Join(errors.New("ctx"), &APIError{Status: 409})
	if !IsConflict(wrapped) {
		t.Error("IsConflict does not see a wrapped error")
	}
}

func TestNewHosts(t *testing.T) {
	tests := []struct {
		host, base, err string
	}{
		{"", "http://pier", ""},
		{"unix:///tmp/x.sock", "http://pier", ""},
		{"tcp://127.0.0.1:2375", "http://127.0.0.1:2375", ""},
		{"tcp://localhost", "", "missing port"},
		{"/run/pier/pier.sock", "", "want unix:///path"},
		{"http://x:1", "", "unsupported scheme"},
		{"unix://", "", "want unix:///path"},
	}
	for _, tt := range tests {
		c, err := New(tt.host)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("New(%q) error = %v, want it to contain %q", tt.host, err, tt.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("New(%q): %v", tt.host, err)
			continue
		}
		if c.baseURL != tt.base {
			t.Errorf("New(%q) base = %q, want %q", tt.host, c.baseURL, tt.base)
		}
	}
}

func TestUnixSocket(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "pier.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, `[{"ID":"s1","Name":"web"}]`)
	}))
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	c, err := New("unix://" + sock)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.SandboxList(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].Name != "web" {
		t.Errorf("SandboxList = %+v", got)
	}
}

func TestConnError(t *testing.T) {
	c, err := New("unix://" + filepath.Join(t.TempDir(), "missing.sock"))
	if err != nil {
		t.Fatal(err)
	}
	err = c.NetworkRemove(t.Context(), "x")
	var ce *ConnError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "is pierd running?") {
		t.Errorf("error = %v, want a *ConnError", err)
	}
}

func TestContextCanceled(t *testing.T) {
	_, c := newRecorder(t, 200, "[]")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := c.NetworkList(ctx, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("error = %v, want context.Canceled", err)
	}
}

func TestTLS(t *testing.T) {
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "OK")
	}))
	t.Cleanup(srv.Close)
	ca := filepath.Join(t.TempDir(), "ca.pem")
	pemData := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srv.Certificate().Raw})
	if err := os.WriteFile(ca, pemData, 0o600); err != nil {
		t.Fatal(err)
	}
	host := "tcp://" + srv.Listener.Addr().String()
	c, err := New(host, WithTLS(TLSConfig{CAFile: ca}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Ping(t.Context()); err != nil {
		t.Errorf("Ping over TLS: %v", err)
	}
	plain, err := New(host, WithTLS(TLSConfig{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := plain.Ping(t.Context()); err == nil {
		t.Error("Ping without the CA succeeded, want a certificate error")
	}
	if _, err := New(host, WithTLS(TLSConfig{CertFile: "x"})); err == nil {
		t.Error("a certificate without key was accepted")
	}
	if _, err := New("unix:///x.sock", WithTLS(TLSConfig{})); err == nil {
		t.Error("TLS on a unix socket was accepted")
	}
}

func TestParseFilter(t *testing.T) {
	tests := []struct{ in, term, value, err string }{
		{"name=app", "name", "app", ""},
		{"label=a=b", "label", "a=b", ""},
		{"dangling=true", "dangling", "true", ""},
		{"name", "", "", "want term=value"},
		{"=x", "", "", "want term=value"},
	}
	for _, tt := range tests {
		term, value, err := ParseFilter(tt.in)
		if tt.err != "" {
			if err == nil || !strings.Contains(err.Error(), tt.err) {
				t.Errorf("ParseFilter(%q) error = %v, want %q", tt.in, err, tt.err)
			}
			continue
		}
		if err != nil || term != tt.term || value != tt.value {
			t.Errorf("ParseFilter(%q) = %q, %q, %v", tt.in, term, value, err)
		}
	}
}
