package metrics

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestMetricsPassPromlint(t *testing.T) {
	m := New(func() float64 { return 3 })
	m.Register("ok")
	m.Dropped("scanner")
	m.Hook("ok", 0.01)
	m.Expired(2)
	m.Published(true)
	m.Webhook("ok")
	m.Retransmission("absorbed")
	m.HookRequests(func() float64 { return 7 })
	for _, c := range append(m.Collectors(), m.Bindings) {
		problems, err := testutil.CollectAndLint(c)
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range problems {
			t.Errorf("%s: %s", p.Metric, p.Text)
		}
	}
	if got := testutil.ToFloat64(m.Bindings); got != 3 {
		t.Fatalf("registered_aors %v", got)
	}
	if got := testutil.ToFloat64(m.hookRequests); got != 7 {
		t.Fatalf("auth_hook_requests_total %v", got)
	}
}
