package client

import (
	"context"
	"net/http"

	"github.com/piernet/pier/api/types"
)

// NodeList lists the cluster's nodes (503 on a pierd that is not clustered).
func (c *Client) NodeList(ctx context.Context) ([]types.NodeInfo, error) {
	var out []types.NodeInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/pier/v1/nodes"}, &out)
	return out, err
}

// NodeRotateKey replaces the answering node's WireGuard key pair and waits for every
// other node's acknowledgement.
func (c *Client) NodeRotateKey(ctx context.Context) (types.KeyRotation, error) {
	var out types.KeyRotation
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/pier/v1/nodes/self/rotate-key"}, &out)
	return out, err
}

// NodeInspect returns one node by name or ID.
func (c *Client) NodeInspect(ctx context.Context, ref string) (types.NodeInfo, error) {
	var out types.NodeInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/pier/v1/nodes/" + escape(ref)}, &out)
	return out, err
}

// ClusterInfo describes the cluster as this pierd sees it, with the join token when it
// holds an embedded etcd member.
func (c *Client) ClusterInfo(ctx context.Context) (types.ClusterInfo, error) {
	var out types.ClusterInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/pier/v1/cluster"}, &out)
	return out, err
}
