package client

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// FuzzDecodeError checks that any error reply becomes an *APIError with a message.
func FuzzDecodeError(f *testing.F) {
	f.Add(404, `{"message":"network app not found"}`)
	f.Add(500, "")
	f.Add(409, `{"message":""}`)
	f.Fuzz(func(t *testing.T, status int, body string) {
		if status < 100 || status > 999 {
			return
		}
		resp := &http.Response{StatusCode: status, Body: io.NopCloser(strings.NewReader(body))}
		err := decodeError(resp)
		e, ok := err.(*APIError)
		if !ok || e.Status != status {
			t.Fatalf("decodeError = %#v", err)
		}
		if e.Message == "" && http.StatusText(status) != "" {
			t.Errorf("empty message for status %d body %q", status, body)
		}
	})
}

// FuzzFilters checks that filters survive encoding.
func FuzzFilters(f *testing.F) {
	f.Add("name", "app", "label", "a=b")
	f.Fuzz(func(t *testing.T, k1, v1, k2, v2 string) {
		fl := Filters{}
		fl.Add(k1, v1)
		fl.Add(k2, v2)
		if _, err := fl.encode(); err != nil {
			t.Fatalf("encode: %v", err)
		}
	})
}
