package wg

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"testing"

	"github.com/piernet/pier/errdefs"
)

// TestPublic checks Public against RFC 7748's test vector (section 6.1, Alice).
func TestPublic(t *testing.T) {
	var k Key
	b, _ := hex.DecodeString("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
	copy(k[:], b)
	pub := k.Public()
	if got := hex.EncodeToString(pub[:]); got != "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a" {
		t.Errorf("public key %s", got)
	}
}

func TestParseKey(t *testing.T) {
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	got, err := ParseKey(k.String())
	if err != nil || got != k {
		t.Fatalf("round trip: %v, %v", got, err)
	}
	for _, bad := range []string{"", "abc", k.String()[:40], "!" + k.String()[1:]} {
		if _, err := ParseKey(bad); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("ParseKey(%q): %v", bad, err)
		}
	}
}

func TestLoadOrCreateKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "state", "wg", "private.key")
	k, created, err := LoadOrCreateKey(path)
	if err != nil || !created {
		t.Fatalf("create: %v created=%v", err, created)
	}
	for p, mode := range map[string]os.FileMode{path: 0o600, filepath.Dir(path): 0o700 | os.ModeDir} {
		if st, err := os.Stat(p); err != nil || st.Mode() != mode {
			t.Errorf("%s: mode %v (%v), want %v", p, st.Mode(), err, mode)
		}
	}
	again, created, err := LoadOrCreateKey(path)
	if err != nil || created || again != k {
		t.Fatalf("load: %v created=%v same=%v", err, created, again == k)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(path); !errdefs.Is(err, errdefs.KindForbidden) {
		t.Errorf("0644 key file: %v, want a forbidden error", err)
	}
	garbage := filepath.Join(filepath.Dir(path), "garbage.key")
	if err := os.WriteFile(garbage, []byte("not a key\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, err := LoadOrCreateKey(garbage); !errdefs.Is(err, errdefs.KindInvalidArgument) {
		t.Errorf("garbage key file: %v, want an invalid-argument error", err)
	}
	if b, _ := os.ReadFile(garbage); string(b) != "not a key\n" {
		t.Errorf("garbage file was replaced: %q", b)
	}
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 2 {
		t.Errorf("leftover files: %v", entries)
	}
}
