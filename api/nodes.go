package api

import (
	"context"
	"net/http"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/errdefs"
)

// Cluster is what the API shows of cluster mode (implemented in package stack); nil
// on a single-host pierd, whose cluster routes answer 503.
type Cluster interface {
	Nodes(ctx context.Context) ([]types.NodeInfo, error)
	Info(ctx context.Context) (types.ClusterInfo, error)
	// RotateKey replaces this node's WireGuard key pair.
	RotateKey(ctx context.Context) (types.KeyRotation, error)
}

func (s *Server) rotateKey(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Cluster == nil {
		return errNotClustered
	}
	out, err := s.cfg.Cluster.RotateKey(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

var errNotClustered = errdefs.Unavailable("this pierd is not part of a cluster (start it with --cluster-init, --cluster-join or --cluster-store)")

func (s *Server) listNodes(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Cluster == nil {
		return errNotClustered
	}
	nodes, err := s.cfg.Cluster.Nodes(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, nodes)
	return nil
}

func (s *Server) inspectNode(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Cluster == nil {
		return errNotClustered
	}
	nodes, err := s.cfg.Cluster.Nodes(r.Context())
	if err != nil {
		return err
	}
	ref := r.PathValue("ref")
	for _, n := range nodes {
		if n.ID == ref || n.Name == ref {
			writeJSON(w, http.StatusOK, n)
			return nil
		}
	}
	return errdefs.NotFound("node %s not found", ref)
}

func (s *Server) clusterInfo(w http.ResponseWriter, r *http.Request) error {
	if s.cfg.Cluster == nil {
		return errNotClustered
	}
	info, err := s.cfg.Cluster.Info(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, info)
	return nil
}
