// Package cnm is pier's controller: it owns the object graph of networks, endpoints and
// sandboxes (the Container Network Model), drives drivers and IPAM, persists records and
// restores them after a restart. It is the only package that knows all three objects;
// kernel work happens in drivers and in the SandboxOS seam, never here.
//
// Concurrency: opMu serialises mutating operations (they do kernel I/O and must see a
// consistent graph from start to end); mu guards the maps and is held only briefly, so
// reads (list, inspect) never wait behind kernel I/O. Lock order: opMu → mu.
package cnm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"

	"github.com/piernet/pier/driver"
	"github.com/piernet/pier/etcfiles"
	"github.com/piernet/pier/ipam"
	"github.com/piernet/pier/netns"
	"github.com/piernet/pier/store"
)

// SandboxOS is the kernel seam for sandboxes (implemented by netns.Manager).
type SandboxOS interface {
	HostKey() string
	Create(ctx context.Context, id string) (key string, err error)
	Exists(key string) bool
	Destroy(ctx context.Context, key string) error
	Pinned() ([]string, error)
	ConfigureInterface(ctx context.Context, key string, ifc netns.Interface) error
	RemoveInterface(ctx context.Context, key, name string) error
	SetDefaultRoute(ctx context.Context, key string, r netns.DefaultRoute) error
}

// Config wires a controller. Every field except Logger and HostResolvConf is required.
type Config struct {
	ExecRoot       string // sandbox files live under ExecRoot/sandboxes
	Store          *store.Store
	Drivers        *driver.Registry
	IPAM           ipam.Allocator
	OS             SandboxOS
	Logger         *slog.Logger
	HostResolvConf string // default /etc/resolv.conf
}

// Controller is the CNM controller.
type Controller struct {
	execRoot   string
	store      *store.Store
	drivers    *driver.Registry
	ipam       ipam.Allocator
	os         SandboxOS
	log        *slog.Logger
	resolvPath string

	opMu sync.Mutex // serialises mutating operations

	mu        sync.RWMutex // guards the maps below
	networks  map[string]*Network
	endpoints map[string]*Endpoint
	sandboxes map[string]*Sandbox
}

// New builds a controller and restores the recorded state (see restore.go).
func New(ctx context.Context, cfg Config) (*Controller, error) {
	if cfg.Store == nil || cfg.Drivers == nil || cfg.IPAM == nil || cfg.OS == nil || cfg.ExecRoot == "" {
		return nil, errors.New("cnm: Store, Drivers, IPAM, OS and ExecRoot are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.HostResolvConf == "" {
		cfg.HostResolvConf = "/etc/resolv.conf"
	}
	c := &Controller{execRoot: cfg.ExecRoot, store: cfg.Store, drivers: cfg.Drivers, ipam: cfg.IPAM,
		os: cfg.OS, log: cfg.Logger.With("component", "controller"), resolvPath: cfg.HostResolvConf,
		networks: map[string]*Network{}, endpoints: map[string]*Endpoint{}, sandboxes: map[string]*Sandbox{}}
	if err := c.restore(ctx); err != nil {
		return nil, fmt.Errorf("restoring state: %w", err)
	}
	return c, nil
}

func (c *Controller) sandboxDir(id string) string {
	return filepath.Join(c.execRoot, "sandboxes", id)
}

func (c *Controller) hostResolv() etcfiles.Parsed {
	data, err := os.ReadFile(c.resolvPath)
	if err != nil {
		c.log.Warn("reading host resolv.conf", "path", c.resolvPath, "err", err)
	}
	return etcfiles.ParseResolvConf(data)
}

func validAddr(p netip.Prefix) netip.Addr {
	if !p.IsValid() {
		return netip.Addr{}
	}
	return p.Addr()
}
