package plugin

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/errdefs"
)

// testDirs builds a socket dir and two spec dirs holding the given files (paths
// relative to the dirs "run", "etc", "lib"); .sock files are real unix sockets.
func testDirs(t *testing.T, files ...string) (Dirs, string) {
	t.Helper()
	root := t.TempDir()
	for _, f := range files {
		p := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if strings.HasSuffix(f, ".sock") {
			l, err := net.Listen("unix", p)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { l.Close() })
			continue
		}
		content := "unix:///" + f + "\n"
		if strings.HasSuffix(f, ".json") {
			content = `{"Name": "ignored", "Addr": "tcp://` + filepath.Base(f) + `:1"}`
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return Dirs{Sockets: []string{filepath.Join(root, "run")},
		Specs: []string{filepath.Join(root, "etc"), filepath.Join(root, "lib")}}, root
}

func TestLookupOrder(t *testing.T) {
	for _, tc := range []struct {
		files []string
		want  string // winning file, relative to the root
	}{
		{[]string{"run/n.sock", "run/n/n.sock", "etc/n.spec"}, "run/n.sock"},
		{[]string{"run/n/n.sock", "etc/n.spec"}, "run/n/n.sock"},
		{[]string{"etc/n.spec", "etc/n/n.spec", "etc/n.json", "lib/n.spec"}, "etc/n.spec"},
		{[]string{"etc/n/n.spec", "etc/n.json"}, "etc/n/n.spec"},
		{[]string{"etc/n.json", "etc/n/n.json", "lib/n.spec"}, "etc/n.json"},
		{[]string{"etc/n/n.json", "lib/n.spec"}, "etc/n/n.json"},
		{[]string{"lib/n.spec", "lib/n.json"}, "lib/n.spec"},
		{[]string{"lib/n/n.json", "etc/other.spec"}, "lib/n/n.json"},
	} {
		dirs, root := testDirs(t, tc.files...)
		spec, err := dirs.Lookup("n")
		if err != nil {
			t.Errorf("%v: %v", tc.files, err)
			continue
		}
		if got, _ := filepath.Rel(root, spec.Source); got != tc.want {
			t.Errorf("%v: found %s, want %s", tc.files, got, tc.want)
		}
	}
}

func TestLookupAddresses(t *testing.T) {
	dirs, root := testDirs(t, "run/s.sock", "etc/f.spec", "lib/j.json")
	for name, want := range map[string]string{
		"s": "unix://" + filepath.Join(root, "run/s.sock"),
		"f": "unix:///etc/f.spec",
		"j": "tcp://j.json:1",
	} {
		spec, err := dirs.Lookup(name)
		if err != nil || spec.Addr != want || spec.Name != name {
			t.Errorf("Lookup(%s) = %+v, %v; want address %s", name, spec, err, want)
		}
	}
}

func TestLookupIgnoresNonSocketSockFiles(t *testing.T) {
	dirs, _ := testDirs(t, "lib/n.spec")
	if err := os.MkdirAll(dirs.Sockets[0], 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dirs.Sockets[0], "n.sock"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if spec, err := dirs.Lookup("n"); err != nil || !strings.HasSuffix(spec.Source, "lib/n.spec") {
		t.Errorf("Lookup = %+v, %v; want lib/n.spec (a regular n.sock is not a socket)", spec, err)
	}
}

func TestLookupNotFoundSaysWhere(t *testing.T) {
	dirs, _ := testDirs(t)
	_, err := dirs.Lookup("weave")
	if !errdefs.Is(err, errdefs.KindNotFound) {
		t.Fatalf("err = %v, want NotFound", err)
	}
	want := `plugin "weave" not found (looked in ` + strings.Join(dirs.all(), ", ") + ")"
	if err.Error() != want {
		t.Errorf("err = %q\nwant  %q", err, want)
	}
}

func TestLookupRefusesPathNames(t *testing.T) {
	dirs, _ := testDirs(t)
	for _, name := range []string{"", "../x", "a/b", ".hidden"} {
		if _, err := dirs.Lookup(name); !errdefs.Is(err, errdefs.KindInvalidArgument) {
			t.Errorf("Lookup(%q) = %v, want InvalidArgument", name, err)
		}
	}
}

func TestParseSpecs(t *testing.T) {
	for _, tc := range []struct {
		in, json string
		want     Spec
		err      string
	}{
		{in: " unix:///run/p.sock \n", want: Spec{Name: "p", Addr: "unix:///run/p.sock"}},
		{in: "tcp://192.0.2.1:8080", want: Spec{Name: "p", Addr: "tcp://192.0.2.1:8080"}},
		{in: "192.0.2.1:8080", err: "invalid plugin address"},
		{in: "unix://", err: "no socket path"},
		{in: "ftp://x", err: "protocol must be"},
		{json: `{"Name":"other","Addr":"https://192.0.2.1:443","TLSConfig":{"CAFile":"/ca.pem"}}`,
			want: Spec{Name: "p", Addr: "https://192.0.2.1:443", TLSConfig: &TLSConfig{CAFile: "/ca.pem"}}},
		{json: `{"Addr": 3}`, err: "invalid JSON"},
		{json: `{}`, err: "protocol must be"},
	} {
		var got Spec
		var err error
		if tc.json != "" {
			got, err = ParseJSONSpec("p", []byte(tc.json))
		} else {
			got, err = ParseSpec("p", []byte(tc.in))
		}
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("%q%s: err = %v, want %q", tc.in, tc.json, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%q%s: %v", tc.in, tc.json, err)
		}
		if d := cmp.Diff(tc.want, got); d != "" {
			t.Errorf("%q%s: (-want +got)\n%s", tc.in, tc.json, d)
		}
	}
}

func FuzzParseSpec(f *testing.F) {
	f.Add([]byte("unix:///run/docker/plugins/x.sock"), true)
	f.Add([]byte(`{"Name":"x","Addr":"tcp://h:1","TLSConfig":{"InsecureSkipVerify":true}}`), false)
	f.Fuzz(func(t *testing.T, b []byte, text bool) {
		parse := ParseJSONSpec
		if text {
			parse = ParseSpec
		}
		s, err := parse("x", b)
		if err != nil {
			return
		}
		if _, err := NewClient(s, 0); err != nil && s.TLSConfig == nil {
			t.Errorf("a valid spec %+v makes no client: %v", s, err)
		}
	})
}
