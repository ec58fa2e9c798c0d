package plugin

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/piernet/pier/errdefs"
)

// MediaType is sent in Accept, as Docker does.
const MediaType = "application/vnd.docker.plugins.v1.2+json"

// DefaultTimeout bounds one plugin call unless Options.Timeout says otherwise.
const DefaultTimeout = 10 * time.Second

// maxReply caps a reply body: plugin replies are small; a runaway one is an error.
const maxReply = 4 << 20

// Client makes calls to one plugin: POST /<Subsystem>.<Method> with a JSON body.
// It is safe for concurrent use.
type Client struct {
	name    string
	base    string // scheme://host the requests go to
	http    *http.Client
	timeout time.Duration
}

// NewClient returns a client for the plugin at spec; every call is bounded by timeout
// (DefaultTimeout if zero).
func NewClient(spec Spec, timeout time.Duration) (*Client, error) {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if err := checkAddr(spec.Addr); err != nil {
		return nil, err
	}
	u, _ := url.Parse(spec.Addr)
	tr := &http.Transport{MaxIdleConnsPerHost: 4, IdleConnTimeout: 30 * time.Second, DisableCompression: true}
	base, err := configure(tr, u, spec.TLSConfig)
	if err != nil {
		return nil, fmt.Errorf("plugin %q: %w", spec.Name, err)
	}
	return &Client{name: spec.Name, base: base, http: &http.Client{Transport: tr}, timeout: timeout}, nil
}

// configure sets up the transport for u and returns the base URL of requests.
func configure(tr *http.Transport, u *url.URL, tc *TLSConfig) (string, error) {
	var d net.Dialer
	switch u.Scheme {
	case "unix":
		path := u.Path
		tr.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return d.DialContext(ctx, "unix", path)
		}
		return "http://plugin", nil
	case "tcp", "http":
		if tc == nil {
			return "http://" + u.Host, nil
		}
	}
	cfg, err := tlsConfig(tc)
	if err != nil {
		return "", err
	}
	tr.TLSClientConfig = cfg
	return "https://" + u.Host, nil
}

