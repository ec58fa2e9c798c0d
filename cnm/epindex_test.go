package cnm

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
)

// TestEndpointIndexFollowsChurn: after every operation of a random churn (connect,
// disconnect, endpoint create/delete, sandbox delete), the index answers
// exactly what a scan of all endpoints does.
func TestEndpointIndexFollowsChurn(t *testing.T) {
	r := newRig(t)
	ctx := t.Context()
	for i := range 3 {
		_, err := r.c.CreateNetwork(ctx, NetworkSpec{Name: fmt.Sprint("n", i)})
		r.must(t, err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	for step := range 400 {
		net, sb := fmt.Sprint("n", rng.IntN(3)), fmt.Sprint("s", rng.IntN(6))
		switch rng.IntN(5) {
		case 0, 1:
			_, _ = r.c.CreateSandbox(ctx, SandboxSpec{Name: sb})
			_, _ = r.c.Connect(ctx, net, sb, EndpointSpec{})
		case 2:
			_ = r.c.Disconnect(ctx, net, sb)
		case 3:
			_, _ = r.c.CreateEndpoint(ctx, net, EndpointSpec{Name: fmt.Sprint("e", step)})
			if eps, _ := r.c.Endpoints(ctx, net); len(eps) > 0 {
				_ = r.c.DeleteEndpoint(ctx, net, eps[rng.IntN(len(eps))].ID)
			}
		case 4:
			_ = r.c.DeleteSandbox(ctx, sb, true)
		}
		checkIndex(t, r.c, step)
	}
}

func checkIndex(t *testing.T, c *Controller, step int) {
	t.Helper()
	c.mu.RLock()
	defer c.mu.RUnlock()
	ids := func(eps []*Endpoint) []string {
		var out []string
		for _, ep := range eps {
			out = append(out, ep.ID)
		}
		slices.Sort(out)
		return out
	}
	byNet, bySb := map[string][]*Endpoint{}, map[string][]*Endpoint{}
	for _, ep := range c.endpoints {
		byNet[ep.NetworkID] = append(byNet[ep.NetworkID], ep)
		if ep.SandboxID != "" {
			bySb[ep.SandboxID] = append(bySb[ep.SandboxID], ep)
		}
	}
	for nid := range c.networks {
		var got []*Endpoint
		for ep := range c.epIndex.byNetwork[nid] {
			got = append(got, ep)
		}
		if !slices.Equal(ids(got), ids(byNet[nid])) {
			t.Fatalf("step %d: network %s: index %v, scan %v", step, nid[:6], ids(got), ids(byNet[nid]))
		}
	}
	for sid := range c.sandboxes {
		if got, want := ids(c.sandboxEndpointsLocked(sid)), ids(bySb[sid]); !slices.Equal(got, want) {
			t.Fatalf("step %d: sandbox %s: index %v, scan %v", step, sid[:6], got, want)
		}
	}
	if len(c.epIndex.bySandbox) > len(c.sandboxes) || len(c.epIndex.byNetwork) > len(c.networks) {
		t.Fatalf("step %d: index keeps keys of deleted sandboxes or networks", step)
	}
}

// TestEndpointRecordStaysFlat: splitting Endpoint into its cluster facts and host
// facts keeps the stored JSON as it was, so records of earlier versions still load.
func TestEndpointRecordStaysFlat(t *testing.T) {
	old := `{"ID":"e1","Name":"web","NetworkID":"n1","Created":"2026-01-01T00:00:00Z","Addr4":"10.0.0.2/24","MAC":"02:42:0a:00:00:02","Transient":true,"SandboxID":"s1","IfName":"eth0","Gateway4":"10.0.0.1"}`
	var ep Endpoint
	if err := json.Unmarshal([]byte(old), &ep); err != nil {
		t.Fatal(err)
	}
	if ep.Name != "web" || ep.IfName != "eth0" || !ep.Transient || ep.Gateway4.String() != "10.0.0.1" {
		t.Fatalf("decoded %+v", ep)
	}
	b, _ := json.Marshal(ep)
	var keys map[string]any
	_ = json.Unmarshal(b, &keys)
	if _, nested := keys["EndpointFacts"]; nested || keys["SandboxID"] != "s1" {
		t.Fatalf("record is not flat: %s", b)
	}
}
