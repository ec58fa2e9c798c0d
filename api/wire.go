package api

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/errdefs"
)

// statusOf maps an error kind to its HTTP status. It is the only place that does.
func statusOf(err error) int {
	switch errdefs.KindOf(err) {
	case errdefs.KindNotFound:
		return http.StatusNotFound
	case errdefs.KindInvalidArgument:
		return http.StatusBadRequest
	case errdefs.KindConflict:
		return http.StatusConflict
	case errdefs.KindForbidden:
		return http.StatusForbidden
	case errdefs.KindUnavailable:
		return http.StatusServiceUnavailable
	case errdefs.KindNotImplemented:
		return http.StatusNotImplemented
	}
	return http.StatusInternalServerError
}

// writeError replies {"message": ...}; this is where request errors are handled, so
// server-side failures are logged here, once.
func (s *Server) writeError(ctx context.Context, w http.ResponseWriter, r *http.Request, err error) {
	code := statusOf(err)
	if code >= 500 {
		s.log.ErrorContext(ctx, "request failed", "method", r.Method, "path", r.URL.Path, "status", code, "err", err)
	}
	writeJSON(w, code, types.ErrorResponse{Message: err.Error()})
}

// writeJSON replies v as JSON with status code.
func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v) // the client went away: nothing to do
}

// readBody reads a request body of at most maxBody bytes.
func readBody(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	data, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		return nil, errdefs.InvalidArgument("request body is larger than %d bytes", maxBody)
	}
	if err != nil {
		return nil, errdefs.InvalidArgument("reading request body: %w", err)
	}
	return data, nil
}

// decodeBody reads the request body and decodes it with decode.
func decodeBody[T any](w http.ResponseWriter, r *http.Request, decode func([]byte) (T, error)) (T, error) {
	data, err := readBody(w, r)
	if err != nil {
		var zero T
		return zero, err
	}
	return decode(data)
}

// decodeJSON decodes a JSON object body into v. Unknown fields are ignored: Docker
// clients send fields of newer API versions.
func decodeJSON(data []byte, v any) error {
	if len(data) == 0 {
		return errdefs.InvalidArgument("request body is empty: a JSON object is required")
	}
	if err := json.Unmarshal(data, v); err != nil {
		return errdefs.InvalidArgument("invalid JSON body: %w", err)
	}
	return nil
}