// tlsConfig builds the client TLS configuration of a .json spec. Unlike Docker, a
// missing CAFile does not turn verification off: the system roots are used.
func tlsConfig(tc *TLSConfig) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if tc == nil {
		return cfg, nil
	}
	cfg.InsecureSkipVerify = tc.InsecureSkipVerify
	if tc.CAFile != "" {
		pem, err := os.ReadFile(tc.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading CA file: %w", err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("CA file %s holds no certificate", tc.CAFile)
		}
	}
	if tc.CertFile != "" || tc.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(tc.CertFile, tc.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("loading client certificate: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// Name is the plugin's name.
func (c *Client) Name() string { return c.name }

// Timeout is the per-call bound.
func (c *Client) Timeout() time.Duration { return c.timeout }

// Call posts req (nil = empty body) to /method and decodes the reply into resp (nil =
// discard). Errors name the plugin and method: a *StatusError when the plugin answered
// with a non-200 status (it refused: see Refused), an Unavailable error when it could
// not be reached or did not answer within the timeout, an Internal error for a reply
// that is not valid JSON.
func (c *Client) Call(ctx context.Context, method string, req, resp any) error {
	body, err := encode(req)
	if err != nil {
		return c.errorf(method, errdefs.KindInternal, "encoding request: %w", err)
	}
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	hreq, err := http.NewRequestWithContext(cctx, http.MethodPost, c.base+"/"+method, bytes.NewReader(body))
	if err != nil {
		return c.errorf(method, errdefs.KindInternal, "%w", err)
	}
	hreq.Header.Set("Accept", MediaType)
	hres, err := c.http.Do(hreq)
	if err != nil {
		return c.transportError(ctx, cctx, method, err)
	}
	defer hres.Body.Close()
	data, err := io.ReadAll(io.LimitReader(hres.Body, maxReply+1))
	if err != nil {
		return c.transportError(ctx, cctx, method, fmt.Errorf("reading reply: %w", err))
	}
	if hres.StatusCode != http.StatusOK {
		return &StatusError{Plugin: c.name, Method: method, Code: hres.StatusCode, Msg: statusMessage(data)}
	}
	return c.decode(method, data, resp)
}

// Reply is a reply with an error field: Err for network drivers, Error for IPAM.
type Reply interface{ Failure() string }

// Do is Call for replies with an error field: a set field is the plugin's refusal
// (see Failed).
func (c *Client) Do(ctx context.Context, method string, req any, resp Reply) error {
	if err := c.Call(ctx, method, req, resp); err != nil {
		return err
	}
	if msg := resp.Failure(); msg != "" {
		return c.Failed(method, msg)
	}
	return nil
}

func encode(req any) ([]byte, error) {
	if req == nil {
		return nil, nil
	}
	var b bytes.Buffer
	err := json.NewEncoder(&b).Encode(req)
	return b.Bytes(), err
}

func (c *Client) decode(method string, data []byte, resp any) error {
	if len(data) > maxReply {
		return c.errorf(method, errdefs.KindInternal, "malformed reply: larger than %d bytes", maxReply)
	}
	if resp == nil {
		return nil
	}
	if len(bytes.TrimSpace(data)) == 0 {
		data = []byte("{}") // an empty 200 reply is an empty object
	}
	if err := json.Unmarshal(data, resp); err != nil {
		return c.errorf(method, errdefs.KindInternal, "malformed reply: %v (reply: %s)", err, excerpt(data))
	}
	return nil
}

func (c *Client) transportError(ctx, cctx context.Context, method string, err error) error {
	switch {
	case ctx.Err() != nil:
		return c.errorf(method, errdefs.KindUnavailable, "%w", ctx.Err())
	case errors.Is(cctx.Err(), context.DeadlineExceeded):
		return c.errorf(method, errdefs.KindUnavailable, "no reply within %s (the plugin may be hung)", c.timeout)
	}
	return c.errorf(method, errdefs.KindUnavailable, "plugin unreachable or died during the call: %w", err)
}

func (c *Client) errorf(method string, kind errdefs.Kind, format string, args ...any) error {
	return errdefs.Wrap(kind, &CallError{Plugin: c.name, Method: method, Err: fmt.Errorf(format, args...)})
}

// CallError is a call that got no usable reply.
type CallError struct {
	Plugin, Method string
	Err            error
}

func (e *CallError) Error() string {
	return fmt.Sprintf("plugin %q: %s: %v", e.Plugin, e.Method, e.Err)
}
func (e *CallError) Unwrap() error { return e.Err }

// StatusError is a non-200 reply, or a 200 reply with its error field set: the
// plugin refused the call.
type StatusError struct {
	Plugin, Method string
	Code           int
	Msg            string
}

func (e *StatusError) Error() string {
	if e.Code == http.StatusOK {
		return fmt.Sprintf("plugin %q: %s: %s", e.Plugin, e.Method, e.Msg)
	}
	return fmt.Sprintf("plugin %q: %s: %s (HTTP %d)", e.Plugin, e.Method, e.Msg, e.Code)
}

// Failed returns the error for a 200 reply whose error field (Err or Error, by
// subsystem) says the call failed: a refusal like a non-200 reply.
func (c *Client) Failed(method, msg string) error {
	return &StatusError{Plugin: c.name, Method: method, Code: http.StatusOK, Msg: msg}
}

// IsNotFound reports whether err is a 404 reply (the plugin does not implement the method).
func IsNotFound(err error) bool {
	var se *StatusError
	return errors.As(err, &se) && se.Code == http.StatusNotFound
}

// Refused reports whether err is the plugin's own, explicit refusal (a non-200 reply),
// so the plugin did nothing. Any other failure (timeout, dead plugin, garbled reply)
// leaves it unknown whether the plugin acted.
func Refused(err error) bool {
	var se *StatusError
	return errors.As(err, &se)
}

// statusMessage extracts {"Err": "..."} from an error body, else the body itself.
func statusMessage(data []byte) string {
	var r struct{ Err string }
	if json.Unmarshal(data, &r) == nil && r.Err != "" {
		return r.Err
	}
	if s := excerpt(data); s != "" {
		return s
	}
	return "no error message"
}

// excerpt is a printable, bounded piece of a reply for error messages.
func excerpt(data []byte) string {
	s := strings.TrimSpace(string(data))
	if len(s) > 200 {
		s = s[:200] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}
