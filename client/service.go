package client

import (
	"context"
	"net/http"

	"github.com/piernet/pier/api/types"
)

// ServiceCreate creates a service.
func (c *Client) ServiceCreate(ctx context.Context, req types.ServiceCreateRequest) (types.ServiceInfo, error) {
	var out types.ServiceInfo
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/pier/v1/services", body: req}, &out)
	return out, err
}

// ServiceUpdate changes a service's published ports.
func (c *Client) ServiceUpdate(ctx context.Context, ref string, req types.ServiceUpdateRequest) (types.ServiceInfo, error) {
	var out types.ServiceInfo
	_, err := c.do(ctx, request{method: http.MethodPost, path: "/pier/v1/services/" + escape(ref) + "/update", body: req}, &out)
	return out, err
}

// ServiceList lists the services.
func (c *Client) ServiceList(ctx context.Context) ([]types.ServiceInfo, error) {
	var out []types.ServiceInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/pier/v1/services"}, &out)
	return out, err
}

// ServiceInspect returns one service by name, ID or unique ID prefix.
func (c *Client) ServiceInspect(ctx context.Context, ref string) (types.ServiceInfo, error) {
	var out types.ServiceInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: "/pier/v1/services/" + escape(ref)}, &out)
	return out, err
}

// ServiceRemove removes a service that has no tasks.
func (c *Client) ServiceRemove(ctx context.Context, ref string) error {
	_, err := c.do(ctx, request{method: http.MethodDelete, path: "/pier/v1/services/" + escape(ref)}, nil)
	return err
}
