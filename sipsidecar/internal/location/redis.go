package location

// Redis key layout (prefix default "sipsidecar:"):
//
//	<prefix>aor:<aor>      hash: binding key (Contact URI or "instance:<+sip.instance>") → binding JSON
//	<prefix>exp            sorted set: AOR scored by its earliest binding expiry (unix ms);
//	                       Expire reads the AORs due from here, without SCAN
//	<prefix>live           sorted set: AOR scored by its latest binding expiry (unix ms);
//	                       AORs(now) is the range above now
//	<prefix>known          hash: AOR → display name, kept after the bindings expire
//	<prefix>nonce:<nonce>  the highest nc seen for a digest nonce, expiring with the nonce
//
// An AOR's bindings change only inside WATCH/MULTI on its hash, so two REGISTERs (or two
// sidecars) racing on one AOR never lose a binding; the loser retries on fresh data.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the Store shared by several sidecars; bindings survive a sidecar restart.
type Redis struct {
	c      redis.UniversalClient
	prefix string
	owned  bool
}

// maxTxRetries bounds optimistic-transaction retries under contention on one AOR.
const maxTxRetries = 50

// NewRedis wraps a client (not closed by Close); prefix defaults to "sipsidecar:".
func NewRedis(c redis.UniversalClient, prefix string) *Redis {
	if prefix == "" {
		prefix = "sipsidecar:"
	}
	return &Redis{c: c, prefix: prefix}
}

// OpenRedis connects to a redis:// or rediss:// URL with timeouts short enough that a dead
// Redis turns into a quick 503, never a hung REGISTER.
func OpenRedis(url, prefix string) (*Redis, error) {
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
	if o.PoolSize < 32 {
		o.PoolSize = 32
	}
	r := NewRedis(redis.NewClient(o), prefix)
	r.owned = true
	return r, nil
}

func (r *Redis) aorKey(aor string) string { return r.prefix + "aor:" + aor }

func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

