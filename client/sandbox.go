package client

import (
	"context"
	"net/http"
	"net/url"

	"github.com/piernet/pier/api/types"
)

const sandboxesPath = "/pier/v1/sandboxes"

// SandboxCreate creates a sandbox and connects it to its networks.
func (c *Client) SandboxCreate(ctx context.Context, req types.SandboxCreateRequest) (types.SandboxInfo, error) {
	var out types.SandboxInfo
	_, err := c.do(ctx, request{method: http.MethodPost, path: sandboxesPath, body: req}, &out)
	return out, err
}

// SandboxList lists all sandboxes.
func (c *Client) SandboxList(ctx context.Context) ([]types.SandboxInfo, error) {
	var out []types.SandboxInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: sandboxesPath}, &out)
	return out, err
}

// SandboxInspect returns a sandbox by name, ID or ID prefix.
func (c *Client) SandboxInspect(ctx context.Context, ref string) (types.SandboxInfo, error) {
	var out types.SandboxInfo
	_, err := c.do(ctx, request{method: http.MethodGet, path: sandboxesPath + "/" + escape(ref)}, &out)
	return out, err
}

// SandboxRemoveOptions are the options of SandboxRemove.
type SandboxRemoveOptions struct {
	// Force disconnects the sandbox's endpoints first.
	Force bool
}

// SandboxRemove deletes a sandbox.
func (c *Client) SandboxRemove(ctx context.Context, ref string, opts SandboxRemoveOptions) error {
	var q url.Values
	if opts.Force {
		q = url.Values{"force": {"true"}}
	}
	_, err := c.do(ctx, request{method: http.MethodDelete, path: sandboxesPath + "/" + escape(ref), query: q}, nil)
	return err
}
