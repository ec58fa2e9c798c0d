package api

import (
	"net/http"
	"strings"
	"testing"

	"github.com/piernet/pier/api/types"
)

func TestServiceRoutes(t *testing.T) {
	e := newEnv(t)
	e.must(http.StatusCreated, "POST", "/networks/create", map[string]any{"Name": "app"})
	var svc types.ServiceInfo
	e.must(http.StatusCreated, "POST", "/pier/v1/services", types.ServiceCreateRequest{Name: "web", Networks: []string{"app"},
		Ports: []string{"80/tcp"}, Sticky: "10m"}).decode(t, &svc)
	if svc.EndpointMode != "vip" || len(svc.VirtualIPs) != 1 || svc.VirtualIPs[0].Addr == "" || svc.VirtualIPs[0].Network != "app" ||
		svc.Sticky != "10m0s" || svc.StopGrace != "10s" || strings.Join(svc.Ports, ",") != "80/tcp" {
		t.Fatalf("created service: %+v", svc)
	}
	var task types.SandboxInfo
	e.must(http.StatusCreated, "POST", "/pier/v1/sandboxes", types.SandboxCreateRequest{Name: "t1", Service: "web"}).decode(t, &task)
	if task.Service != "web" || len(task.Endpoints) != 1 || task.Endpoints[0].Network != "app" {
		t.Fatalf("task: %+v (want one endpoint on app, not the default bridge)", task)
	}
	var got types.ServiceInfo
	e.must(http.StatusOK, "GET", "/pier/v1/services/web", nil).decode(t, &got)
	if len(got.Tasks) != 1 || got.Tasks[0].Name != "t1" || len(got.Tasks[0].Addrs) != 1 {
		t.Fatalf("inspect: %+v", got)
	}
	var list []types.ServiceInfo
	e.must(http.StatusOK, "GET", "/v1.50/pier/v1/services", nil).decode(t, &list)
	if len(list) != 1 || list[0].ID != svc.ID {
		t.Fatalf("list: %+v", list)
	}

	// Bad input: a clear error, nothing made.
	before := e.state()
	for _, tc := range []struct {
		req  types.ServiceCreateRequest
		code int
		msg  string
	}{
		{types.ServiceCreateRequest{Name: "web", Networks: []string{"app"}}, http.StatusConflict, "already in use"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"nope"}}, http.StatusNotFound, "not found"},
		{types.ServiceCreateRequest{Name: "x"}, http.StatusBadRequest, "at least one network"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"bridge"}}, http.StatusBadRequest, "predefined"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"app"}, Ports: []string{"80/sctp"}}, http.StatusBadRequest, "tcp or udp"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"app"}, EndpointMode: "ipvs"}, http.StatusBadRequest, "vip or dnsrr"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"app"}, EndpointMode: "dnsrr", Ports: []string{"80"}}, http.StatusBadRequest, "need endpoint mode vip"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"app"}, Sticky: "soon"}, http.StatusBadRequest, "invalid sticky"},
		{types.ServiceCreateRequest{Name: "t1", Networks: []string{"app"}}, http.StatusConflict, "sandbox's name"},
		{types.ServiceCreateRequest{Name: "bad name", Networks: []string{"app"}}, http.StatusBadRequest, "invalid service name"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"app"}, Publish: []string{"8080:80"}}, http.StatusBadRequest, "needs cluster mode"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"app"}, Publish: []string{"80"}}, http.StatusBadRequest, "give the published port"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"app"}, EndpointMode: "dnsrr", Publish: []string{"published=1,target=2"}}, http.StatusBadRequest, "dnsrr"},
		{types.ServiceCreateRequest{Name: "x", Networks: []string{"app"}, Publish: []string{"mode=host,published=1,target=2", "mode=host,published=1,target=3"}}, http.StatusBadRequest, "published twice"},
	} {
		r := e.do("POST", "/pier/v1/services", tc.req)
		if r.status != tc.code || !strings.Contains(r.message(), tc.msg) {
			t.Errorf("create %+v: %d %q, want %d containing %q", tc.req, r.status, r.message(), tc.code, tc.msg)
		}
	}
	for _, tc := range []struct {
		req  types.ServiceUpdateRequest
		code int
		msg  string
	}{
		{types.ServiceUpdateRequest{}, http.StatusBadRequest, "nothing to update"},
		{types.ServiceUpdateRequest{PublishRm: []string{"9191"}}, http.StatusBadRequest, "not published"},
		{types.ServiceUpdateRequest{PublishAdd: []string{"8080:80"}}, http.StatusBadRequest, "needs cluster mode"},
	} {
		r := e.do("POST", "/pier/v1/services/web/update", tc.req)
		if r.status != tc.code || !strings.Contains(r.message(), tc.msg) {
			t.Errorf("update %+v: %d %q, want %d containing %q", tc.req, r.status, r.message(), tc.code, tc.msg)
		}
	}
	if r := e.do("POST", "/pier/v1/sandboxes", types.SandboxCreateRequest{Name: "t2", Service: "nope"}); r.status != http.StatusNotFound {
		t.Errorf("task of a missing service: %d %s", r.status, r.body)
	}
	if after := e.state(); after != before {
		t.Errorf("failed requests changed the state:\nbefore:\n%s\nafter:\n%s", before, after)
	}
	e.must(http.StatusOK, "POST", "/pier/v1/services/web/update", types.ServiceUpdateRequest{PublishAdd: []string{"mode=host,published=9090,target=80"}}).decode(t, &got)
	if strings.Join(got.Publish, " ") != "mode=host,published=9090,target=80,protocol=tcp" {
		t.Errorf("after publish-add: %+v", got.Publish)
	}
	var rm types.ServiceInfo
	e.must(http.StatusOK, "POST", "/pier/v1/services/web/update", types.ServiceUpdateRequest{PublishRm: []string{"9090"}}).decode(t, &rm)
	if len(rm.Publish) != 0 || rm.Name != "web" {
		t.Errorf("after publish-rm: %+v", rm)
	}
	if r := e.do("DELETE", "/pier/v1/services/web", nil); r.status != http.StatusConflict || !strings.Contains(r.message(), "remove them first") {
		t.Errorf("delete with a task: %d %q", r.status, r.message())
	}
	if r := e.do("DELETE", "/networks/app", nil); r.status != http.StatusForbidden {
		t.Errorf("network delete while a service uses it: %d %s", r.status, r.body)
	}
	e.must(http.StatusNoContent, "DELETE", "/pier/v1/sandboxes/t1?force=1", nil)
	e.must(http.StatusNoContent, "DELETE", "/pier/v1/services/web", nil)
	e.must(http.StatusNotFound, "GET", "/pier/v1/services/web", nil)
}
