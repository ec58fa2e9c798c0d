package client

import (
	"context"
	"net/http"

	"github.com/moby/moby/api/types/network"
)

// PingResult is what GET /_ping tells about the server.
type PingResult struct {
	APIVersion string // Api-Version header
	OSType     string // Ostype header
}

// Ping checks that pierd answers.
func (c *Client) Ping(ctx context.Context) (PingResult, error) {
	resp, err := c.do(ctx, request{method: http.MethodGet, path: "/_ping"}, nil)
	if err != nil {
		return PingResult{}, err
	}
	return PingResult{APIVersion: resp.Header.Get("Api-Version"), OSType: resp.Header.Get("Ostype")}, nil
}

// NetworkList lists the networks matching filters (all when empty).
func (c *Client) NetworkList(ctx context.Context, filters Filters) ([]network.Summary, error) {
	q, err := filters.query()
	if err != nil {
		return nil, err
	}
	var out []network.Summary
	_, err = c.do(ctx, request{method: http.MethodGet, path: "/networks", query: q}, &out)
	return out, err
}

// NetworkInspect returns a network by name, ID or ID prefix.
func (c *Client) NetworkInspect(ctx context.Context, ref string) (network.Inspect, error) {
	var out network.Inspect
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/networks/" + escape(ref)}, &out)
	return out, err
}

// NetworkCreate creates a network.
func (c *Client) NetworkCreate(ctx context.Context, req network.CreateRequest) (network.CreateResponse, error) {
	var out network.CreateResponse
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/networks/create", body: req}, &out)
	return out, err
}

// NetworkRemove deletes a network.
func (c *Client) NetworkRemove(ctx context.Context, ref string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: "/networks/" + escape(ref)}, nil)
	return err
}

// NetworkConnect connects a sandbox (req.Container) to a network.
func (c *Client) NetworkConnect(ctx context.Context, ref string, req network.ConnectRequest) error {
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/networks/" + escape(ref) + "/connect", body: req}, nil)
	return err
}

// NetworkDisconnect disconnects a sandbox (req.Container) from a network.
func (c *Client) NetworkDisconnect(ctx context.Context, ref string, req network.DisconnectRequest) error {
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/networks/" + escape(ref) + "/disconnect", body: req}, nil)
	return err
}

// NetworksPrune deletes the unused networks matching filters.
func (c *Client) NetworksPrune(ctx context.Context, filters Filters) (network.PruneReport, error) {
	q, err := filters.query()
	if err != nil {
		return network.PruneReport{}, err
	}
	var out network.PruneReport
	_, err = c.do(ctx, request{method: http.MethodPost, path: "/networks/prune", query: q}, &out)
	return out, err
}
