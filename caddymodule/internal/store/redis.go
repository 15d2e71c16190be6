package store

// Redis key layout (prefix default "softphone:"):
//
//	<prefix>rev:s:<sid>   "1", expires when the session's last token would        RevokeSession
//	<prefix>rev:u:<sub>   unix ms of the last "log out everywhere", expiring       RevokeUser
//	<prefix>fam:<sid>     hash {cur, prev, at (unix ms)}: refresh-token family     Rotate
//	<prefix>thr:<key>     failure counter, expiring at the end of its window       AddFailure
//
//	<prefix>rev           channel: every change of a rev key publishes
//	                      "<kind> <value> <until ms> <id>" (kind s with value 1, or u with
//	                      the logout-everywhere ms) from inside the script that made it
//
// Writes that must not go backwards (a longer revocation, a later logout-everywhere, a
// rotation) are Lua scripts, atomic on the server; the publish is part of the same script,
// so no subscriber can miss a change that a later read would see.
//
// The token-check path (Revoked) answers from a mirror of the rev keys in this process
// (mirror.go) and costs no round trip. Consistency contract: a revocation made by this
// process is effective here as soon as Redis confirms it; one made by another gateway takes
// effect here once Redis delivers its publish (sub-millisecond on a LAN). The mirror answers
// only while it can vouch for being current: its subscription confirmed, the keys loaded
// after that confirmation, and a message or heartbeat pong heard within the last second.
// Whenever it cannot (starting up, reconnecting, Redis unreachable, over its size cap),
// Revoked asks Redis on every check (one MGET) and fails closed with ErrUnavailable.

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the Store shared by several gateways.
type Redis struct {
	c      redis.UniversalClient
	prefix string
	m      *mirror // nil: every check asks Redis
}

// NewRedis wraps a client and starts mirroring its revocations (stopped by Close); prefix
// defaults to "softphone:".
func NewRedis(c redis.UniversalClient, prefix string) *Redis {
	r := newRedis(c, prefix)
	r.m = newMirror(c, r.prefix)
	return r
}

func newRedis(c redis.UniversalClient, prefix string) *Redis {
	if prefix == "" {
		prefix = "softphone:"
	}
	return &Redis{c: c, prefix: prefix}
}

// MirrorLive reports whether token checks are answered from the local mirror now (true) or
// by asking Redis (false).
func (r *Redis) MirrorLive() bool { return r.m != nil && r.m.trusted(time.Now()) }

// RedisOptions parses a redis:// or rediss:// URL into client options with timeouts short
// enough that a dead Redis gives a quick 503 instead of a hung request.
func RedisOptions(url string) (*redis.Options, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parsing redis URL: %w", err)
	}
	if o.DialTimeout == 0 || o.DialTimeout > 2*time.Second {
		o.DialTimeout = time.Second
	}
	if o.ReadTimeout == 0 || o.ReadTimeout > 2*time.Second {
		o.ReadTimeout = 500 * time.Millisecond
	}
	if o.WriteTimeout == 0 || o.WriteTimeout > 2*time.Second {
		o.WriteTimeout = 500 * time.Millisecond
	}
	o.MaxRetries = 1 // one retry: a pooled connection may have died with a restarted Redis
	// go-redis retries a failed dial 5 times, 100ms apart, by default: half a second per
	// command while Redis is down. One dial attempt answers 503 at once.
	o.DialerRetries = 1
	return o, nil
}

func (r *Redis) key(kind, id string) string { return r.prefix + kind + id }

func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// channel is where the scripts publish changes of rev keys (see the key layout).
func (r *Redis) channel() string { return r.prefix + "rev" }

// keepLonger sets KEYS[1] to "1" expiring at ARGV[1] (unix ms) unless it already expires
// later, and publishes the change on ARGV[2] for session ARGV[3].
var keepLonger = redis.NewScript(`
local t = redis.call('PEXPIRETIME', KEYS[1])
if t < 0 or t < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], '1', 'PXAT', ARGV[1])
  redis.call('PUBLISH', ARGV[2], 's 1 ' .. ARGV[1] .. ' ' .. ARGV[3])
end
return 1`)

// RevokeSession implements Store.
func (r *Redis) RevokeSession(ctx context.Context, sid string, until time.Time) error {
	if !until.After(time.Now()) {
		return nil
	}
	err := keepLonger.Run(ctx, r.c, []string{r.key("rev:s:", sid)}, until.UnixMilli(), r.channel(), sid).Err()
	if err != nil {
		return unavailable(err)
	}
	// Effective on this gateway now, before our own publish comes back.
	r.mirrorSession(sid, until)
	return nil
}

func (r *Redis) mirrorSession(sid string, until time.Time) {
	if r.m != nil {
		r.m.addSession(sid, until.UnixMilli())
	}
}

// SessionRevoked implements Store.
func (r *Redis) SessionRevoked(ctx context.Context, sid string) (bool, error) {
	n, err := r.c.Exists(ctx, r.key("rev:s:", sid)).Result()
	if err != nil {
		return false, unavailable(err)
	}
	return n == 1, nil
}

