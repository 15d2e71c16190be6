// Package metrics holds the sidecar's Prometheus metrics, on its own registry. Labels are
// small closed sets: never an AOR, a user or an address.
package metrics

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// Metrics are the sidecar's collectors.
type Metrics struct {
	Registry     *prometheus.Registry
	registers    *prometheus.CounterVec
	dropped      *prometheus.CounterVec
	hookCalls    *prometheus.CounterVec
	hookDuration prometheus.Histogram
	expired      prometheus.Counter
	publishes    *prometheus.CounterVec
	webhooks     *prometheus.CounterVec
	retransmits  *prometheus.CounterVec
	hookRequests prometheus.CounterFunc // set by HookRequests
	Bindings     prometheus.GaugeFunc
}

// New registers every collector (plus Go and process collectors) on a new registry.
// bindings reports the number of AORs with a live binding (may be nil).
func New(liveAORs func() float64) *Metrics {
	m := &Metrics{
		Registry: prometheus.NewRegistry(),
		registers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sipsidecar", Name: "requests_total",
			Help: "SIP requests handled, by result (ok, challenged, stale, forbidden, replay, bad_request, hook_unavailable, store_unavailable, nat_refresh, query, unregistered, out_of_order, too_many_contacts, bad_extension, options, not_allowed).",
		}, []string{"result"}),
		dropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sipsidecar", Name: "dropped_total",
			Help: "SIP requests dropped without an answer, by reason (scanner, banned, rate_limited, unroutable).",
		}, []string{"reason"}),
		hookCalls: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sipsidecar", Subsystem: "auth_hook", Name: "calls_total",
			Help: "Auth hook callbacks by result (ok, fail, unavailable).",
		}, []string{"result"}),
		hookDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: "sipsidecar", Subsystem: "auth_hook", Name: "duration_seconds",
			Help:    "Auth hook callback latency.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}),
		expired: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: "sipsidecar", Name: "bindings_expired_total",
			Help: "Bindings removed because they expired.",
		}),
		publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sipsidecar", Subsystem: "presence", Name: "publishes_total",
			Help: "users-state snapshots published, by result (ok, failed).",
		}, []string{"result"}),
		webhooks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sipsidecar", Subsystem: "presence", Name: "webhooks_total",
			Help: "Locator webhook deliveries, by result (ok, failed, dropped).",
		}, []string{"result"}),
		retransmits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: "sipsidecar", Name: "retransmissions_total",
			Help: "UDP requests answered without the registrar, by kind (absorbed: a retransmission still being handled or answered with nothing; repeated: the same answer sent again; overload: a new request dropped while every worker was busy).",
		}, []string{"kind"}),
	}
	m.Registry.MustRegister(m.registers, m.dropped, m.hookCalls, m.hookDuration, m.expired, m.publishes, m.webhooks, m.retransmits,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if liveAORs != nil {
		m.Bindings = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Namespace: "sipsidecar", Name: "registered_aors",
			Help: "Addresses of record with at least one live binding.",
		}, liveAORs)
		m.Registry.MustRegister(m.Bindings)
	}
	return m
}

// HookRequests reports the HTTP requests sent to the auth hook: fewer than callbacks when
// the hook takes batches.
func (m *Metrics) HookRequests(sent func() float64) {
	m.hookRequests = prometheus.NewCounterFunc(prometheus.CounterOpts{
		Namespace: "sipsidecar", Subsystem: "auth_hook", Name: "requests_total",
		Help: "HTTP requests sent to the auth hook (one carries a batch of callbacks when the hook takes batches).",
	}, sent)
	m.Registry.MustRegister(m.hookRequests)
}

// Register counts a handled request.
func (m *Metrics) Register(result string) { m.registers.WithLabelValues(result).Inc() }

// Retransmission counts a retransmission answered without the registrar.
func (m *Metrics) Retransmission(kind string) { m.retransmits.WithLabelValues(kind).Inc() }

// Dropped counts a request dropped unanswered.
func (m *Metrics) Dropped(reason string) { m.dropped.WithLabelValues(reason).Inc() }

// Hook counts a callback and its latency.
func (m *Metrics) Hook(result string, seconds float64) {
	m.hookCalls.WithLabelValues(result).Inc()
	m.hookDuration.Observe(seconds)
}

// Expired counts expired bindings.
func (m *Metrics) Expired(n int) { m.expired.Add(float64(n)) }

// Published counts a users-state publish.
func (m *Metrics) Published(ok bool) {
	if ok {
		m.publishes.WithLabelValues("ok").Inc()
	} else {
		m.publishes.WithLabelValues("failed").Inc()
	}
}

// Webhook counts a webhook outcome.
func (m *Metrics) Webhook(result string) { m.webhooks.WithLabelValues(result).Inc() }

// Collectors lists ours (for lint tests).
func (m *Metrics) Collectors() []prometheus.Collector {
	cs := []prometheus.Collector{m.registers, m.dropped, m.hookCalls, m.hookDuration, m.expired, m.publishes, m.webhooks, m.retransmits}
	if m.hookRequests != nil {
		cs = append(cs, m.hookRequests)
	}
	return cs
}
