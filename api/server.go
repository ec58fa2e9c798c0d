package api

import (
	"log/slog"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
)

// API versions. APIVersion is what Docker Engine 28.2 (the docker CLI installed here)
// speaks; the network routes' shapes are the same from MinAPIVersion on.
const (
	APIVersion    = "1.50"
	MinAPIVersion = "1.24"
)

// maxBody caps request bodies.
const maxBody = 1 << 20

// Config configures a Server.
type Config struct {
	Controller *cnm.Controller
	Logger     *slog.Logger
	// Reported by /version and /info.
	Version  string   // pierd's version
	ID       string   // a stable daemon ID
	DataRoot string   // DockerRootDir
	Drivers  []string // network driver names (Plugins.Network)
	// Cluster serves /pier/v1/nodes and /pier/v1/cluster; nil = not clustered.
	Cluster Cluster
}

// Server serves the API. It is an http.Handler.
type Server struct {
	c       *cnm.Controller
	log     *slog.Logger
	cfg     Config
	handler http.Handler
}

// New returns a server for cfg; cfg.Controller is required.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Version == "" {
		cfg.Version = "dev"
	}
	s := &Server{c: cfg.Controller, log: cfg.Logger.With("component", "api"), cfg: cfg}
	mux := http.NewServeMux()
	for _, rt := range s.routes() {
		mux.Handle(rt.pattern, s.wrap(rt.h))
	}
	mux.Handle("/", s.wrap(func(http.ResponseWriter, *http.Request) error {
		return errdefs.NotFound("page not found")
	}))
	s.handler = s.logRequests(s.stripVersion(mux))
	return s
}

// handlerFunc is a handler that returns its error instead of writing it.
type handlerFunc func(w http.ResponseWriter, r *http.Request) error

type route struct {
	pattern string
	h       handlerFunc
}

// routes is the one route table. GET patterns also serve HEAD.
func (s *Server) routes() []route {
	rts := []route{
		{"GET /_ping", s.ping},
		{"GET /version", s.version},
		{"GET /info", s.info},
		{"GET /networks", s.listNetworks},
		{"GET /networks/{id...}", s.inspectNetwork}, // network names may contain "/"
		{"POST /networks/create", s.createNetwork},
		{"DELETE /networks/{id...}", s.deleteNetwork},
		{"POST /networks/{path...}", s.networkAction}, // connect/disconnect of a name with "/"
		{"POST /networks/{id}/connect", s.connect},
		{"POST /networks/{id}/disconnect", s.disconnect},
		{"POST /networks/prune", s.pruneNetworks},
		{"POST /pier/v1/sandboxes", s.createSandbox},
		{"GET /pier/v1/sandboxes", s.listSandboxes},
		{"GET /pier/v1/sandboxes/{ref}", s.inspectSandbox},
		{"DELETE /pier/v1/sandboxes/{ref}", s.deleteSandbox},
		{"POST /pier/v1/services", s.createService},
		{"GET /pier/v1/services", s.listServices},
		{"GET /pier/v1/services/{ref}", s.inspectService},
		{"DELETE /pier/v1/services/{ref}", s.deleteService},
		{"POST /pier/v1/services/{ref}/update", s.updateService},
		{"GET /pier/v1/nodes", s.listNodes},
		{"GET /pier/v1/nodes/{ref}", s.inspectNode},
		{"POST /pier/v1/nodes/self/rotate-key", s.rotateKey},
		{"GET /pier/v1/cluster", s.clusterInfo},
		{"GET /containers/json", s.listContainers},
		{"GET /containers/{id}/json", s.inspectContainer},
	}
	rts = append(rts, s.swarmRoutes()...)
	return append(rts, s.engineRoutes()...)
}

// ServeHTTP implements http.Handler.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) { s.handler.ServeHTTP(w, r) }

func (s *Server) wrap(h handlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := h(w, r); err != nil {
			s.writeError(r.Context(), w, r, err)
		}
	})
}

var versionRE = regexp.MustCompile(`^/v([0-9]+(?:\.[0-9]+)?)(/.*)$`)

// stripVersion removes a /v1.NN prefix after checking the version is supported.
func (s *Server) stripVersion(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		m := versionRE.FindStringSubmatch(r.URL.Path)
		if m == nil {
			next.ServeHTTP(w, r)
			return
		}
		if err := checkVersion(m[1]); err != nil {
			s.writeError(r.Context(), w, r, err)
			return
		}
		r2 := r.Clone(r.Context())
		r2.URL.Path, r2.URL.RawPath = m[2], ""
		next.ServeHTTP(w, r2)
	})
}

func checkVersion(v string) error {
	switch {
	case compareVersions(v, MinAPIVersion) < 0:
		return errdefs.InvalidArgument("client version %s is too old. Minimum supported API version is %s, please upgrade your client to a newer version", v, MinAPIVersion)
	case compareVersions(v, APIVersion) > 0:
		return errdefs.InvalidArgument("client version %s is too new. Maximum supported API version is %s", v, APIVersion)
	}
	return nil
}

// compareVersions compares dotted numeric versions ("1.41" < "1.5" is false: 41 > 5).
func compareVersions(a, b string) int {
	as, bs := strings.Split(a, "."), strings.Split(b, ".")
	for i := 0; i < max(len(as), len(bs)); i++ {
		var x, y int
		if i < len(as) {
			x, _ = strconv.Atoi(as[i])
		}
		if i < len(bs) {
			y, _ = strconv.Atoi(bs[i])
		}
		if x != y {
			if x < y {
				return -1
			}
			return 1
		}
	}
	return 0
}

// statusRecorder remembers the status written, for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (w *statusRecorder) WriteHeader(code int) {
	w.status = code
	w.ResponseWriter.WriteHeader(code)
}

func (s *Server) logRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		next.ServeHTTP(rec, r)
		s.log.DebugContext(r.Context(), "request", "method", r.Method, "path", r.URL.Path,
			"status", rec.status, "duration", time.Since(start))
	})
}
