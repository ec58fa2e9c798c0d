package dns

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/netns"
)

// SandboxConfig is how one sandbox resolves.
type SandboxConfig struct {
	ID  string
	Key string // path of the sandbox's network namespace (pinned bind mount)
	// Upstreams are the forwarders (host resolv.conf minus loopback, or --dns);
	// port 0 means 53.
	Upstreams []netip.AddrPort
	// Internal sandboxes (attached only to internal networks) never forward:
	// names that are not local get NXDOMAIN.
	Internal bool
	// Search domains of the sandbox's resolv.conf: a query for "web.<domain>"
	// is answered as "web" when "web" is a local name.
	Search []string
	// Links are names only this sandbox resolves, each to another local name
	// (Docker's --link on user-defined networks: alias → linked sandbox's name).
	Links map[string]string
}

// Options configure a Server. Zero values pick the defaults.
type Options struct {
	Logger *slog.Logger
	// CacheSize is the number of upstream replies kept (default 10000, shared by
	// all sandboxes, partitioned by upstream set); negative disables the cache.
	CacheSize int
	// UpstreamTimeout bounds one forwarded query; when it passes without a good
	// reply the client gets SERVFAIL (default 1.5 s).
	UpstreamTimeout time.Duration
	// MaxInFlight bounds the queries one sandbox forwards at a time (default
	// 256); beyond it queries get SERVFAIL at once.
	MaxInFlight int
	// HedgeDelay is how long an upstream has before the next one is asked too
	// (default 100 ms); a failing upstream hands over at once.
	HedgeDelay time.Duration
	// Readers is the number of goroutines reading each sandbox's UDP socket
	// (default 1: each reads up to 32 queries per system call, and a second
	// reader mostly adds wake-ups; measured in docs/dns.md).
	Readers int
}

func (o Options) withDefaults() Options {
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.CacheSize == 0 {
		o.CacheSize = 10000
	}
	if o.UpstreamTimeout <= 0 {
		o.UpstreamTimeout = 1500 * time.Millisecond
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 256
	}
	if o.HedgeDelay <= 0 {
		o.HedgeDelay = 100 * time.Millisecond
	}
	if o.Readers <= 0 {
		o.Readers = 1
	}
	return o
}

// Server is the embedded resolver of every sandbox. It is safe for concurrent use.
type Server struct {
	log     *slog.Logger
	opts    Options
	reg     *registry
	cache   *cache
	flights *flights

	mu        sync.Mutex // guards the fields below
	ctx       context.Context
	cancel    context.CancelFunc
	stopWatch func() bool
	closed    bool
	sandboxes map[string]*sandbox
	groups    map[string]uint32 // upstream set → cache partition
}

// New returns a Server; it does nothing until Start.
func New(opts Options) *Server {
	opts = opts.withDefaults()
	return &Server{
		log:       opts.Logger.With("component", "dns"),
		opts:      opts,
		reg:       newRegistry(),
		cache:     newCache(opts.CacheSize),
		flights:   &flights{m: map[string]*flight{}},
		sandboxes: map[string]*sandbox{},
		groups:    map[string]uint32{},
	}
}

// Start makes the server ready for sandboxes. When ctx ends the server closes
// itself as Close does. Starting twice is a no-op.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errdefs.Unavailable("dns server is closed")
	}
	if s.ctx != nil {
		return nil
	}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	s.stopWatch = context.AfterFunc(ctx, func() { _ = s.Close() })
	return nil
}

// Close stops every sandbox's listeners and in-flight work and waits for them.
// It is idempotent.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	sbs := s.sandboxes
	s.sandboxes = map[string]*sandbox{}
	if s.stopWatch != nil {
		s.stopWatch()
		s.cancel()
	}
	s.mu.Unlock()
	var errs []error
	for _, sb := range sbs {
		errs = append(errs, sb.close())
	}
	return errors.Join(errs...)
}

