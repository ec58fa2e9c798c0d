package api

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/moby/moby/api/types/network"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
)

func (s *Server) listNetworks(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	nf, err := newNetworkFilter(r.URL.Query().Get("filters"))
	if err != nil {
		return err
	}
	out := []network.Inspect{}
	for _, n := range s.c.Networks(ctx) {
		count := 0
		if nf.needsEndpoints() {
			eps, _ := s.c.Endpoints(ctx, n.ID) // a network deleted meanwhile has none
			count = len(eps)
		}
		if nf.match(n, count) {
			// Like Docker, the list leaves Containers empty; inspect fills it.
			out = append(out, network.Inspect{Network: networkView(n), Containers: map[string]network.EndpointResource{}})
		}
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// inspectNetwork serves GET /networks/{id}. As in Docker, a scope that is given must
// be the network's ("local", "global"; "swarm" finds none, pier has no swarm), or the
// network is not found; verbose only matters for swarm networks and is ignored.
func (s *Server) inspectNetwork(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	ref := r.PathValue("id")
	n, err := s.c.Network(ctx, ref)
	if err != nil {
		return err
	}
	if scope := r.URL.Query().Get("scope"); scope != "" && scope != string(n.Scope) {
		return errdefs.NotFound("network %s not found", ref)
	}
	containers, err := s.containers(ctx, n)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, network.Inspect{Network: networkView(n), Containers: containers})
	return nil
}

func (s *Server) createNetwork(w http.ResponseWriter, r *http.Request) error {
	spec, err := decodeBody(w, r, decodeNetworkCreate)
	if err != nil {
		return err
	}
	n, err := s.c.CreateNetwork(r.Context(), spec)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, network.CreateResponse{ID: n.ID})
	return nil
}

func (s *Server) deleteNetwork(w http.ResponseWriter, r *http.Request) error {
	if err := s.c.DeleteNetwork(r.Context(), r.PathValue("id")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

// networkAction serves POST /networks/NAME/connect and /disconnect for network names
// that contain "/" (Docker accepts them and its clients do not escape them).
func (s *Server) networkAction(w http.ResponseWriter, r *http.Request) error {
	path := r.PathValue("path")
	for suffix, h := range map[string]handlerFunc{"/connect": s.connect, "/disconnect": s.disconnect} {
		if id, ok := strings.CutSuffix(path, suffix); ok && id != "" {
			r.SetPathValue("id", id)
			return h(w, r)
		}
	}
	return errdefs.NotFound("page not found")
}

func (s *Server) connect(w http.ResponseWriter, r *http.Request) error {
	req, err := decodeBody(w, r, decodeConnect)
	if err != nil {
		return err
	}
	if _, err := s.c.Connect(r.Context(), r.PathValue("id"), req.sandbox, req.spec); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (s *Server) disconnect(w http.ResponseWriter, r *http.Request) error {
	req, err := decodeBody(w, r, decodeDisconnect)
	if err != nil {
		return err
	}
	if err := s.c.Disconnect(r.Context(), r.PathValue("id"), req.Container); err != nil {
		return err
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

// pruneNetworks deletes the user-defined networks without endpoints that match the
// filters. A network that cannot be deleted (it gained an endpoint meanwhile) is skipped.
func (s *Server) pruneNetworks(w http.ResponseWriter, r *http.Request) error {
	ctx := r.Context()
	pf, err := newPruneFilter(r.URL.Query().Get("filters"), time.Now())
	if err != nil {
		return err
	}
	deleted := []string{}
	for _, n := range s.c.Networks(ctx) {
		if n.Predefined || !pf.match(n) {
			continue
		}
		if eps, err := s.c.Endpoints(ctx, n.ID); err != nil || len(eps) > 0 {
			continue
		}
		err := s.c.DeleteNetwork(ctx, n.ID)
		switch {
		case err == nil:
			deleted = append(deleted, n.Name)
		case !isExpectedPruneError(err):
			return err
		}
	}
	writeJSON(w, http.StatusOK, network.PruneReport{NetworksDeleted: deleted})
	return nil
}

func isExpectedPruneError(err error) bool {
	return errdefs.Is(err, errdefs.KindNotFound) || errdefs.Is(err, errdefs.KindForbidden) || errors.Is(err, context.Canceled)
}

// containers lists the network's endpoints as Docker lists containers: joined ones
// under their sandbox's ID and name, unjoined ones under "ep-" + endpoint ID.
func (s *Server) containers(ctx context.Context, n cnm.Network) (map[string]network.EndpointResource, error) {
	eps, err := s.c.Endpoints(ctx, n.ID)
	if err != nil {
		return nil, err
	}
	out := make(map[string]network.EndpointResource, len(eps))
	for _, ep := range eps {
		key, name := "ep-"+ep.ID, ep.Name
		if ep.SandboxID != "" {
			key = ep.SandboxID
			if sb, err := s.c.Sandbox(ctx, ep.SandboxID); err == nil {
				name = sb.Name
			}
		}
		out[key] = endpointResource(ep, name)
	}
	return out, nil
}
