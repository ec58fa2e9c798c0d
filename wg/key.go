package wg

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/crypto/curve25519"

	"github.com/piernet/pier/errdefs"
)

// Key is a Curve25519 key, private or public, as WireGuard uses them. Its text form
// is base64, as `wg genkey` prints it.
type Key [32]byte

// GenerateKey returns a new private key (clamped, as WireGuard expects).
func GenerateKey() (Key, error) {
	var k Key
	if _, err := rand.Read(k[:]); err != nil {
		return Key{}, fmt.Errorf("generating wireguard key: %w", err)
	}
	k[0] &= 248
	k[31] = (k[31] & 127) | 64
	return k, nil
}

// Public returns the public key of the private key k.
func (k Key) Public() Key {
	var p Key
	pub, err := curve25519.X25519(k[:], curve25519.Basepoint)
	if err != nil { // only for a low-order result, impossible with the base point
		panic(err)
	}
	copy(p[:], pub)
	return p
}

// IsZero reports whether k is the zero key (unset).
func (k Key) IsZero() bool { return k == Key{} }

// String returns k in base64.
func (k Key) String() string { return base64.StdEncoding.EncodeToString(k[:]) }

// ParseKey parses a base64 key.
func ParseKey(s string) (Key, error) {
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil || len(b) != len(Key{}) {
		return Key{}, errdefs.InvalidArgument("invalid wireguard key %q: want 32 bytes in base64", s)
	}
	return Key(b), nil
}

// LoadOrCreateKey reads the private key stored at path, or creates one there (in a
// directory of mode 0700, a file of mode 0600, written atomically) when the file does
// not exist; created reports which. A key file readable or writable by anyone but its
// owner, or not holding one base64 key, is refused: pier never uses a private key that
// may have leaked, nor replaces a file it does not understand.
func LoadOrCreateKey(path string) (k Key, created bool, err error) {
	k, err = loadKey(path)
	if !errors.Is(err, os.ErrNotExist) {
		return k, false, err
	}
	if k, err = GenerateKey(); err != nil {
		return Key{}, false, err
	}
	if err := writeKey(path, k); err != nil {
		return Key{}, false, err
	}
	return k, true, nil
}

func loadKey(path string) (Key, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return Key{}, err
		}
		return Key{}, fmt.Errorf("opening wireguard key: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Key{}, fmt.Errorf("opening wireguard key: %w", err)
	}
	if !st.Mode().IsRegular() || st.Mode().Perm()&0o077 != 0 {
		return Key{}, errdefs.Forbidden("wireguard key %s has mode %v: it must be a regular file of mode 0600 (chmod 600 it, or remove it to make a new key)", path, st.Mode())
	}
	b := make([]byte, 128)
	n, err := f.Read(b)
	if err != nil {
		return Key{}, fmt.Errorf("reading wireguard key %s: %w", path, err)
	}
	k, err := ParseKey(string(bytes.TrimSpace(b[:n])))
	if err != nil {
		return Key{}, errdefs.InvalidArgument("wireguard key %s does not hold a base64 key (remove it to make a new key)", path)
	}
	return k, nil
}

func writeKey(path string, k Key) error {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating wireguard key directory: %w", err)
	}
	tmp, err := os.CreateTemp(dir, ".key-*")
	if err != nil {
		return fmt.Errorf("creating wireguard key: %w", err)
	}
	defer os.Remove(tmp.Name()) // fails harmlessly after the rename
	_, err = tmp.WriteString(k.String() + "\n")
	if err == nil {
		err = tmp.Chmod(0o600) // CreateTemp makes 0600 already; say it
	}
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		return fmt.Errorf("writing wireguard key %s: %w", path, err)
	}
	return nil
}

// SaveKey stores private key k at path like LoadOrCreateKey does (mode 0600, written
// atomically), replacing the key there: a rotation.
func SaveKey(path string, k Key) error { return writeKey(path, k) }
