package location

import (
	"context"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Bans keeps per-address auth failure counts and temporary bans, so a password-guessing
// source is cut off; the Redis one is shared by every sidecar.
type Bans interface {
	// Banned reports whether ip is banned now.
	Banned(ctx context.Context, ip string) (bool, error)
	// Fail counts one auth failure of ip in a window starting at its first failure.
	Fail(ctx context.Context, ip string, window time.Duration) (int, error)
	// Ban bans ip for d.
	Ban(ctx context.Context, ip string, d time.Duration) error
}

// MemoryBans is the in-process Bans.
type MemoryBans struct {
	mu     sync.Mutex
	now    func() time.Time
	fails  map[string]failWindow
	banned map[string]time.Time
	swept  time.Time
}

type failWindow struct {
	n   int
	end time.Time
}

// NewMemoryBans returns empty bans; now may be nil.
func NewMemoryBans(now func() time.Time) *MemoryBans {
	if now == nil {
		now = time.Now
	}
	return &MemoryBans{now: now, fails: map[string]failWindow{}, banned: map[string]time.Time{}}
}

// Banned implements Bans.
func (m *MemoryBans) Banned(_ context.Context, ip string) (bool, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	until, ok := m.banned[ip]
	return ok && m.now().Before(until), nil
}

// Fail implements Bans.
func (m *MemoryBans) Fail(_ context.Context, ip string, window time.Duration) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := m.now()
	if now.Sub(m.swept) > time.Minute {
		m.swept = now
		for k, w := range m.fails {
			if !now.Before(w.end) {
				delete(m.fails, k)
			}
		}
		for k, t := range m.banned {
			if !now.Before(t) {
				delete(m.banned, k)
			}
		}
	}
	w := m.fails[ip]
	if !now.Before(w.end) {
		w = failWindow{end: now.Add(window)}
	}
	w.n++
	m.fails[ip] = w
	return w.n, nil
}

// Ban implements Bans.
func (m *MemoryBans) Ban(_ context.Context, ip string, d time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.banned[ip] = m.now().Add(d)
	return nil
}

// Bans returns the Redis-backed Bans on the same client and prefix: keys
// <prefix>ban:<ip> (set while banned) and <prefix>fail:<ip> (count, expiring with its window).
func (r *Redis) Bans() Bans { return &redisBans{r: r, cache: map[string]banCache{}} }

type redisBans struct {
	r     *Redis
	mu    sync.Mutex
	cache map[string]banCache // bounds Redis lookups to one per address per second
}

type banCache struct {
	banned bool
	until  time.Time
}

func (b *redisBans) Banned(ctx context.Context, ip string) (bool, error) {
	now := time.Now()
	b.mu.Lock()
	c, ok := b.cache[ip]
	b.mu.Unlock()
	if ok && now.Before(c.until) {
		return c.banned, nil
	}
	ms, err := b.r.c.PTTL(ctx, b.r.prefix+"ban:"+ip).Result()
	if err != nil {
		return false, unavailable(err)
	}
	c = banCache{until: now.Add(time.Second)}
	if ms > 0 {
		c = banCache{banned: true, until: now.Add(ms)}
	}
	b.mu.Lock()
	if len(b.cache) > 100_000 {
		clear(b.cache)
	}
	b.cache[ip] = c
	b.mu.Unlock()
	return c.banned, nil
}

func (b *redisBans) Fail(ctx context.Context, ip string, window time.Duration) (int, error) {
	n, err := countFailure.Run(ctx, b.r.c, []string{b.r.prefix + "fail:" + ip}, window.Milliseconds()).Int()
	return n, unavailable(err)
}

var countFailure = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
return n`)

func (b *redisBans) Ban(ctx context.Context, ip string, d time.Duration) error {
	if err := b.r.c.Set(ctx, b.r.prefix+"ban:"+ip, "1", d).Err(); err != nil {
		return unavailable(err)
	}
	b.mu.Lock()
	b.cache[ip] = banCache{banned: true, until: time.Now().Add(d)}
	b.mu.Unlock()
	return nil
}
