// Package plugin finds and talks to Docker plugins (the v1 "legacy" plugin protocol):
// discovery in the socket and spec directories, the Plugin.Activate handshake, and an
// HTTP/JSON client with a per-call timeout. It knows nothing about what the calls mean:
// the remote network driver (driver/remote) and the remote IPAM (ipam/remote) own
// their subsystems' messages.
//
// Lock order: Loader.mu only, never held during I/O.
package plugin

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/piernet/pier/errdefs"
)

// Subsystems a plugin can implement.
const (
	NetworkDriver = "NetworkDriver"
	IpamDriver    = "IpamDriver"
)

// Plugin is an activated plugin.
type Plugin struct {
	Name       string
	Implements []string
	Client     *Client
}

// Implementing reports whether p implements subsystem.
func (p *Plugin) Implementing(subsystem string) bool { return slices.Contains(p.Implements, subsystem) }

// Options configure a Loader.
type Options struct {
	Dirs    Dirs          // zero = DefaultDirs
	Timeout time.Duration // per call; zero = DefaultTimeout
	// Wait is how long Get keeps looking for a plugin that is not there yet (Docker
	// waits ~30 s). Zero fails at once.
	Wait   time.Duration
	Logger *slog.Logger
}

// Loader finds plugins and activates each once. Safe for concurrent use.
type Loader struct {
	opts Options
	log  *slog.Logger

	mu      sync.Mutex // guards plugins
	plugins map[string]*Plugin
}

// NewLoader returns a loader.
func NewLoader(o Options) *Loader {
	if o.Dirs.IsZero() {
		o.Dirs = DefaultDirs()
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return &Loader{opts: o, log: o.Logger.With("component", "plugins"), plugins: map[string]*Plugin{}}
}

// Get returns plugin name, activated, checking that it implements subsystem.
func (l *Loader) Get(ctx context.Context, name, subsystem string) (*Plugin, error) {
	l.mu.Lock()
	p := l.plugins[name]
	l.mu.Unlock()
	if p == nil {
		var err error
		if p, err = l.load(ctx, name); err != nil {
			return nil, err
		}
	}
	if !p.Implementing(subsystem) {
		return nil, errdefs.NotFound("plugin %q does not implement %s (it implements %s)",
			name, subsystem, strings.Join(p.Implements, ", "))
	}
	return p, nil
}

func (l *Loader) load(ctx context.Context, name string) (*Plugin, error) {
	spec, err := l.lookup(ctx, name)
	if err != nil {
		return nil, err
	}
	c, err := NewClient(spec, l.opts.Timeout)
	if err != nil {
		return nil, err
	}
	impl, err := l.activate(ctx, c)
	if err != nil {
		return nil, err
	}
	p := &Plugin{Name: name, Implements: impl, Client: c}
	l.log.InfoContext(ctx, "plugin activated", "name", name, "at", spec.Source, "implements", impl)
	l.mu.Lock()
	defer l.mu.Unlock()
	if old := l.plugins[name]; old != nil {
		return old, nil // activated concurrently
	}
	l.plugins[name] = p
	return p, nil
}

// lookup finds the plugin, polling for up to Options.Wait.
func (l *Loader) lookup(ctx context.Context, name string) (Spec, error) {
	deadline := time.Now().Add(l.opts.Wait)
	for {
		spec, err := l.opts.Dirs.Lookup(name)
		if err == nil || !errdefs.Is(err, errdefs.KindNotFound) || time.Now().After(deadline) {
			return spec, err
		}
		t := time.NewTimer(100 * time.Millisecond)
		select {
		case <-ctx.Done():
			t.Stop()
			return Spec{}, ctx.Err()
		case <-t.C:
		}
	}
}

// startGrace is how long activation retries a socket that refuses connections: a
// plugin that is starting has created its socket file (bind) but is not listening
// yet. Docker retries activation too.
const startGrace = time.Second

// activate is Activate, retried while the plugin's socket refuses connections, for
// up to startGrace (or Options.Wait when longer).
func (l *Loader) activate(ctx context.Context, c *Client) ([]string, error) {
	deadline := time.Now().Add(max(startGrace, l.opts.Wait))
	delay := 10 * time.Millisecond
	for {
		impl, err := Activate(ctx, c)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return impl, err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		delay = min(2*delay, 200*time.Millisecond)
	}
}

// Manifest is the reply of Plugin.Activate.
type Manifest struct {
	Implements []string
	Err        string `json:",omitempty"`
}

// Activate performs the handshake and returns the subsystems the plugin implements.
func Activate(ctx context.Context, c *Client) ([]string, error) {
	var m Manifest
	if err := c.Call(ctx, "Plugin.Activate", nil, &m); err != nil {
		return nil, fmt.Errorf("activating: %w", err)
	}
	if m.Err != "" {
		return nil, fmt.Errorf("activating plugin %q: %s", c.name, m.Err)
	}
	if len(m.Implements) == 0 {
		return nil, errdefs.Unavailable("activating plugin %q: it implements nothing", c.name)
	}
	return m.Implements, nil
}
