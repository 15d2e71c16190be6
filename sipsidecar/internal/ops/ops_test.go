package ops

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

type downStore struct{ location.Store }

func (downStore) Ping(context.Context) error { return location.ErrUnavailable }
func (downStore) Lookup(context.Context, string, time.Time) ([]location.Binding, error) {
	return nil, location.ErrUnavailable
}

func TestEndpoints(t *testing.T) {
	now := time.Now()
	mem := location.NewMemory()
	mem.Update(context.Background(), "201@pbx", now, func([]location.Binding) ([]location.Binding, error) {
		return []location.Binding{{Contact: "sip:201@10.0.0.1:5060", ExpiresAt: now.Add(time.Hour), Source: "10.0.0.1:5060", Transport: "udp"}}, nil
	})
	reg := prometheus.NewRegistry()
	h := Handler(reg, mem, func() time.Time { return now })
	down := Handler(reg, downStore{mem}, func() time.Time { return now })
	cases := []struct {
		h        http.Handler
		method   string
		path     string
		status   int
		contains string
	}{
		{h, "GET", "/healthz", 200, `"ok"`},
		{h, "GET", "/readyz", 200, `"ready"`},
		{down, "GET", "/readyz", 503, "store unavailable"},
		{h, "GET", "/metrics", 200, ""},
		{h, "GET", "/locations/201@PBX", 200, `"contact":"sip:201@10.0.0.1:5060"`},
		{h, "GET", "/locations/sip:201@pbx", 200, `"source":"10.0.0.1:5060"`},
		{h, "GET", "/locations/202@pbx", 404, `"bindings":[]`},
		{h, "GET", "/locations/nodomain", 400, "user@domain"},
		{h, "GET", "/locations/" + strings.Repeat("a", 300) + "@x", 400, ""},
		{down, "GET", "/locations/201@pbx", 503, "store unavailable"},
		{h, "POST", "/locations/201@pbx", 405, ""},
	}
	for _, c := range cases {
		rec := httptest.NewRecorder()
		c.h.ServeHTTP(rec, httptest.NewRequest(c.method, c.path, nil))
		if rec.Code != c.status || !strings.Contains(rec.Body.String(), c.contains) {
			t.Errorf("%s %s: %d %s", c.method, c.path, rec.Code, rec.Body.String())
		}
	}
}
