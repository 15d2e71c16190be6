package registrar

import (
	"context"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

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
	// MaxSources bounds the addresses kept at once (default 131,072, about 15 MiB): a UDP
	// source address can be forged, and each new one costs a bucket. At the bound a new
	// address is refused until buckets that have filled up again (and so say nothing a
	// new bucket would not) are swept, at most once per refill time; known ones go on.
	MaxSources int

	once    sync.Once
	mu      sync.Mutex
	buckets map[string]*bucket
	bans    map[string]banMemo // what Bans said of an address, for banRecheck
	swept   time.Time
}

// banMemo is a remembered answer of Bans.Banned.
type banMemo struct {
	banned bool
	until  time.Time
}

// banRecheck is how long an answer of Bans.Banned stands. With Redis every request would
// otherwise cost a round trip before any work; a ban made by another sidecar therefore
// takes effect here within this time (this sidecar's own bans at once).
const banRecheck = time.Second

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
		if g.MaxSources <= 0 {
			g.MaxSources = 1 << 17
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
		g.bans = map[string]banMemo{}
	})
}

// admit returns "" to go on, or why the request is dropped.
func (g *Guard) admit(ctx context.Context, req *sip.Request, src Source, now time.Time) string {
	if g == nil {
		return ""
	}
	g.init()
	if ua := header(req, "user-agent"); ua != nil && isScanner(ua.Value(), g.Scanners) {
		return "scanner"
	}
	if g.banned(ctx, src.IP, now) {
		return "banned"
	}
	if !g.take(src.IP, now) {
		return "rate_limited"
	}
	return ""
}

// knows says whether admit would decide on ip without asking Bans.
func (g *Guard) knows(ip string, now time.Time) bool {
	if g == nil {
		return true
	}
	g.init()
	if _, local := g.Bans.(*location.MemoryBans); local {
		return true
	}
	_, ok := g.memo(ip, now)
	return ok
}

// memo is what Bans last said of ip, if that stands at now.
func (g *Guard) memo(ip string, now time.Time) (banned, ok bool) {
	g.mu.Lock()
	m, ok := g.bans[ip]
	g.mu.Unlock()
	if !ok || !now.Before(m.until) {
		return false, false
	}
	return m.banned, true
}

// banned asks Bans, or remembers its answer from less than banRecheck ago. A store that
// cannot answer bans nobody (the rate limit still holds), and that is not remembered.
func (g *Guard) banned(ctx context.Context, ip string, now time.Time) bool {
	if banned, ok := g.memo(ip, now); ok {
		return banned
	}
	banned, err := g.Bans.Banned(ctx, ip)
	if err != nil {
		return false
	}
	g.remember(ip, banned, now.Add(banRecheck))
	return banned
}

// remember keeps what Bans said of ip until until; at MaxSources remembered answers it
// keeps nothing more (the next request asks Bans again).
func (g *Guard) remember(ip string, banned bool, until time.Time) {
	g.mu.Lock()
	if _, ok := g.bans[ip]; ok || len(g.bans) < g.MaxSources {
		g.bans[ip] = banMemo{banned: banned, until: until}
	}
	g.mu.Unlock()
}

// refill is how long an empty bucket takes to fill up: one idle that long is as good as
// none.
func (g *Guard) refill() time.Duration {
	return time.Duration(float64(g.Burst) / g.Rate * float64(time.Second))
}

// sweepLocked forgets the buckets that have filled up again and the ban answers that have
// run out: neither says anything a fresh one would not.
func (g *Guard) sweepLocked(now time.Time) {
	g.swept = now
	full := g.refill()
	for k, b := range g.buckets {
		if now.Sub(b.last) >= full {
			delete(g.buckets, k)
		}
	}
	for k, m := range g.bans {
		if !now.Before(m.until) {
			delete(g.bans, k)
		}
	}
}

// take spends one token of ip's bucket.
func (g *Guard) take(ip string, now time.Time) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if now.Sub(g.swept) > time.Minute {
		g.sweepLocked(now)
	}
	b := g.buckets[ip]
	if b == nil {
		if len(g.buckets) >= g.MaxSources {
			// A flood of new addresses: sweep early, but no more than once per refill
			// time, so that the flood cannot make every request pay for a sweep.
			if now.Sub(g.swept) >= g.refill() {
				g.sweepLocked(now)
			}
			if len(g.buckets) >= g.MaxSources {
				return false
			}
		}
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
		g.remember(src.IP, true, now.Add(banRecheck))
		g.Logger.Warn("SIP_SOURCE_BANNED", "ip", src.IP, "failures", n, "for", g.BanFor.String())
	}
}

// isScanner reports whether the User-Agent ua contains one of the lower-case names, in any
// case. An ASCII User-Agent (every real one) is compared in place: strings.ToLower would
// allocate a copy for each request whose agent has a capital letter.
func isScanner(ua string, names []string) bool {
	for i := 0; i < len(ua); i++ {
		if ua[i] >= utf8.RuneSelf {
			lower := strings.ToLower(ua)
			return slices.ContainsFunc(names, func(n string) bool { return strings.Contains(lower, n) })
		}
	}
	for _, n := range names {
		if containsFoldASCII(ua, n) {
			return true
		}
	}
	return false
}

// containsFoldASCII reports whether s contains the lower-case sub, ASCII letters in s
// matching in either case.
func containsFoldASCII(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		j := 0
		for j < len(sub) && lowerASCII(s[i+j]) == sub[j] {
			j++
		}
		if j == len(sub) {
			return true
		}
	}
	return false
}

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}
