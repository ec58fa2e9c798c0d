// Package client is the typed Go client of pierd's HTTP API: the network part of the
// Docker Engine API (/networks...) and pier's own sandbox routes (/pier/v1/sandboxes).
//
// It owns the transport (unix socket or TCP, optionally mutual TLS), request encoding
// and error decoding. Bodies use Docker's types (github.com/moby/moby/api/types/network)
// and pier's (github.com/piernet/pier/api/types). It must not interpret what the
// server returns beyond decoding it: presentation belongs to the CLI.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// DefaultHost is where pierd listens by default.
const DefaultHost = "unix:///run/pier/pier.sock"

// maxErrorBody caps how much of an error reply is read.
const maxErrorBody = 64 << 10

// Client talks to one pierd. It is safe for concurrent use.
type Client struct {
	host    string // as given to New, for messages
	baseURL string // scheme://authority, without a trailing slash
	http    *http.Client
}

// Option configures a Client.
type Option func(*options)

type options struct {
	tls     *TLSConfig
	timeout time.Duration
}

// WithTLS makes a tcp:// client speak TLS with cfg (mutual TLS when a client
// certificate is given).
func WithTLS(cfg TLSConfig) Option { return func(o *options) { o.tls = &cfg } }

// WithTimeout bounds every request (0, the default, leaves it to the caller's ctx).
func WithTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// New returns a client for host: "unix:///path/to/sock" or "tcp://host:port".
// An empty host means DefaultHost.
func New(host string, opts ...Option) (*Client, error) {
	if host == "" {
		host = DefaultHost
	}
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	tr, base, err := transport(host, o.tls)
	if err != nil {
		return nil, err
	}
	return &Client{host: host, baseURL: base, http: &http.Client{Transport: tr, Timeout: o.timeout}}, nil
}

// Host returns the address the client talks to, as given to New.
func (c *Client) Host() string { return c.host }

// transport builds the HTTP transport and base URL for host.
func transport(host string, tlsCfg *TLSConfig) (*http.Transport, string, error) {
	scheme, addr, ok := strings.Cut(host, "://")
	if !ok || addr == "" {
		return nil, "", fmt.Errorf("invalid host %q: want unix:///path/to/socket or tcp://host:port", host)
	}
	tr := &http.Transport{MaxIdleConns: 4, IdleConnTimeout: 30 * time.Second}
	switch scheme {
	case "unix":
		if tlsCfg != nil {
			return nil, "", fmt.Errorf("invalid host %q: TLS is only for tcp:// hosts", host)
		}
		d := net.Dialer{}
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", addr)
		}
		return tr, "http://pier", nil
	case "tcp":
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, "", fmt.Errorf("invalid host %q: %w", host, err)
		}
		if tlsCfg == nil {
			return tr, "http://" + addr, nil
		}
		cfg, err := tlsCfg.config()
		if err != nil {
			return nil, "", err
		}
		tr.TLSClientConfig = cfg
		return tr, "https://" + addr, nil
	}
	return nil, "", fmt.Errorf("invalid host %q: unsupported scheme %q (want unix or tcp)", host, scheme)
}

// request is one API call.
type request struct {
	method string
	path   string     // already escaped
	query  url.Values // may be nil
	body   any        // JSON-encoded when non-nil
}

// do sends req and decodes a 2xx JSON reply into out (when out is non-nil). Non-2xx
// replies become *APIError.
func (c *Client) do(ctx context.Context, req request, out any) (*http.Response, error) {
	hreq, err := c.newRequest(ctx, req)
	if err != nil {
		return nil, err
	}
	resp, err := c.http.Do(hreq)
	if err != nil {
		return nil, c.connError(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return resp, decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, resp.Body) // drained for connection reuse
		return resp, nil
	}
	if err := json.NewDecoder(resp.Body).Decode(out); err != nil {
		return resp, fmt.Errorf("decoding reply to %s %s: %w", req.method, req.path, err)
	}
	return resp, nil
}

func (c *Client) newRequest(ctx context.Context, req request) (*http.Request, error) {
	u := c.baseURL + req.path
	if len(req.query) > 0 {
		u += "?" + req.query.Encode()
	}
	var body io.Reader
	if req.body != nil {
		data, err := json.Marshal(req.body)
		if err != nil {
			return nil, fmt.Errorf("encoding %s %s body: %w", req.method, req.path, err)
		}
		body = bytes.NewReader(data)
	}
	hreq, err := http.NewRequestWithContext(ctx, req.method, u, body)
	if err != nil {
		return nil, fmt.Errorf("building request %s %s: %w", req.method, req.path, err)
	}
	if body != nil {
		hreq.Header.Set("Content-Type", "application/json")
	}
	return hreq, nil
}

// connError explains a transport failure the way docker does.
func (c *Client) connError(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return &ConnError{Host: c.host, Err: err}
}

// ConnError is returned when pierd cannot be reached.
type ConnError struct {
	Host string
	Err  error
}

func (e *ConnError) Error() string {
	return fmt.Sprintf("cannot connect to pierd at %s (is pierd running?): %v", e.Host, e.Err)
}

func (e *ConnError) Unwrap() error { return e.Err }

// escape escapes one path segment (a network or sandbox name/ID).
func escape(s string) string { return url.PathEscape(s) }
