package plugin

import (
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// Docker's plugin directories, the defaults of Dirs.
const (
	DefaultSocketDir = "/run/docker/plugins"
	DefaultEtcDir    = "/etc/docker/plugins"
	DefaultLibDir    = "/usr/lib/docker/plugins"
)

// Dirs are where plugins are looked for: unix sockets first, then spec files.
type Dirs struct {
	Sockets []string // N.sock or N/N.sock
	Specs   []string // N.spec, N/N.spec, N.json, N/N.json
}

// DefaultDirs returns Docker's directories.
func DefaultDirs() Dirs {
	return Dirs{Sockets: []string{DefaultSocketDir}, Specs: []string{DefaultEtcDir, DefaultLibDir}}
}

// IsZero reports whether no directory is set.
func (d Dirs) IsZero() bool { return len(d.Sockets) == 0 && len(d.Specs) == 0 }

// Spec is where a discovered plugin listens.
type Spec struct {
	Name      string
	Addr      string     // unix:///path.sock, tcp://host:port, http(s)://host:port
	TLSConfig *TLSConfig `json:",omitempty"`
	Source    string     `json:"-"` // the socket or file it was found at
}

// TLSConfig is the TLS part of a .json spec file (Docker's field names).
type TLSConfig struct {
	InsecureSkipVerify bool
	CAFile             string
	CertFile           string
	KeyFile            string
}

// Lookup finds plugin name the way Docker does: the first socket N.sock or N/N.sock in
// the socket directories, else the first of N.spec, N/N.spec, N.json, N/N.json in each
// spec directory in turn. A missing plugin is a NotFound error naming every place
// looked at.
func (d Dirs) Lookup(name string) (Spec, error) {
	if err := validName(name); err != nil {
		return Spec{}, err
	}
	for _, p := range d.candidates(name) {
		spec, found, err := readCandidate(name, p)
		if found || err != nil {
			return spec, err
		}
	}
	return Spec{}, errdefs.NotFound("plugin %q not found (looked in %s)", name, strings.Join(d.all(), ", "))
}

// candidates lists the paths Lookup tries, in order.
func (d Dirs) candidates(name string) []string {
	var out []string
	for _, dir := range d.Sockets {
		out = append(out, paths(dir, name, ".sock")...)
	}
	for _, dir := range d.Specs {
		out = append(out, paths(dir, name, ".spec")...)
		out = append(out, paths(dir, name, ".json")...)
	}
	return out
}

func (d Dirs) all() []string { return append(append([]string{}, d.Sockets...), d.Specs...) }

func paths(dir, name, ext string) []string {
	return []string{filepath.Join(dir, name+ext), filepath.Join(dir, name, name+ext)}
}

func validName(name string) error {
	if name == "" || strings.ContainsAny(name, "/\\\x00") || strings.HasPrefix(name, ".") {
		return errdefs.InvalidArgument("invalid plugin name %q", name)
	}
	return nil
}

// readCandidate reads the socket or spec file at p; found is false when p does not
// exist (or is not a socket, for .sock paths).
func readCandidate(name, p string) (Spec, bool, error) {
	fi, err := os.Stat(p)
	if err != nil {
		return Spec{}, false, nil
	}
	switch filepath.Ext(p) {
	case ".sock":
		if fi.Mode()&os.ModeSocket == 0 {
			return Spec{}, false, nil
		}
		return Spec{Name: name, Addr: "unix://" + p, Source: p}, true, nil
	case ".spec":
		s, err := readSpecFile(name, p, ParseSpec)
		return s, true, err
	default:
		s, err := readSpecFile(name, p, ParseJSONSpec)
		return s, true, err
	}
}

func readSpecFile(name, p string, parse func(string, []byte) (Spec, error)) (Spec, error) {
	b, err := os.ReadFile(p)
	if err != nil {
		return Spec{}, fmt.Errorf("reading plugin spec %s: %w", p, err)
	}
	s, err := parse(name, b)
	if err != nil {
		return Spec{}, fmt.Errorf("plugin spec %s: %w", p, err)
	}
	s.Source = p
	return s, nil
}

// ParseSpec decodes a .spec file: one URL.
func ParseSpec(name string, b []byte) (Spec, error) {
	s := Spec{Name: name, Addr: strings.TrimSpace(string(b))}
	return s, checkAddr(s.Addr)
}

// ParseJSONSpec decodes a .json spec file: {"Name","Addr","TLSConfig"}. The file's
// Name is ignored: the plugin is the one it was looked up as (as in Docker).
func ParseJSONSpec(name string, b []byte) (Spec, error) {
	var s Spec
	if err := json.Unmarshal(b, &s); err != nil {
		return Spec{}, errdefs.InvalidArgument("invalid JSON: %v", err)
	}
	s.Name = name
	return s, checkAddr(s.Addr)
}

func checkAddr(addr string) error {
	u, err := url.Parse(addr)
	if err != nil {
		return errdefs.InvalidArgument("invalid plugin address %q: %v", addr, err)
	}
	switch u.Scheme {
	case "unix":
		if u.Path == "" {
			return errdefs.InvalidArgument("invalid plugin address %q: no socket path", addr)
		}
	case "tcp", "http", "https":
		if u.Host == "" {
			return errdefs.InvalidArgument("invalid plugin address %q: no host", addr)
		}
	default:
		return errdefs.InvalidArgument("invalid plugin address %q: protocol must be unix, tcp, http or https", addr)
	}
	return nil
}
