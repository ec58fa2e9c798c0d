package client

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
)

// Filters is Docker's filters argument: term → values, e.g. name → [app, web].
// It is sent as {"name":{"app":true,"web":true}}.
type Filters map[string][]string

// Add adds value to term.
func (f Filters) Add(term, value string) { f[term] = append(f[term], value) }

// ParseFilter parses a "term=value" command-line filter.
func ParseFilter(s string) (term, value string, err error) {
	term, value, ok := strings.Cut(s, "=")
	if !ok || strings.TrimSpace(term) == "" {
		return "", "", fmt.Errorf("invalid filter %q: want term=value, such as name=app", s)
	}
	return strings.TrimSpace(term), value, nil
}

// encode returns the filters query parameter, "" when there are none.
func (f Filters) encode() (string, error) {
	if len(f) == 0 {
		return "", nil
	}
	sets := make(map[string]map[string]bool, len(f))
	for term, vals := range f {
		sets[term] = make(map[string]bool, len(vals))
		for _, v := range vals {
			sets[term][v] = true
		}
	}
	data, err := json.Marshal(sets) // map keys are sorted: the encoding is stable
	if err != nil {
		return "", fmt.Errorf("encoding filters: %w", err)
	}
	return string(data), nil
}

// query returns f as url.Values (nil when empty).
func (f Filters) query() (url.Values, error) {
	s, err := f.encode()
	if err != nil || s == "" {
		return nil, err
	}
	return url.Values{"filters": {s}}, nil
}
