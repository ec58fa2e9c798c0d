package api

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/piernet/pier/api/types"
)

type fakeClusterView struct{ nodes []types.NodeInfo }

func (f fakeClusterView) Nodes(context.Context) ([]types.NodeInfo, error) { return f.nodes, nil }
func (f fakeClusterView) Info(context.Context) (types.ClusterInfo, error) {
	return types.ClusterInfo{NodeID: f.nodes[0].ID, NodeName: f.nodes[0].Name, Token: "PIER1-x-y"}, nil
}

func (f fakeClusterView) RotateKey(context.Context) (types.KeyRotation, error) {
	return types.KeyRotation{Generation: 2, PublicKey: "k", Took: "12ms"}, nil
}

func get(t *testing.T, s *Server, path string) (int, []byte) {
	t.Helper()
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.Bytes()
}

func TestNodeRoutes(t *testing.T) {
	single := New(Config{})
	for _, p := range []string{"/pier/v1/nodes", "/v1.50/pier/v1/nodes/h1", "/pier/v1/cluster"} {
		code, body := get(t, single, p)
		var e types.ErrorResponse
		_ = json.Unmarshal(body, &e)
		if code != http.StatusServiceUnavailable || e.Message == "" {
			t.Errorf("GET %s on a single-host pierd: %d %q, want 503 with a message", p, code, e.Message)
		}
	}
	nodes := []types.NodeInfo{{ID: "a1", Name: "h1", Address: "192.0.2.1", State: "ready", Self: true},
		{ID: "b2", Name: "h2", Address: "192.0.2.2", State: "down"}}
	s := New(Config{Cluster: fakeClusterView{nodes}})
	code, body := get(t, s, "/pier/v1/nodes")
	var got []types.NodeInfo
	if err := json.Unmarshal(body, &got); code != http.StatusOK || err != nil {
		t.Fatalf("list: %d %s", code, body)
	}
	if diff := cmp.Diff(nodes, got); diff != "" {
		t.Fatalf("list (-want +got):\n%s", diff)
	}
	for ref, want := range map[string]int{"h2": http.StatusOK, "b2": http.StatusOK, "h9": http.StatusNotFound} {
		if code, _ := get(t, s, "/pier/v1/nodes/"+ref); code != want {
			t.Errorf("inspect %s: %d, want %d", ref, code, want)
		}
	}
	var info types.ClusterInfo
	code, body = get(t, s, "/pier/v1/cluster")
	if err := json.Unmarshal(body, &info); code != http.StatusOK || err != nil || info.Token != "PIER1-x-y" {
		t.Fatalf("cluster info: %d %s", code, body)
	}
}