// AddSandbox starts answering at 127.0.0.11:53 (UDP and TCP) inside the
// sandbox's namespace. The sockets are created on a thread in that namespace
// and served from ordinary goroutines; nothing is bound on the host.
func (s *Server) AddSandbox(ctx context.Context, cfg SandboxConfig) error {
	if cfg.ID == "" || cfg.Key == "" {
		return errdefs.InvalidArgument("dns: sandbox needs an ID and a namespace path")
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	err := s.checkAddLocked(cfg.ID)
	s.mu.Unlock()
	if err != nil {
		return err
	}
	sb, err := s.openSandbox(cfg)
	if err != nil {
		return err
	}
	s.mu.Lock()
	if err := s.checkAddLocked(cfg.ID); err != nil { // lost a race with Close or another add
		s.mu.Unlock()
		return errors.Join(err, sb.close())
	}
	sb.ctx, sb.cancel = context.WithCancel(s.ctx)
	sb.cfg.Store(newConfig(cfg, nil, s.groupLocked(cfg.Upstreams)))
	s.sandboxes[cfg.ID] = sb
	sb.start()
	s.mu.Unlock()
	return nil
}

func (s *Server) checkAddLocked(id string) error {
	switch {
	case s.closed:
		return errdefs.Unavailable("dns server is closed")
	case s.ctx == nil:
		return errdefs.Unavailable("dns server is not started")
	case s.sandboxes[id] != nil:
		return errdefs.Conflict("dns: sandbox %s already has a resolver", id)
	}
	return nil
}

// openSandbox opens the namespace and binds the listeners inside it.
func (s *Server) openSandbox(cfg SandboxConfig) (*sandbox, error) {
	ns, err := netns.OpenHandle(cfg.Key)
	if err != nil {
		return nil, err
	}
	udp, tcp, err := listen(ns)
	if err != nil {
		ns.Close()
		return nil, fmt.Errorf("listening on %s in sandbox %s (is its loopback up?): %w", ListenAddr, cfg.ID, err)
	}
	sb := s.newSandbox(cfg.ID, nsExchanger{ns: ns})
	sb.ns, sb.udp, sb.tcp = ns, udp, tcp
	return sb, nil
}

// newSandbox returns a sandbox without sockets or goroutines.
func (s *Server) newSandbox(id string, ex exchanger) *sandbox {
	return &sandbox{
		id:      id,
		log:     s.log.With("sandbox", id),
		opts:    &s.opts,
		reg:     s.reg,
		cache:   s.cache,
		flights: s.flights,
		ex:      ex,
		sem:     make(chan struct{}, s.opts.MaxInFlight),
	}
}

// groupLocked returns the cache partition of an upstream set: sandboxes asking
// the same upstreams share cached replies.
func (s *Server) groupLocked(ups []netip.AddrPort) uint32 {
	names := make([]string, 0, len(ups))
	for _, u := range normalizeUpstreams(ups) {
		names = append(names, u.String())
	}
	slices.Sort(names)
	key := strings.Join(names, ",")
	g, ok := s.groups[key]
	if !ok {
		g = uint32(len(s.groups))
		s.groups[key] = g
	}
	return g
}

// UpdateSandbox replaces a sandbox's upstreams, search domains and internal
// flag; queries read after it returns use the new configuration.
func (s *Server) UpdateSandbox(cfg SandboxConfig) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	sb := s.sandboxes[cfg.ID]
	if sb == nil {
		return errdefs.NotFound("dns: no resolver for sandbox %s", cfg.ID)
	}
	sb.cfg.Store(newConfig(cfg, sb.cfg.Load(), s.groupLocked(cfg.Upstreams)))
	return nil
}

// RemoveSandbox stops answering in the sandbox and waits for its work to end.
// Removing an unknown sandbox is not an error.
func (s *Server) RemoveSandbox(id string) error {
	s.mu.Lock()
	sb := s.sandboxes[id]
	delete(s.sandboxes, id)
	s.mu.Unlock()
	if sb == nil {
		return nil
	}
	return sb.close()
}

// Upsert adds or replaces the record of r.EndpointID; the next query sees it.
func (s *Server) Upsert(r Record) { s.reg.upsert(r) }

// Remove forgets the record of an endpoint; the next query no longer sees it.
func (s *Server) Remove(endpointID string) { s.reg.remove(endpointID) }

// normalizeUpstreams unmaps addresses, fills in port 53 and drops invalid and
// duplicate entries.
func normalizeUpstreams(ups []netip.AddrPort) []netip.AddrPort {
	out := make([]netip.AddrPort, 0, len(ups))
	for _, u := range ups {
		if !u.Addr().IsValid() {
			continue
		}
		port := u.Port()
		if port == 0 {
			port = 53
		}
		u = netip.AddrPortFrom(u.Addr().Unmap(), port)
		if !slices.Contains(out, u) {
			out = append(out, u)
		}
	}
	return out
}
