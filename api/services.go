package api

import (
	"context"
	"net/http"
	"time"

	"github.com/piernet/pier/api/types"
	"github.com/piernet/pier/cnm"
	"github.com/piernet/pier/errdefs"
	"github.com/piernet/pier/lb"
)

// decodeServiceCreate decodes and validates a service create body (pure).
func decodeServiceCreate(data []byte) (cnm.ServiceSpec, error) {
	var req types.ServiceCreateRequest
	if err := decodeJSON(data, &req); err != nil {
		return cnm.ServiceSpec{}, err
	}
	spec := cnm.ServiceSpec{Name: req.Name, Networks: req.Networks, Mode: req.EndpointMode}
	for _, p := range req.Ports {
		port, err := lb.ParsePort(p)
		if err != nil {
			return cnm.ServiceSpec{}, errdefs.InvalidArgument("%v", err)
		}
		spec.Ports = append(spec.Ports, port)
	}
	for _, p := range req.Publish {
		ports, err := cnm.ParsePublish(p)
		if err != nil {
			return cnm.ServiceSpec{}, err
		}
		spec.Publish = append(spec.Publish, ports...)
	}
	spec.IngressSNAT = req.IngressSNAT
	var err error
	if spec.Sticky, err = parseDuration("sticky", req.Sticky); err != nil {
		return cnm.ServiceSpec{}, err
	}
	if spec.StopGrace, err = parseDuration("stop grace", req.StopGrace); err != nil {
		return cnm.ServiceSpec{}, err
	}
	return spec, nil
}

func parseDuration(what, s string) (time.Duration, error) {
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return 0, errdefs.InvalidArgument("invalid %s duration %q: use a positive Go duration such as 30s or 10m", what, s)
	}
	return d, nil
}

func (s *Server) createService(w http.ResponseWriter, r *http.Request) error {
	spec, err := decodeBody(w, r, decodeServiceCreate)
	if err != nil {
		return err
	}
	svc, err := s.c.CreateService(r.Context(), spec)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, s.serviceInfo(r.Context(), svc))
	return nil
}

// decodeServiceUpdate decodes and validates a service update body (pure).
func decodeServiceUpdate(data []byte) (cnm.ServiceUpdate, error) {
	var req types.ServiceUpdateRequest
	if err := decodeJSON(data, &req); err != nil {
		return cnm.ServiceUpdate{}, err
	}
	u := cnm.ServiceUpdate{IngressSNAT: req.IngressSNAT}
	for _, p := range req.PublishAdd {
		ports, err := cnm.ParsePublish(p)
		if err != nil {
			return u, err
		}
		u.PublishAdd = append(u.PublishAdd, ports...)
	}
	for _, p := range req.PublishRm {
		if port, err := lb.ParsePort(p); err == nil { // a bare published port: 8080, 8080/udp
			u.PublishRm = append(u.PublishRm, cnm.PublishPort{Published: port.Port, Proto: port.Proto})
			continue
		}
		ports, err := cnm.ParsePublish(p)
		if err != nil {
			return u, err
		}
		u.PublishRm = append(u.PublishRm, ports...)
	}
	if len(u.PublishAdd)+len(u.PublishRm) == 0 && u.IngressSNAT == nil {
		return u, errdefs.InvalidArgument("nothing to update: give PublishAdd, PublishRm or IngressSNAT")
	}
	return u, nil
}

func (s *Server) updateService(w http.ResponseWriter, r *http.Request) error {
	u, err := decodeBody(w, r, decodeServiceUpdate)
	if err != nil {
		return err
	}
	svc, err := s.c.UpdateService(r.Context(), r.PathValue("ref"), u)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.serviceInfo(r.Context(), svc))
	return nil
}

func (s *Server) listServices(w http.ResponseWriter, r *http.Request) error {
	out := []types.ServiceInfo{}
	for _, svc := range s.c.Services(r.Context()) {
		out = append(out, s.serviceInfo(r.Context(), svc))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) inspectService(w http.ResponseWriter, r *http.Request) error {
	svc, err := s.c.Service(r.Context(), r.PathValue("ref"))
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, s.serviceInfo(r.Context(), svc))
	return nil
}

func (s *Server) deleteService(w http.ResponseWriter, r *http.Request) error {
	if err := s.c.DeleteService(r.Context(), r.PathValue("ref")); err != nil {
		return err
	}
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Server) serviceInfo(ctx context.Context, svc cnm.Service) types.ServiceInfo {
	info := types.ServiceInfo{ID: svc.ID, Name: svc.Name, Created: svc.Created, EndpointMode: svc.Mode,
		StopGrace: svc.StopGrace.String(), VirtualIPs: []types.ServiceVirtualIP{}, Tasks: []types.ServiceTask{}}
	for _, p := range svc.Ports {
		info.Ports = append(info.Ports, p.String())
	}
	if svc.Sticky > 0 {
		info.Sticky = svc.Sticky.String()
	}
	for _, p := range svc.Publish {
		info.Publish = append(info.Publish, p.String())
	}
	info.IngressSNAT = svc.IngressSNAT
	nets := map[string]bool{}
	for _, v := range svc.VIPs {
		nets[v.NetworkID] = true
		vip := types.ServiceVirtualIP{NetworkID: v.NetworkID, Network: v.NetworkID}
		if n, err := s.c.Network(ctx, v.NetworkID); err == nil {
			vip.Network = n.Name
		}
		if v.Addr.IsValid() {
			vip.Addr = v.Addr.String()
		}
		info.VirtualIPs = append(info.VirtualIPs, vip)
	}
	for _, sb := range s.c.ServiceTasks(ctx, svc) {
		t := types.ServiceTask{ID: sb.ID, Name: sb.Name, Starting: sb.Starting, Draining: sb.Draining}
		eps, _ := s.c.SandboxEndpoints(ctx, sb.ID)
		for _, ep := range eps {
			if nets[ep.NetworkID] && ep.Addr4.IsValid() {
				t.Addrs = append(t.Addrs, ep.Addr4.Addr().String())
			}
		}
		info.Tasks = append(info.Tasks, t)
	}
	for _, ep := range s.c.RemoteTasks(ctx, svc) {
		t := types.ServiceTask{ID: ep.SandboxID, Name: ep.SandboxName, Node: ep.Node.Name, Starting: ep.Starting, Draining: ep.Draining}
		if ep.Addr4.IsValid() {
			t.Addrs = []string{ep.Addr4.Addr().String()}
		}
		info.Tasks = append(info.Tasks, t)
	}
	return info
}
