package member

import "testing"

func FuzzParseToken(f *testing.F) {
	f.Add("PIER1-" + "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" + "-" + "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")
	f.Add("SWMTKN-1-x")
	f.Fuzz(func(t *testing.T, s string) {
		tok, err := ParseToken(s)
		if err != nil {
			return
		}
		again, err := ParseToken(tok.String())
		if err != nil || again != tok {
			t.Fatalf("round trip of %q: %+v, %v", s, again, err)
		}
	})
}

func FuzzParseStoreURL(f *testing.F) {
	f.Add("etcd://192.0.2.1:2379")
	f.Add("etcd://[::1]:1/")
	f.Fuzz(func(t *testing.T, s string) {
		hp, err := ParseStoreURL(s)
		if err != nil {
			return
		}
		if again, err := ParseStoreURL("etcd://" + hp); err != nil || again != hp {
			t.Fatalf("round trip of %q: %q, %v", s, again, err)
		}
	})
}

func FuzzParseCSR(f *testing.F) {
	csr, _, _ := newCSR("n")
	f.Add(csr)
	f.Add([]byte("-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseCSR(b) // must not panic
	})
}
