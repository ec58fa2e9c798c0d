package member

import (
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/piernet/pier/errdefs"
)

func TestParseToken(t *testing.T) {
	fp, _ := newSecret()
	sec, _ := newSecret()
	good := Token{Fingerprint: fp, Secret: sec}
	got, err := ParseToken(" " + good.String() + "\n")
	if err != nil || got != good {
		t.Fatalf("ParseToken(good) = %+v, %v", got, err)
	}
	for _, bad := range []string{
		"", "PIER1-", "PIER2-" + fp + "-" + sec, "PIER1-" + fp, "PIER1-" + fp + "-" + sec + "-x",
		"PIER1-" + fp[:51] + "-" + sec, "PIER1-" + strings.ToUpper(fp) + "-" + sec,
		"PIER1-" + fp + "-" + sec[:51] + "1", "SWMTKN-1-" + fp + "-" + sec,
	} {
		if _, err := ParseToken(bad); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("ParseToken(%q) = %v, want an invalid argument", bad, err)
		}
	}
}

func TestParseStoreURL(t *testing.T) {
	for in, want := range map[string]string{
		"etcd://192.0.2.1:2379": "192.0.2.1:2379", "etcd://[2001:db8::1]:2379": "[2001:db8::1]:2379",
		"etcd://etcd.example:12379/": "etcd.example:12379",
	} {
		if got, err := ParseStoreURL(in); err != nil || got != want {
			t.Errorf("ParseStoreURL(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "192.0.2.1:2379", "http://a:1", "etcd://a", "etcd://:1", "etcd://a:0", "etcd://a:65536",
		"etcd://a:x", "etcd://u@a:1", "etcd://a:1/p", "etcd://a:1?q", "etcd:a:1"} {
		if _, err := ParseStoreURL(bad); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("ParseStoreURL(%q) = %v, want an invalid argument", bad, err)
		}
	}
	if got, err := ParseStoreURLs("etcd://a:1, etcd://b:2"); err != nil || len(got) != 2 || got[1] != "b:2" {
		t.Errorf("ParseStoreURLs: %v %v", got, err)
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"h1", "node-1.example", "A_b"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", ".a", "a b", "a/b", strings.Repeat("a", 64), "é"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("ValidateName(%q) accepted", bad)
		}
	}
}

func TestInitBadOptions(t *testing.T) {
	for name, o := range map[string]Options{
		"no data dir":  {Name: "a", Advertise: netip.MustParseAddr("192.0.2.1")},
		"bad name":     {DataDir: filepath.Join(t.TempDir(), "x"), Name: "a b", Advertise: netip.MustParseAddr("192.0.2.1")},
		"no advertise": {DataDir: filepath.Join(t.TempDir(), "x"), Name: "a"},
		"unspecified":  {DataDir: filepath.Join(t.TempDir(), "x"), Name: "a", Advertise: netip.MustParseAddr("0.0.0.0")},
		"bad port":     {DataDir: filepath.Join(t.TempDir(), "x"), Name: "a", Advertise: netip.MustParseAddr("192.0.2.1"), ClientPort: 70000},
	} {
		if _, err := Init(t.Context(), o); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("%s: Init = %v, want an invalid argument", name, err)
		}
		if o.DataDir != "" {
			if _, err := os.Stat(o.DataDir); !os.IsNotExist(err) {
				t.Errorf("%s: data dir created: %v", name, err)
			}
		}
	}
}

func TestExternal(t *testing.T) {
	m, err := External(ExternalOptions{Endpoints: []string{"etcd://192.0.2.1:2379", "192.0.2.2:2379"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Join(m.ClientURLs(), " "); got != "http://192.0.2.1:2379 http://192.0.2.2:2379" || m.ClientTLS() != nil || m.IsMember() {
		t.Fatalf("plain external: %s tls %v", got, m.ClientTLS())
	}

	dir := t.TempDir()
	c, err := newCA("t")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := newKey()
	crt, err := c.sign("client", &key.PublicKey, false, netip.Addr{})
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := encodeKey(key)
	caFile, certFile, keyFile := filepath.Join(dir, "ca"), filepath.Join(dir, "crt"), filepath.Join(dir, "key")
	for f, data := range map[string][]byte{caFile: c.certPEM, certFile: crt, keyFile: keyPEM, filepath.Join(dir, "junk"): []byte("junk")} {
		if err := os.WriteFile(f, data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	m, err = External(ExternalOptions{Endpoints: []string{"etcd://192.0.2.1:2379"}, CACert: caFile, Cert: certFile, Key: keyFile})
	if err != nil {
		t.Fatal(err)
	}
	if tc := m.ClientTLS(); m.ClientURLs()[0] != "https://192.0.2.1:2379" || tc == nil || len(tc.Certificates) != 1 || tc.RootCAs == nil {
		t.Fatalf("TLS external: %v %+v", m.ClientURLs(), tc)
	}
	for _, bad := range []ExternalOptions{
		{},
		{Endpoints: []string{"etcd://a:1"}, Cert: certFile},
		{Endpoints: []string{"etcd://a:1"}, CACert: filepath.Join(dir, "junk")},
		{Endpoints: []string{"etcd://a:1"}, CACert: filepath.Join(dir, "missing")},
		{Endpoints: []string{"etcd://a:1"}, Cert: certFile, Key: caFile},
	} {
		if _, err := External(bad); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("External(%+v) = %v, want an invalid argument", bad, err)
		}
	}
}
