package member

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"strings"

	"github.com/piernet/pier/errdefs"
)

// tokenPrefix starts every join token; the digit is the token format's version.
const tokenPrefix = "PIER1-"

// encLen is the length of a base32 SHA-256 fingerprint or 32-byte secret (52).
var encLen = b32.EncodedLen(sha256.Size)

// Token is a parsed join token: PIER1-<CA fingerprint>-<secret>. The fingerprint lets
// the joiner authenticate the join service (it pins the cluster CA); the secret lets
// the join service authenticate the joiner.
type Token struct {
	Fingerprint string // lower-case base32 SHA-256 of the cluster CA certificate's DER
	Secret      string // lower-case base32 of 32 random bytes
}

// String returns the token as users pass it to --cluster-token.
func (t Token) String() string { return tokenPrefix + t.Fingerprint + "-" + t.Secret }

// ParseToken checks the format of a join token (it does not contact anything).
func ParseToken(s string) (Token, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Token{}, errdefs.InvalidArgument("empty join token: give the token printed by --cluster-init (pier cluster token)")
	}
	rest, ok := strings.CutPrefix(s, tokenPrefix)
	fp, secret, ok2 := strings.Cut(rest, "-")
	if !ok || !ok2 || !isB32(fp) || !isB32(secret) {
		return Token{}, errdefs.InvalidArgument("malformed join token: want %s<52 base32 characters>-<52 base32 characters>, as printed by --cluster-init (pier cluster token)", tokenPrefix)
	}
	return Token{Fingerprint: fp, Secret: secret}, nil
}

func isB32(s string) bool {
	if len(s) != encLen {
		return false
	}
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || '2' <= c && c <= '7') {
			return false
		}
	}
	_, err := b32.DecodeString(strings.ToUpper(s))
	return err == nil
}

// newSecret returns a fresh token secret.
func newSecret() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", err
	}
	return lower(b32.EncodeToString(b[:])), nil
}

// secretEqual compares two secrets in constant time (hashing first makes the time
// independent of the lengths too).
func secretEqual(a, b string) bool {
	ha, hb := sha256.Sum256([]byte(a)), sha256.Sum256([]byte(b))
	return subtle.ConstantTimeCompare(ha[:], hb[:]) == 1
}
