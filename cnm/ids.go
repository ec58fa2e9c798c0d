package cnm

import (
	"crypto/rand"
	"encoding/hex"
	"regexp"
	"strings"
	"unicode/utf8"

	"github.com/piernet/pier/errdefs"
)

// NewID returns a random 64-hex ID.
func NewID() string {
	var b [32]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]*$`)

// maxNameLen bounds sandbox and endpoint names: they become DNS names and /etc/hosts
// entries (DNS names are at most 255 bytes with the network domain).
const maxNameLen = 128

func validName(kind, name string) error {
	if len(name) > maxNameLen {
		return errdefs.InvalidArgument("invalid %s name: %d characters is too long (at most %d: the name is served by DNS and written to /etc/hosts)", kind, len(name), maxNameLen)
	}
	if !nameRE.MatchString(name) {
		return errdefs.InvalidArgument("invalid %s name %q: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed", kind, name)
	}
	return nil
}

// validNetworkName accepts what Docker accepts: any name that is not blank. pier uses
// network names only as labels (never as interface or file names), so there is no
// other limit; invalid UTF-8 is refused because it cannot round-trip through JSON.
func validNetworkName(name string) error {
	if strings.TrimSpace(name) == "" {
		return errdefs.InvalidArgument("invalid network name %q: it must not be blank", name)
	}
	if !utf8.ValidString(name) {
		return errdefs.InvalidArgument("invalid network name %q: it is not valid UTF-8", name)
	}
	return nil
}

// named is anything with an ID and a name.
type named interface {
	comparable
	id() string
	name() string
}

// lookup finds by full ID, then exact name, then unique ID prefix (Docker's order).
func lookup[T named](m map[string]T, kind, ref string) (T, error) {
	var zero T
	if v, ok := m[ref]; ok {
		return v, nil
	}
	for _, v := range m {
		if v.name() == ref {
			return v, nil
		}
	}
	var found T
	matches := 0
	for id, v := range m {
		if ref != "" && strings.HasPrefix(id, ref) {
			found, matches = v, matches+1
		}
	}
	switch matches {
	case 0:
		return zero, errdefs.NotFound("%s %s not found", kind, ref)
	case 1:
		return found, nil
	}
	return zero, errdefs.InvalidArgument("%s %s is ambiguous (%d matches found based on ID prefix)", kind, ref, matches)
}
