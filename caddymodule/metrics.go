package caddymodule

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are process-wide so that counts survive config reloads; each new config's registry
// gets the same collectors. Labels are small closed sets: never a user, address or channel.
var metrics = struct {
	logins        *prometheus.CounterVec
	refreshes     *prometheus.CounterVec
	logouts       *prometheus.CounterVec
	tokenChecks   *prometheus.CounterVec
	sipAuth       *prometheus.CounterVec
	subscribers   prometheus.Gauge
	subscriptions *prometheus.CounterVec
	publishes     *prometheus.CounterVec
	mirrorLive    prometheus.GaugeFunc
}{
	logins: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "softphone", Subsystem: "auth", Name: "logins_total",
		Help: "Login attempts by result (ok, invalid, bad_request, throttled, error).",
	}, []string{"result"}),
	refreshes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "softphone", Subsystem: "auth", Name: "refreshes_total",
		Help: "Token refreshes by result (ok, invalid, wrong_type, reused, error).",
	}, []string{"result"}),
	logouts: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "softphone", Subsystem: "auth", Name: "logouts_total",
		Help: "Logouts by result (ok, invalid, error).",
	}, []string{"result"}),
	tokenChecks: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "softphone", Subsystem: "auth", Name: "token_checks_total",
		Help: "Access-token checks by where they ran (media, guard, subscribe, api) and verdict.",
	}, []string{"site", "result"}),
	sipAuth: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "softphone", Subsystem: "sip", Name: "auth_callbacks_total",
		Help: "SIP digest callbacks by verdict (ok, fail, forbidden, bad_request, error).",
	}, []string{"result"}),
	subscribers: prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "softphone", Subsystem: "pubsub", Name: "subscribers",
		Help: "Subscribers connected through the gateway now.",
	}),
	subscriptions: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "softphone", Subsystem: "pubsub", Name: "subscriptions_total",
		Help: "Subscribe requests by result (ok, denied, bad_channel).",
	}, []string{"result"}),
	publishes: prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: "softphone", Subsystem: "pubsub", Name: "publishes_total",
		Help: "Publish requests by result (ok, forbidden, bad_channel).",
	}, []string{"result"}),
	mirrorLive: prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: "softphone", Subsystem: "store", Name: "mirror_live",
		Help: "1 while token checks are answered from the local mirror of the Redis revocations, 0 while every check asks Redis (syncing, Redis unreachable, mirror over its cap).",
	}, redisMirrorsLive),
}

func metricCollectors() []prometheus.Collector {
	return []prometheus.Collector{metrics.logins, metrics.refreshes, metrics.logouts, metrics.tokenChecks,
		metrics.sipAuth, metrics.subscribers, metrics.subscriptions, metrics.publishes}
}

// registerMetrics adds our collectors to a config's registry (nil when Caddy has none):
// metricCollectors, or the given ones.
func registerMetrics(reg prometheus.Registerer, cs ...prometheus.Collector) error {
	if reg == nil {
		return nil
	}
	if len(cs) == 0 {
		cs = metricCollectors()
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			var already prometheus.AlreadyRegisteredError
			if !errors.As(err, &already) {
				return err
			}
		}
	}
	return nil
}

// Where a token check ran (the site label).
const (
	siteAPI = iota
	siteMedia
	siteGuard
	siteSubscribe
	numSites
)

var siteNames = [numSites]string{"api", "media", "guard", "subscribe"}

// checkCounters resolves every (site, verdict) counter once, off the request path.
var checkCounters = func() (c [numSites][verdictUnavailable + 1]prometheus.Counter) {
	for s := range numSites {
		for v := verdictOK; v <= verdictUnavailable; v++ {
			c[s][v] = metrics.tokenChecks.WithLabelValues(siteNames[s], v.String())
		}
	}
	return c
}()

func countCheck(site int, v verdict) { checkCounters[site][v].Inc() }
