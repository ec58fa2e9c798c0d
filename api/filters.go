package api

import (
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
)

// filters is Docker's filters query parameter: term → values.
type filters map[string][]string

// parseFilters decodes the filters parameter, in both of Docker's encodings:
// {"name":{"app":true}} (API ≥ 1.22) and {"name":["app"]}. allowed lists the terms
// the route understands; others are an InvalidArgument error, as in Docker.
func parseFilters(raw string, allowed ...string) (filters, error) {
	f := filters{}
	if raw == "" {
		return f, nil
	}
	var sets map[string]map[string]bool
	if err := json.Unmarshal([]byte(raw), &sets); err == nil {
		for term, vals := range sets {
			for v, on := range vals {
				if on {
					f[term] = append(f[term], v)
				}
			}
			slices.Sort(f[term])
		}
	} else if err := json.Unmarshal([]byte(raw), (*map[string][]string)(&f)); err != nil {
		return nil, errdefs.InvalidArgument("invalid filters %q: want a JSON object such as {\"name\":{\"app\":true}}", raw)
	}
	for term := range f {
		if !slices.Contains(allowed, term) {
			return nil, errdefs.InvalidArgument("invalid filter '%s'", term)
		}
	}
	return f, nil
}

// anyOf reports whether term is absent or one of its values satisfies ok.
func (f filters) anyOf(term string, ok func(string) bool) bool {
	vals, set := f[term]
	return !set || slices.ContainsFunc(vals, ok)
}

// labels reports whether every label filter of term ("key" or "key=value") matches;
// with negate, whether none does (Docker's label!=).
func (f filters) labels(term string, labels map[string]string, negate bool) bool {
	for _, v := range f[term] {
		k, want, hasValue := strings.Cut(v, "=")
		got, ok := labels[k]
		if (ok && (!hasValue || got == want)) == negate {
			return false
		}
	}
	return true
}

// nameMatch is Docker's filters.Match: equal, or matching as a regular expression.
func nameMatch(pattern, s string) bool {
	if pattern == s {
		return true
	}
	re, err := regexp.Compile(pattern)
	return err == nil && re.MatchString(s)
}

var networkListTerms = []string{"name", "id", "driver", "label", "scope", "type", "dangling"}

// networkFilter selects networks for GET /networks.
type networkFilter struct {
	f        filters
	dangling *bool
}

func newNetworkFilter(raw string) (networkFilter, error) {
	f, err := parseFilters(raw, networkListTerms...)
	if err != nil {
		return networkFilter{}, err
	}
	for _, t := range f["type"] {
		if t != "custom" && t != "builtin" {
			return networkFilter{}, errdefs.InvalidArgument("invalid filter: 'type'='%s'", t)
		}
	}
	nf := networkFilter{f: f}
	for _, v := range f["dangling"] {
		b, err := strconv.ParseBool(v)
		if err != nil || nf.dangling != nil && *nf.dangling != b {
			return networkFilter{}, errdefs.InvalidArgument("invalid filter 'dangling=%s'", v)
		}
		nf.dangling = &b
	}
	return nf, nil
}

// needsEndpoints reports whether match needs the networks' endpoint counts.
func (nf networkFilter) needsEndpoints() bool { return nf.dangling != nil }

func (nf networkFilter) match(n cnm.Network, endpoints int) bool {
	f := nf.f
	typ := "custom"
	if n.Predefined {
		typ = "builtin"
	}
	return f.anyOf("name", func(v string) bool { return nameMatch(v, n.Name) }) &&
		f.anyOf("id", func(v string) bool { return strings.HasPrefix(n.ID, v) }) &&
		f.anyOf("driver", func(v string) bool { return v == n.Driver }) &&
		f.anyOf("scope", func(v string) bool { return v == string(n.Scope) }) &&
		f.anyOf("type", func(v string) bool { return v == typ }) &&
		f.labels("label", n.Labels, false) &&
		(nf.dangling == nil || *nf.dangling == (!n.Predefined && endpoints == 0))
}

// pruneFilter selects networks for POST /networks/prune (label, label!, until).
type pruneFilter struct {
	f     filters
	until time.Time
}

func newPruneFilter(raw string, now time.Time) (pruneFilter, error) {
	f, err := parseFilters(raw, "label", "label!", "until")
	if err != nil {
		return pruneFilter{}, err
	}
	pf := pruneFilter{f: f}
	if us := f["until"]; len(us) > 0 {
		if len(us) > 1 {
			return pruneFilter{}, errdefs.InvalidArgument("more than one until filter specified")
		}
		if pf.until, err = parseUntil(us[0], now); err != nil {
			return pruneFilter{}, err
		}
	}
	return pf, nil
}

func (pf pruneFilter) match(n cnm.Network) bool {
	return pf.f.labels("label", n.Labels, false) && pf.f.labels("label!", n.Labels, true) &&
		(pf.until.IsZero() || n.Created.Before(pf.until))
}

// parseUntil parses Docker's until value: a Go duration before now ("24h"), an RFC 3339
// date or date-time, or Unix seconds ("1700000000.5").
func parseUntil(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t, nil
		}
	}
	if secs, err := strconv.ParseFloat(s, 64); err == nil && secs >= 0 && secs < 1e11 {
		sec := int64(secs)
		return time.Unix(sec, int64((secs-float64(sec))*1e9)), nil
	}
	return time.Time{}, errdefs.InvalidArgument("invalid until filter %q: want a duration (24h), an RFC 3339 time or Unix seconds", s)
}
