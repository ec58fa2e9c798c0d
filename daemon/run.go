package daemon

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/piernet/pier/api"
	"github.com/piernet/pier/stack"
)

// Version is pierd's version, set at build time with
// -ldflags "-X github.com/piernet/pier/daemon.Version=...".
var Version = "0.1.0-dev"

// shutdownTimeout bounds how long in-flight requests may run after a stop signal.
const shutdownTimeout = 15 * time.Second

// Run runs pierd until ctx is cancelled, then shuts down gracefully: in-flight requests
// finish, listeners close, the stack is closed; kernel state and records are kept for
// the next start.
func Run(ctx context.Context, cfg Config) (err error) {
	if err := cfg.Validate(); err != nil {
		return err
	}
	log := newLogger(cfg)
	specs, _ := listenSpecs(cfg) // validated above
	tlsCfg, err := serverTLS(cfg)
	if err != nil {
		return err
	}
	opts := stack.Options{DataRoot: cfg.DataRoot, ExecRoot: cfg.ExecRoot, DefaultPools: cfg.DefaultAddressPools, Logger: log,
		StopGrace: time.Duration(cfg.SandboxStopTimeout) * time.Second}
	if cfg.ClusterConfig.Enabled() {
		if err := os.MkdirAll(cfg.DataRoot, 0o700); err != nil {
			return fmt.Errorf("creating data root: %w", err)
		}
		co, closeStore, err := openCluster(ctx, cfg, engineID(cfg.DataRoot, log), log)
		if err != nil {
			return err
		}
		defer func() { err = errors.Join(err, closeStore()) }()
		opts.Cluster = co
	}
	st, err := stack.Open(ctx, opts)
	if err != nil {
		return fmt.Errorf("opening pier state in %s: %w", cfg.DataRoot, err)
	}
	defer func() { err = errors.Join(err, st.Close()) }()
	if err := st.Controller.EnsurePredefined(ctx, cfg.DefaultBridge); err != nil {
		return fmt.Errorf("creating predefined networks: %w", err)
	}
	acfg := api.Config{Controller: st.Controller, Logger: log, Version: Version,
		ID: engineID(cfg.DataRoot, log), DataRoot: cfg.DataRoot, Drivers: st.Controller.DriverNames()}
	if st.ClusterView != nil {
		acfg.Cluster = st.ClusterView
	}
	srv := api.New(acfg)
	return serve(ctx, log, srv, specs, tlsCfg)
}

// serve listens on every address and serves h until ctx is cancelled or a listener
// fails; it owns the serving goroutines and waits for them.
func serve(ctx context.Context, log *slog.Logger, h http.Handler, specs []listenSpec, tlsCfg *tls.Config) error {
	lns, err := listenAll(specs, tlsCfg)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		// In-flight requests finish after a stop signal; Shutdown bounds them.
		BaseContext: func(net.Listener) context.Context { return context.WithoutCancel(ctx) }}
	errc := make(chan error, len(lns))
	var wg sync.WaitGroup
	for _, ln := range lns {
		wg.Go(func() {
			if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serving on %s: %w", ln.Addr(), err)
			}
		})
	}
	log.Info("pierd is ready", "hosts", hostsString(specs), "version", Version, "api_version", api.APIVersion)
	select {
	case <-ctx.Done():
		log.Info("shutting down", "cause", context.Cause(ctx))
	case err = <-errc:
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if serr := srv.Shutdown(sctx); serr != nil {
		err = errors.Join(err, fmt.Errorf("shutting down the API server: %w", serr))
	}
	wg.Wait()
	return err
}

// listenAll opens every listener, or none.
func listenAll(specs []listenSpec, tlsCfg *tls.Config) ([]net.Listener, error) {
	var lns []net.Listener
	for _, l := range specs {
		ln, err := listen(l, tlsCfg)
		if err != nil {
			for _, o := range lns {
				o.Close()
			}
			return nil, fmt.Errorf("listening on %s: %w", l, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func newLogger(cfg Config) *slog.Logger {
	level, _ := parseLevel(cfg.LogLevel)
	out := cfg.LogOutput
	if out == nil {
		out = os.Stderr
	}
	return slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))
}

// engineID returns the daemon's stable ID (DataRoot/engine-id), creating it once.
func engineID(dataRoot string, log *slog.Logger) string {
	path := filepath.Join(dataRoot, "engine-id")
	if b, err := os.ReadFile(path); err == nil && len(strings.TrimSpace(string(b))) > 0 {
		return strings.TrimSpace(string(b))
	}
	var b [16]byte
	_, _ = rand.Read(b[:])
	id := hex.EncodeToString(b[:])
	if err := os.WriteFile(path, []byte(id+"\n"), 0o600); err != nil {
		log.Warn("saving engine ID", "path", path, "err", err)
	}
	return id
}