// laterUser keeps the latest logout-everywhere time and the latest expiry, and publishes
// the result on ARGV[3] for user ARGV[4].
var laterUser = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local at = tonumber(ARGV[1])
if at < cur then at = cur end
local t = redis.call('PEXPIRETIME', KEYS[1])
local untl = tonumber(ARGV[2])
if t > untl then untl = t end
redis.call('SET', KEYS[1], at, 'PXAT', untl)
redis.call('PUBLISH', ARGV[3], string.format('u %d %d %s', at, untl, ARGV[4]))
return 1`)

// RevokeUser implements Store.
func (r *Redis) RevokeUser(ctx context.Context, sub string, at, until time.Time) error {
	if !until.After(time.Now()) {
		return nil
	}
	err := laterUser.Run(ctx, r.c, []string{r.key("rev:u:", sub)}, at.UnixMilli(), until.UnixMilli(), r.channel(), sub).Err()
	if err != nil {
		return unavailable(err)
	}
	if r.m != nil {
		r.m.addUser(sub, at.UnixMilli(), until.UnixMilli())
	}
	return nil
}

// Revoked implements Store: from the mirror while it is live, otherwise as RevokedNow.
func (r *Redis) Revoked(ctx context.Context, sid, sub string, iat time.Time) (bool, error) {
	if r.m != nil {
		if revoked, ok := r.m.revoked(sid, sub, iat); ok {
			return revoked, nil
		}
	}
	return r.RevokedNow(ctx, sid, sub, iat)
}

// RevokedNow implements Store: one MGET of the session mark and the user mark.
func (r *Redis) RevokedNow(ctx context.Context, sid, sub string, iat time.Time) (bool, error) {
	vals, err := r.c.MGet(ctx, r.key("rev:s:", sid), r.key("rev:u:", sub)).Result()
	if err != nil {
		return false, unavailable(err)
	}
	if vals[0] != nil {
		return true, nil
	}
	if s, ok := vals[1].(string); ok {
		at, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return false, unavailable(fmt.Errorf("bad user revocation value: %w", err))
		}
		return iat.UnixMilli() <= at, nil
	}
	return false, nil
}

// rotate is Rotate on the server. KEYS: family hash, session revocation key.
// ARGV: presented, next, now ms, grace ms, until ms, channel, session id. Returns {1, at}
// or {2, 0}; a revocation it writes is published like keepLonger's.
var rotate = redis.NewScript(`
local f = redis.call('HMGET', KEYS[1], 'cur', 'prev', 'at')
local cur, prev, at = f[1], f[2], tonumber(f[3] or '0')
local now, grace, untl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
if not cur or cur == ARGV[1] then
  redis.call('HSET', KEYS[1], 'cur', ARGV[2], 'prev', ARGV[1], 'at', now)
  redis.call('PEXPIREAT', KEYS[1], untl)
  return {1, now}
end
if prev == ARGV[1] and now - at <= grace then
  return {1, at}
end
local t = redis.call('PEXPIRETIME', KEYS[2])
if t < untl then
  redis.call('SET', KEYS[2], '1', 'PXAT', untl)
  redis.call('PUBLISH', ARGV[6], 's 1 ' .. ARGV[5] .. ' ' .. ARGV[7])
end
return {2, 0}`)

// Rotate implements Store.
func (r *Redis) Rotate(ctx context.Context, fam, presented, next string, now time.Time, grace time.Duration, until time.Time) (Rotation, error) {
	res, err := rotate.Run(ctx, r.c, []string{r.key("fam:", fam), r.key("rev:s:", fam)},
		presented, next, now.UnixMilli(), grace.Milliseconds(), until.UnixMilli(), r.channel(), fam).Int64Slice()
	if err != nil {
		return Rotation{}, unavailable(err)
	}
	if len(res) != 2 {
		return Rotation{}, unavailable(errors.New("rotate script answered badly"))
	}
	if res[0] == 2 {
		r.mirrorSession(fam, until)
		return Rotation{Outcome: Reused}, nil
	}
	return Rotation{Outcome: Rotated, At: time.UnixMilli(res[1])}, nil
}

// addFailure counts a failure, starting the window on the first.
var addFailure = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
local ttl = redis.call('PTTL', KEYS[1])
if ttl < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[1]); ttl = tonumber(ARGV[1]) end
return {n, ttl}`)

// Failures implements Store.
func (r *Redis) Failures(ctx context.Context, key string) (int, time.Duration, error) {
	k := r.key("thr:", key)
	pipe := r.c.Pipeline()
	get := pipe.Get(ctx, k)
	ttl := pipe.PTTL(ctx, k)
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return 0, 0, unavailable(err)
	}
	n, err := get.Int()
	if errors.Is(err, redis.Nil) {
		return 0, 0, nil
	}
	if err != nil {
		return 0, 0, unavailable(err)
	}
	left := ttl.Val()
	if left < 0 {
		left = 0
	}
	return n, left, nil
}

// AddFailure implements Store.
func (r *Redis) AddFailure(ctx context.Context, key string, window time.Duration) (int, time.Duration, error) {
	res, err := addFailure.Run(ctx, r.c, []string{r.key("thr:", key)}, window.Milliseconds()).Int64Slice()
	if err != nil {
		return 0, 0, unavailable(err)
	}
	return int(res[0]), time.Duration(res[1]) * time.Millisecond, nil
}

// ClearFailures implements Store.
func (r *Redis) ClearFailures(ctx context.Context, key string) error {
	return unavailable(r.c.Del(ctx, r.key("thr:", key)).Err())
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error { return unavailable(r.c.Ping(ctx).Err()) }

// Close stops the mirror (checks then ask Redis). It does not close the client: the caller
// that made it owns it (it may be pooled).
func (r *Redis) Close() error {
	if r.m != nil {
		r.m.close()
	}
	return nil
}
