package caddymodule

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsPassPromlint(t *testing.T) {
	for _, c := range append(metricCollectors(), metrics.mirrorLive) {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
}

func TestMetricsCountLoginsAndChecks(t *testing.T) {
	g := startGateway(t, "", "softphone_api")
	okBefore := testutil.ToFloat64(metrics.logins.WithLabelValues("ok"))
	badBefore := testutil.ToFloat64(metrics.logins.WithLabelValues("invalid"))
	mediaBefore := testutil.ToFloat64(metrics.tokenChecks.WithLabelValues("media", "ok"))
	access, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	g.do("POST", g.API+"/auth/login", `{"username":"201","password":"wrong"}`)
	g.do("GET", g.API+"/check-media-access", "", bearer(access))
	if got := testutil.ToFloat64(metrics.logins.WithLabelValues("ok")) - okBefore; got != 1 {
		t.Errorf("logins ok grew by %v, want 1", got)
	}
	if got := testutil.ToFloat64(metrics.logins.WithLabelValues("invalid")) - badBefore; got != 1 {
		t.Errorf("logins invalid grew by %v, want 1", got)
	}
	if got := testutil.ToFloat64(metrics.tokenChecks.WithLabelValues("media", "ok")) - mediaBefore; got != 1 {
		t.Errorf("media token checks grew by %v, want 1", got)
	}
	// A second registry (a config reload) takes the same collectors without error.
	if err := registerMetrics(prometheus.NewRegistry()); err != nil {
		t.Fatal(err)
	}
}
