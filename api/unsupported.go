package api

import (
	"net/http"

	"github.com/piernet/pier/errdefs"
)

// errNoSwarm is Docker's answer on a node outside a swarm (503), word for word:
// docker-py's leave_swarm, for one, treats it as success.
var errNoSwarm = errdefs.Unavailable("This node is not part of a swarm")

// swarmRoutes answer the swarm-mode routes as Docker does on a node that is not part
// of a swarm. Creating or joining one is not something pier does, so init and join
// say so (501) rather than pretend the node could become a manager.
func (s *Server) swarmRoutes() []route {
	noSwarm := func(http.ResponseWriter, *http.Request) error { return errNoSwarm }
	noInit := func(http.ResponseWriter, *http.Request) error {
		return errdefs.NotImplemented("pier does not implement swarm mode: this node is not part of a swarm and cannot init or join one")
	}
	rts := []route{{"POST /swarm/init", noInit}, {"POST /swarm/join", noInit}}
	for _, p := range []string{"GET /swarm", "POST /swarm/leave", "POST /swarm/update", "GET /swarm/unlockkey",
		"POST /swarm/unlock", "/nodes", "/nodes/", "/services", "/services/", "/tasks", "/tasks/",
		"/secrets", "/secrets/", "/configs", "/configs/"} {
		rts = append(rts, route{p, noSwarm})
	}
	return rts
}

// errNotContainers answers the container-engine routes pier does not serve.
var errNotContainers = errdefs.NotImplemented("pier manages networks, not containers: this route of the Docker API is not implemented (sandboxes are listed read-only by GET /containers/json and GET /containers/{id}/json)")

// engineRoutes answer 501 for the container, image, build, exec, volume and plugin
// families, instead of "page not found": a client learns pier is not a container
// engine. The read-only container routes are more specific patterns and win.
func (s *Server) engineRoutes() []route {
	notImpl := func(http.ResponseWriter, *http.Request) error { return errNotContainers }
	var rts []route
	for _, p := range []string{"/containers/", "/images/", "/build", "/build/", "/exec/", "/volumes", "/volumes/",
		"/plugins", "/plugins/", "/commit", "/auth", "/events", "/system/df", "/session", "/grpc", "/distribution/"} {
		rts = append(rts, route{p, notImpl})
	}
	// pier has no images, volumes or plugins: inspecting one finds none (404, as
	// Docker for a missing one), so `docker inspect NAME` of an unknown name ends in
	// "No such object" rather than pier's not-implemented message.
	for pattern, what := range map[string]string{"GET /images/{name}/json": "image", "GET /volumes/{name}": "volume",
		"GET /plugins/{name}/json": "plugin"} {
		rts = append(rts, route{pattern, func(_ http.ResponseWriter, r *http.Request) error {
			return errdefs.NotFound("No such %s: %s", what, r.PathValue("name"))
		}})
	}
	return rts
}