func decodeAll(m map[string]string) []Binding {
	out := make([]Binding, 0, len(m))
	for _, v := range m {
		var b Binding
		if json.Unmarshal([]byte(v), &b) == nil {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// bounds returns the earliest and latest expiry of bs.
func bounds(bs []Binding) (first, last time.Time) {
	for i, b := range bs {
		if i == 0 || b.ExpiresAt.Before(first) {
			first = b.ExpiresAt
		}
		if i == 0 || b.ExpiresAt.After(last) {
			last = b.ExpiresAt
		}
	}
	return first, last
}

// writeSet queues the commands that make key hold exactly bs.
func (r *Redis) writeSet(ctx context.Context, pipe redis.Pipeliner, aor string, bs []Binding) error {
	key := r.aorKey(aor)
	pipe.Del(ctx, key)
	if len(bs) == 0 {
		pipe.ZRem(ctx, r.prefix+"exp", aor)
		pipe.ZRem(ctx, r.prefix+"live", aor)
		return nil
	}
	fields := make([]any, 0, 2*len(bs))
	for _, b := range bs {
		v, err := json.Marshal(b)
		if err != nil {
			return err
		}
		fields = append(fields, b.Key(), v)
	}
	pipe.HSet(ctx, key, fields...)
	first, last := bounds(bs)
	pipe.ZAdd(ctx, r.prefix+"exp", redis.Z{Score: float64(first.UnixMilli()), Member: aor})
	pipe.ZAdd(ctx, r.prefix+"live", redis.Z{Score: float64(last.UnixMilli()), Member: aor})
	return nil
}

// Update implements Store.
func (r *Redis) Update(ctx context.Context, aor string, now time.Time, fn func([]Binding) ([]Binding, error)) ([]Binding, error) {
	key := r.aorKey(aor)
	var result []Binding
	txf := func(tx *redis.Tx) error {
		m, err := tx.HGetAll(ctx, key).Result()
		if err != nil {
			return err
		}
		all := decodeAll(m)
		live := make([]Binding, 0, len(all))
		for _, b := range all {
			if b.Live(now) {
				live = append(live, b)
			}
		}
		next, err := fn(live)
		if err != nil {
			return &fnError{err}
		}
		keys := make(map[string]bool, len(next))
		stored := make([]Binding, 0, len(next))
		for i := range next {
			next[i].AOR = aor
			keys[next[i].Key()] = true
			stored = append(stored, next[i])
		}
		for _, b := range all {
			if !b.Live(now) && !keys[b.Key()] {
				stored = append(stored, b) // left for Expire to report
			}
		}
		_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
			if err := r.writeSet(ctx, pipe, aor, stored); err != nil {
				return err
			}
			for _, b := range next {
				if b.DisplayName != "" {
					pipe.HSet(ctx, r.prefix+"known", aor, b.DisplayName)
				} else {
					pipe.HSetNX(ctx, r.prefix+"known", aor, "")
				}
			}
			return nil
		})
		result = next
		return err
	}
	for range maxTxRetries {
		err := r.c.Watch(ctx, txf, key)
		var fe *fnError
		switch {
		case err == nil:
			return result, nil
		case errors.As(err, &fe):
			return nil, fe.err
		case errors.Is(err, redis.TxFailedErr):
			continue
		default:
			return nil, unavailable(err)
		}
	}
	return nil, unavailable(errors.New("too much contention on one AOR"))
}

// fnError carries the caller's own error out of the transaction untouched.
type fnError struct{ err error }

func (e *fnError) Error() string { return e.err.Error() }

// Lookup implements Store.
func (r *Redis) Lookup(ctx context.Context, aor string, now time.Time) ([]Binding, error) {
	m, err := r.c.HGetAll(ctx, r.aorKey(aor)).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	var out []Binding
	for _, b := range decodeAll(m) {
		if b.Live(now) {
			out = append(out, b)
		}
	}
	return out, nil
}

// Expire implements Store. Each expired binding is reported by exactly one caller, even
// with several sidecars sweeping at once.
func (r *Redis) Expire(ctx context.Context, now time.Time, limit int) ([]Binding, error) {
	if limit <= 0 {
		limit = 1000
	}
	aors, err := r.c.ZRangeByScore(ctx, r.prefix+"exp", &redis.ZRangeBy{
		Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10), Count: int64(limit),
	}).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	var out []Binding
	for _, aor := range aors {
		key := r.aorKey(aor)
		var gone []Binding
		txf := func(tx *redis.Tx) error {
			gone = gone[:0]
			m, err := tx.HGetAll(ctx, key).Result()
			if err != nil {
				return err
			}
			var keep []Binding
			for _, b := range decodeAll(m) {
				if b.Live(now) {
					keep = append(keep, b)
				} else {
					gone = append(gone, b)
				}
			}
			_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
				return r.writeSet(ctx, pipe, aor, keep)
			})
			return err
		}
		var err error
		for range maxTxRetries {
			if err = r.c.Watch(ctx, txf, key); !errors.Is(err, redis.TxFailedErr) {
				break
			}
		}
		if err != nil {
			return out, unavailable(err)
		}
		out = append(out, gone...)
	}
	return out, nil
}

// Known implements Store.
func (r *Redis) Known(ctx context.Context) (map[string]string, error) {
	m, err := r.c.HGetAll(ctx, r.prefix+"known").Result()
	if err != nil {
		return nil, unavailable(err)
	}
	return m, nil
}

// AORs implements Store.
func (r *Redis) AORs(ctx context.Context, now time.Time) ([]string, error) {
	aors, err := r.c.ZRangeByScore(ctx, r.prefix+"live", &redis.ZRangeBy{
		Min: "(" + strconv.FormatInt(now.UnixMilli(), 10), Max: "+inf",
	}).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	sort.Strings(aors)
	return aors, nil
}

// useNonce raises a nonce's nc only upwards.
var useNonce = redisScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`)

// UseNonce implements Store.
func (r *Redis) UseNonce(ctx context.Context, nonce string, nc uint64, ttl time.Duration) error {
	ok, err := useNonce.Run(ctx, r.c, []string{r.prefix + "nonce:" + nonce}, nc, ttl.Milliseconds()).Int()
	if err != nil {
		return unavailable(err)
	}
	if ok == 0 {
		return ErrReplay
	}
	return nil
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error { return unavailable(r.c.Ping(ctx).Err()) }

// Close closes the client when OpenRedis made it.
func (r *Redis) Close() error {
	if r.owned {
		return r.c.Close()
	}
	return nil
}

func redisScript(src string) *redis.Script { return redis.NewScript(src) }
