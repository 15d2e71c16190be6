package registrar

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

// Guard stands before the registrar's work: known scanners are dropped silently, each
// source address gets a request budget before any hook call, and an address with repeated
// auth failures is banned for a while (shared through Redis when the Bans are).
type Guard struct {
	Rate        float64       // requests per second per address (default 20)
	Burst       int           // bucket size (default 40)
	MaxFailures int           // auth failures within FailWindow that earn a ban (default 10)
	FailWindow  time.Duration // default 5m
	BanFor      time.Duration // default 15m
	Scanners    []string      // User-Agent substrings dropped silently (lower case)
	Bans        location.Bans // nil: memory
	Logger      *slog.Logger

	once    sync.Once
	mu      sync.Mutex
	buckets map[string]*bucket
	swept   time.Time
}

type bucket struct {
	tokens float64
	last   time.Time
}

// DefaultScanners are the User-Agents of SIP scanning tools.
var DefaultScanners = []string{"friendly-scanner", "sipvicious", "sipcli", "sip-scan", "sipsak", "iWar", "VaxSIPUserAgent"}

func (g *Guard) init() {
	g.once.Do(func() {
		if g.Rate <= 0 {
			g.Rate = 20
		}
		if g.Burst <= 0 {
			g.Burst = 40
		}
		if g.MaxFailures <= 0 {
			g.MaxFailures = 10
		}
		if g.FailWindow <= 0 {
			g.FailWindow = 5 * time.Minute
		}
		if g.BanFor <= 0 {
			g.BanFor = 15 * time.Minute
		}
		if g.Scanners == nil {
			g.Scanners = DefaultScanners
		}
		for i, s := range g.Scanners {
			g.Scanners[i] = strings.ToLower(s)
		}
		if g.Bans == nil {
			g.Bans = location.NewMemoryBans(nil)
		}
		if g.Logger == nil {
			g.Logger = slog.Default()
		}
		g.buckets = map[string]*bucket{}
	})
}

// admit returns "" to go on, or why the request is dropped.
func (g *Guard) admit(ctx context.Context, req *sip.Request, src Source, now time.Time) string {
	if g == nil {
		return ""
	}
	g.init()
	if ua := header(req, "user-agent"); ua != nil {
		v := strings.ToLower(ua.Value())
		for _, s := range g.Scanners {
			if strings.Contains(v, s) {
				return "scanner"
			}
		}
	}
	if banned, err := g.Bans.Banned(ctx, src.IP); err == nil && banned {
		return "banned"
	}
	if !g.take(src.IP, now) {
		return "rate_limited"
	}
	return ""
}

// take spends one token of ip's bucket.
func (g *Guard) take(ip string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.swept) > time.Minute {
		g.swept = now
		for k, b := range g.buckets {
			if now.Sub(b.last) > time.Minute {
				delete(g.buckets, k)
			}
		}
	}
	b := g.buckets[ip]
	if b == nil {
		b = &bucket{tokens: float64(g.Burst), last: now}
		g.buckets[ip] = b
	}
	b.tokens = min(float64(g.Burst), b.tokens+now.Sub(b.last).Seconds()*g.Rate)
	b.last = now
	if b.tokens < 1 {
		return false
	}
	b.tokens--
	return true
}

// failed counts an auth failure and bans the address when it has too many.
func (g *Guard) failed(ctx context.Context, src Source, now time.Time) {
	if g == nil {
		return
	}
	g.init()
	n, err := g.Bans.Fail(ctx, src.IP, g.FailWindow)
	if err != nil || n < g.MaxFailures {
		return
	}
	if err := g.Bans.Ban(ctx, src.IP, g.BanFor); err == nil {
		g.Logger.Warn("SIP_SOURCE_BANNED", "ip", src.IP, "failures", n, "for", g.BanFor.String())
	}
}
