package cluster

import (
	"encoding/json"
	"reflect"
	"testing"
)

// What comes back from etcd is input: the decoders must never panic, and what they
// accept must survive a round trip unchanged.
func fuzzDecoder[T any](f *testing.F, decode func([]byte) (T, error), seeds ...string) {
	for _, s := range seeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		v, err := decode(b)
		if err != nil {
			return
		}
		again, err := decode(mustJSON(v))
		if err != nil {
			t.Fatalf("re-decoding an accepted record: %v", err)
		}
		if !reflect.DeepEqual(jsonOf(t, v), jsonOf(t, again)) {
			t.Fatalf("round trip changed the record:\n%s\n%s", mustJSON(v), mustJSON(again))
		}
	})
}

func jsonOf(t *testing.T, v any) any {
	var out any
	if err := json.Unmarshal(mustJSON(v), &out); err != nil {
		t.Fatal(err)
	}
	return out
}

func FuzzDecodeNode(f *testing.F) {
	fuzzDecoder(f, DecodeNode, `{"ID":"a","Name":"h1","Addr":"192.0.2.1","Version":"v","Started":"2026-01-01T00:00:00Z"}`,
		`{"ID":"","Name":"h1"}`, `{"ID":"a/b","Name":"x","Addr":"::1"}`, `[]`)
}

func FuzzDecodeNetwork(f *testing.F) {
	fuzzDecoder(f, DecodeNetwork, `{"ID":"n","Name":"ov","Driver":"overlay","IPv4":[{"PoolID":"global/10.0.0.0/24","Subnet":"10.0.0.0/24","Gateway":"10.0.0.1/24"}],"VNIs":[4096]}`,
		`{"ID":"n","Name":"ov","Driver":"overlay","IPv4":[{"Subnet":"10.0.0.0/24","Gateway":"10.9.0.1/24"}]}`, `{"ID":"n"}`)
}

func FuzzDecodeEndpoint(f *testing.F) {
	fuzzDecoder(f, DecodeEndpoint, `{"ID":"e","Name":"web","NetworkID":"n","NodeID":"x","Addr4":"10.0.0.2/24","MAC":"02:42:0a:00:00:02","DNSNames":["web"]}`,
		`{"ID":"e","Name":"web","NetworkID":"n","NodeID":"x","Addr4":"fd00::1/64"}`)
}

func FuzzDecodePools(f *testing.F) {
	fuzzDecoder(f, decodePools, `{"Pools":[{"ID":"10.0.0.0/24","Subnet":"10.0.0.0/24","Network":"ov"}]}`, `{"Pools":[{"ID":"x","Subnet":"10.0.0.0/24"}]}`, ``)
}

func FuzzDecodeService(f *testing.F) {
	fuzzDecoder(f, DecodeService, `{"ID":"s","Name":"web","Mode":"vip","Ports":["80/tcp"],"StopGrace":1000000000,"VIPs":[{"NetworkID":"n","Addr":"10.0.0.2/24"}],"Created":"2026-01-01T00:00:00Z"}`,
		`{"ID":"s","Name":"web","VIPs":[]}`, `{"ID":"s","Name":"w","VIPs":[{"NetworkID":"n","Addr":"fd00::1/64"}]}`, `null`)
}
