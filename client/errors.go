package client

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strings"
)

// APIError is a non-2xx reply from pierd: its HTTP status and the server's message.
// Use errors.As to get it, or the Is* helpers.
type APIError struct {
	Status  int
	Message string
}

func (e *APIError) Error() string { return e.Message }

// decodeError turns a non-2xx reply into an *APIError. The body is Docker's
// {"message": "..."}; anything else is shown as text, or the status text when empty.
func decodeError(resp *http.Response) error {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, maxErrorBody)) // best effort: the status still tells
	e := &APIError{Status: resp.StatusCode}
	var body struct {
		Message string `json:"message"`
	}
	if json.Unmarshal(data, &body) == nil && body.Message != "" {
		e.Message = body.Message
		return e
	}
	e.Message = strings.TrimSpace(string(data))
	if e.Message == "" {
		e.Message = strings.ToLower(http.StatusText(resp.StatusCode))
	}
	return e
}

// StatusOf returns the HTTP status of an *APIError in err's chain, or 0.
func StatusOf(err error) int {
	var e *APIError
	if errors.As(err, &e) {
		return e.Status
	}
	return 0
}

// IsNotFound reports whether err is a 404 reply.
func IsNotFound(err error) bool { return StatusOf(err) == http.StatusNotFound }

// IsConflict reports whether err is a 409 reply.
func IsConflict(err error) bool { return StatusOf(err) == http.StatusConflict }
