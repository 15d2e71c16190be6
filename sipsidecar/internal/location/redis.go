package location

// Redis key layout (prefix default "sipsidecar:"; every key starts with it):
//
//	<prefix>aor:<aor>      hash: binding key (Contact URI, or "instance:<+sip.instance>")
//	                       → binding JSON (the Binding struct's json tags); and two fields
//	                       no binding key can be (every key holds a ':'): "rev", a random
//	                       revision every write replaces, "name", the name an Update
//	                       last wrote for the AOR in <prefix>known, and "nc", the digest
//	                       nonce counts the AOR took (nonceWindow). A hash whose bindings
//	                       are all gone stays while its window does (PEXPIREAT its end).
//	<prefix>exp            sorted set: member AOR, score = the earliest ExpiresAt among its
//	                       stored bindings (unix ms). Expire reads the AORs due from here
//	                       (ZRANGEBYSCORE -inf now), never SCAN; AORs(now) is the range above
//	                       now, and those of the AORs due not yet swept that hold a live
//	                       binding. (Versions before this one also kept <prefix>live, the
//	                       latest expiry: one more ZADD per registration. It is not read.)
//	<prefix>known          hash: AOR → display name ("" when none), kept after the
//	                       bindings expire, for presence snapshots.
//	<prefix>nonce:<nonce>  string: the highest nc UseNonce took for a nonce, with a TTL
//	                       (set and compared in one Lua script, so two sidecars cannot both
//	                       accept one nc). REGISTERs keep theirs in the AOR's hash instead.
//	<prefix>fail:<ip>      string: auth failures of a source address in the current window (TTL)
//	<prefix>ban:<ip>       string "1" while the address is banned (TTL)
//
// An AOR's hash and its index entry change together: Update writes with a
// compare-and-set script that applies only if the hash is still what the write started
// from: its revision, or every field of a hash without one (written by an older sidecar).
// Expire uses WATCH <aor key> / MULTI / EXEC and writes a new revision too. Two REGISTERs
// (or two sidecars) racing on one AOR never lose a binding, the loser retries on fresh data
// (bounded). An Update starts from this sidecar's last read or write of the AOR
// (aorStates), or, for an AOR it knows nothing of, from an empty hash; when that is out of
// date the script answers with the hash as it is, so no Update reads before it writes.
// An authenticated REGISTER's nonce count is checked by the sidecar against the AOR's
// window as it read it, and written with the bindings: the same compare-and-set proves
// both current.
// Expired bindings stay in the hash, hidden from Lookup and Update's fn, until an Expire call
// removes and reports them, once.

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"
)

// Redis is the Store shared by several sidecars; bindings survive a sidecar restart.
type Redis struct {
	c      redis.UniversalClient
	p      *pipe          // the REGISTER path's commands
	states *aorStates     // the AORs this sidecar read or wrote last
	seen   *nonceCounters // the nonce counts this sidecar took
	turns  *turns         // one update of an AOR at a time
	prefix string
	// casSet's constant keys, as EVALSHA's arguments (boxed once, not per registration)
	expKey, knownKey any
	owned            bool
}

// maxTxRetries bounds optimistic-transaction retries under contention on one AOR.
const maxTxRetries = 50

// NewRedis wraps a client (not closed by Close); prefix defaults to "sipsidecar:".
func NewRedis(client redis.UniversalClient, prefix string) *Redis {
	if prefix == "" {
		prefix = "sipsidecar:"
	}
	return &Redis{c: client, p: newPipe(client), states: newAORStates(DefaultCacheAORs), seen: newNonceCounters(),
		turns: newTurns(), prefix: prefix, expKey: prefix + "exp", knownKey: prefix + "known"}
}

// OpenRedis connects to a redis://, rediss:// or unix:// URL with timeouts short enough that
// a dead Redis turns into a quick 503, never a hung REGISTER. No command is sent yet: an
// unreachable server shows on the first call (or Ping).
func OpenRedis(url, prefix string) (*Redis, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parsing redis URL: %w", err)
	}
	if o.DialTimeout <= 0 || o.DialTimeout > 2*time.Second {
		o.DialTimeout = time.Second
	}
	if o.ReadTimeout <= 0 || o.ReadTimeout > 2*time.Second {
		o.ReadTimeout = 500 * time.Millisecond
	}
	if o.WriteTimeout <= 0 || o.WriteTimeout > 2*time.Second {
		o.WriteTimeout = 500 * time.Millisecond
	}
	if o.PoolTimeout <= 0 || o.PoolTimeout > 2*time.Second {
		o.PoolTimeout = time.Second
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

// KeepAORs sets how many AORs' last state this store keeps (aorStates; 0: none, and every
// Update starts from a guess). Call it before the store is used.
func (r *Redis) KeepAORs(n int) { r.states = newAORStates(n) }

func (r *Redis) aorKey(aor string) string { return r.prefix + "aor:" + aor }

func (r *Redis) nonceKey(nonce string) string { return r.prefix + "nonce:" + nonce }

// unavailable turns any Redis or network failure into ErrUnavailable, keeping the text but
// not the Redis error values (redis.Nil never leaves the package).
func unavailable(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) {
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// The AOR hash's own fields, beside the bindings. Neither holds a ':', so neither can be a
// binding's key (a URI, or "instance:…").
const (
	revField  = "rev"  // random, replaced by every write: what Update's compare-and-set checks
	nameField = "name" // the <prefix>known name that the last Update wrote ("" for HSETNX)
)

// ownField tells the hash's own fields (rev, name, the nonce window) from binding keys.
func ownField(f string) bool { return f == revField || f == nameField || f == windowField }

// newRev is a fresh revision for an AOR hash.
func newRev() string { return strconv.FormatUint(rand.Uint64(), 36) }

// decodeAll reads an AOR hash; an entry that does not decode is dropped (and so removed at
// the next write). The hash's own fields are never read as bindings: "name" holds a display
// name, which a phone chooses.
func decodeAll(m map[string]string) []Binding {
	out := make([]Binding, 0, len(m))
	for f, v := range m {
		if ownField(f) {
			continue
		}
		if b, ok := decodeBinding(v); ok {
			out = append(out, b)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// writeSet queues the commands that make aor hold exactly bs, with its index entry, keeping
// the name and the nonce window of m, the hash as read. A hash left with no binding stays,
// with its window, until the window's end (windowEnd).
func (r *Redis) writeSet(ctx context.Context, pipe redis.Pipeliner, aor string, m map[string]string, bs []Binding, now time.Time) error {
	key := r.aorKey(aor)
	pipe.Del(ctx, key)
	until, keep := windowEnd(m[windowField], now)
	if len(bs) == 0 && !keep {
		pipe.ZRem(ctx, r.prefix+"exp", aor)
		return nil
	}
	fields := make([]any, 0, 6+2*len(bs))
	fields = append(fields, revField, newRev())
	if name, ok := m[nameField]; ok {
		fields = append(fields, nameField, name)
	}
	if keep {
		fields = append(fields, windowField, m[windowField])
	}
	for _, b := range bs {
		v, err := appendBinding(nil, b)
		if err != nil {
			return fmt.Errorf("encoding binding: %w", err)
		}
		fields = append(fields, b.Key(), v)
	}
	pipe.HSet(ctx, key, fields...)
	if len(bs) == 0 {
		pipe.ZRem(ctx, r.prefix+"exp", aor)
		pipe.PExpireAt(ctx, key, time.UnixMilli(until))
		return nil
	}
	first, _ := bounds(bs)
	pipe.ZAdd(ctx, r.prefix+"exp", redis.Z{Score: float64(first.UnixMilli()), Member: aor})
	return nil
}

// windowEnd is when a hash holding the nonce window v (its text form) may go, in unix ms,
// and whether that is after now: until then a replayed count must still find it. A window
// that does not parse is kept for a day.
func windowEnd(v string, now time.Time) (until int64, live bool) {
	if v == "" {
		return 0, false
	}
	var w nonceWindow
	if err := w.parse(v); err != nil {
		return now.Add(24 * time.Hour).UnixMilli(), true
	}
	return w.end(now)
}

// fnError carries the caller's own error out of the transaction untouched.
type fnError struct{ err error }

func (e *fnError) Error() string { return e.err.Error() }

// watch runs txf under WATCH key until EXEC goes through, retrying a bounded number of
// times with a short random pause when another writer got there first.
func (r *Redis) watch(ctx context.Context, key string, txf func(*redis.Tx) error) error {
	for attempt := range maxTxRetries {
		err := r.c.Watch(ctx, txf, key)
		if !errors.Is(err, redis.TxFailedErr) {
			return err
		}
		pause := time.Duration(rand.IntN(1000*min(attempt+1, 10))) * time.Microsecond
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(pause):
		}
	}
	return errors.New("too much contention on one AOR")
}

// Update implements Store. When fn returns two bindings with one Key, the later one wins.
func (r *Redis) Update(ctx context.Context, aor string, now time.Time, fn func([]Binding) ([]Binding, error)) ([]Binding, error) {
	return r.UpdateCounted(ctx, aor, now, Count{}, fn)
}

// UpdateCounted implements Store, in one round trip when this sidecar's kept state of the
// AOR (aorStates) is current, or when it knows nothing of the AOR and its hash is empty:
// the compare-and-set script checks the hash's revision, and writes the bindings, both
// indexes, the known name and the nonce window together. When the hash is not what the
// write started from, the script answers with the hash as it is and fn runs again on that:
// no separate read. This sidecar's updates of one AOR take turns (see turns).
func (r *Redis) UpdateCounted(ctx context.Context, aor string, now time.Time, c Count, fn func([]Binding) ([]Binding, error)) ([]Binding, error) {
	turn := make(chan struct{})
	r.turns.take(aor, func() { close(turn) })
	select {
	case <-turn:
	case <-ctx.Done():
		go func() { <-turn; r.turns.done(aor) }() // hand the turn on when it comes
		return nil, unavailable(ctx.Err())
	}
	defer r.turns.done(aor)
	return r.updateFrom(ctx, aor, now, c, fn, r.start(aor), false)
}

// UpdateCountedThen implements Deferred: its compare-and-set goes into the pipeline without
// a goroutine waiting for it, and then runs on the goroutine that read the answer, inside
// the hand-out SetHandOut wraps around a pipeline's answers. A conflict (the kept state
// was out of date), or Redis not knowing the script yet, continues as UpdateCounted does, on
// a goroutine of its own. It takes its turn on the AOR as UpdateCounted does, without
// waiting: a later turn starts on the goroutine that ends the one before.
func (r *Redis) UpdateCountedThen(ctx context.Context, aor string, now time.Time, c Count, fn func([]Binding) ([]Binding, error), then func([]Binding, error)) {
	r.turns.take(aor, func() {
		r.updateCountedThen(ctx, aor, now, c, fn, func(bs []Binding, err error) {
			then(bs, err)
			r.turns.done(aor)
		})
	})
}

func (r *Redis) updateCountedThen(ctx context.Context, aor string, now time.Time, c Count, fn func([]Binding) ([]Binding, error), then func([]Binding, error)) {
	if err := ctx.Err(); err != nil { // its turn came after its deadline
		then(nil, unavailable(err))
		return
	}
	rd := r.start(aor)
	next, args, written, err := r.attempt(aor, rd, now, c, fn)
	if err != nil {
		then(nil, err)
		return
	}
	cmd := r.casCmd(ctx, aor, args)
	queued := r.p.doThen(cmd, func() {
		res, err := cmd.Result()
		if err != nil {
			if redis.HasErrorPrefix(err, "NOSCRIPT") {
				go func() { then(r.updateFrom(ctx, aor, now, c, fn, rd, false)) }()
				return
			}
			then(nil, unavailable(err))
			return
		}
		final, again, err := r.outcome(aor, c, written, res)
		switch {
		case final && err != nil:
			then(nil, err)
		case final:
			then(next, nil)
		default:
			go func() { then(r.updateFrom(ctx, aor, now, c, fn, again, true)) }()
		}
	})
	if !queued {
		then(nil, unavailable(errPipeFull))
	}
}

// SetHandOut has every pipeline's answers handed out inside f, which must call deliver:
// the sidecar holds its UDP answers over it, so that the REGISTERs that UpdateCountedThen
// finishes there leave together. Call it before the store is used.
func (r *Redis) SetHandOut(f func(deliver func())) { r.p.handOut = f }

// casHead is how many leading slots casArgs leaves in its ARGV for casCmd to fill.
const casHead = 6

// casHash is casSet's hash, as EVALSHA's argument.
var casHash any = casSet.Hash()

// casCmd is EVALSHA of casSet for aor with args from casArgs, which left casHead slots in
// front for the command, the hash and the keys: no second slice, no key built twice.
func (r *Redis) casCmd(ctx context.Context, aor string, args []any) *redis.Cmd {
	args[0], args[1], args[2] = "evalsha", casHash, 3
	args[3], args[4], args[5] = r.aorKey(aor), r.expKey, r.knownKey
	return redis.NewCmd(ctx, args...)
}

// casKeys are casSet's keys for aor.
func (r *Redis) casKeys(aor string) []string {
	return []string{r.aorKey(aor), r.prefix + "exp", r.prefix + "known"}
}

// start is what an update of aor starts from: the kept state, or the guess of an empty hash.
func (r *Redis) start(aor string) *hashRead {
	if rd, kept := r.states.get(aor); kept {
		return rd
	}
	return emptyRead
}

// updateFrom runs compare-and-set attempts from rd until one is final; fresh says rd is
// what Redis answered an attempt with (so a conflict now is another writer's: pause).
func (r *Redis) updateFrom(ctx context.Context, aor string, now time.Time, c Count, fn func([]Binding) ([]Binding, error), rd *hashRead, fresh bool) ([]Binding, error) {
	for range maxTxRetries {
		next, args, written, err := r.attempt(aor, rd, now, c, fn)
		if err != nil {
			return nil, err
		}
		cmd := r.casCmd(ctx, aor, args)
		if err := r.p.do(ctx, cmd); err != nil && redis.HasErrorPrefix(err, "NOSCRIPT") {
			// Redis forgot the script (a restart, SCRIPT FLUSH): EVAL, and it learns it again.
			cmd = casSet.Run(ctx, r.c, r.casKeys(aor), args[casHead:]...)
		}
		res, err := cmd.Result()
		if err != nil {
			return nil, unavailable(err)
		}
		final, again, err := r.outcome(aor, c, written, res)
		if final {
			if err != nil {
				return nil, err
			}
			return next, nil
		}
		if fresh {
			// Another writer changed the AOR between Redis's last answer and our write.
			pause := time.Duration(rand.IntN(10000)) * time.Microsecond
			select {
			case <-ctx.Done():
				return nil, unavailable(ctx.Err())
			case <-time.After(pause):
			}
		}
		rd, fresh = again, true
	}
	return nil, unavailable(errors.New("too much contention on one AOR"))
}

// attempt runs fn on the live bindings of rd, takes c's count in rd's nonce window, and
// builds the compare-and-set's arguments: next is fn's result, written the hash as the
// script will leave it. A count the window refuses (ErrReplay, ErrStaleNonce) is final
// when rd is current, and the compare-and-set is what proves it is: a refusal from a kept
// state stands too, since an AOR's window only ever moves forward.
func (r *Redis) attempt(aor string, rd *hashRead, now time.Time, c Count, fn func([]Binding) ([]Binding, error)) (next []Binding, args []any, written *hashRead, err error) {
	live := make([]Binding, 0, len(rd.all))
	for _, b := range rd.all {
		if b.Live(now) {
			live = append(live, b)
		}
	}
	if next, err = fn(live); err != nil {
		return nil, nil, nil, err
	}
	var window string // the window to write, when it changed
	win := rd.win
	var until int64
	var keep bool
	if c.Nonce != "" {
		w := new(nonceWindow)
		switch {
		case win != nil:
			w.copyOf(win)
		case w.parse(rd.window) != nil:
			// Not a window this store wrote: refuse every nonce made up to now, for as
			// long as any of them may be fresh.
			*w = nonceWindow{until: now.Add(c.TTL).UnixMilli(), floor: stamp{now.Unix(), math.MaxUint64}}
		}
		if err := w.take(c, now); err != nil {
			return nil, nil, nil, err
		}
		window, win = w.String(), w
		until, keep = w.end(now)
	}
	next = normalize(aor, next)
	stored := append([]Binding(nil), next...)
	for _, b := range rd.all {
		if !b.Live(now) && !hasKey(next, b.Key()) {
			stored = append(stored, b) // left for Expire to report
		}
	}
	if c.Nonce == "" && len(stored) == 0 {
		if win != nil {
			until, keep = win.end(now)
		} else {
			until, keep = windowEnd(rd.window, now)
		}
	}
	args, written, err = casArgs(aor, rd, stored, next, window, until, keep)
	if written != nil && written != emptyRead {
		// The kept state holds the window parsed, or else as read: not both.
		if written.win = win; win == nil {
			written.window = rd.window
		}
	}
	return next, args, written, err
}

// outcome reads the compare-and-set's answer. final: the update is done, written (err nil)
// or refused (an answer not understood); else again is the hash as Redis
// holds it, to start over from.
func (r *Redis) outcome(aor string, c Count, written *hashRead, res any) (final bool, again *hashRead, err error) {
	switch v := res.(type) {
	case int64:
		switch v {
		case 1:
			r.states.put(aor, written)
			if c.Nonce != "" {
				r.seen.use(c.Nonce, c.Serial, c.NC, c.TTL, time.Now())
			}
			return true, nil, nil
		}
	case []any:
		if m, ok := pairs(v); ok {
			again = readOf(m)
			r.states.put(aor, again)
			return false, again, nil
		}
	}
	return true, nil, unavailable(fmt.Errorf("unexpected answer %T from the compare-and-set script", res))
}

// pairs makes a map of HGETALL's flat field, value list as a script returns it.
func pairs(v []any) (map[string]string, bool) {
	if len(v)%2 != 0 {
		return nil, false
	}
	m := make(map[string]string, len(v)/2)
	for i := 0; i < len(v); i += 2 {
		f, ok1 := v[i].(string)
		val, ok2 := v[i+1].(string)
		if !ok1 || !ok2 {
			return nil, false
		}
		m[f] = val
	}
	return m, true
}

// casSet is the optimistic transaction of WATCH/MULTI/EXEC in one round trip, on any pooled
// connection. It checks that the hash is still what the writer started from: its revision,
// or, for a hash without one (empty, or written by an older sidecar), its length and every
// field; if not, it answers with the hash as it is now (HGETALL's list), for the writer to
// start again from. Otherwise it writes the AOR's hash (its nonce window among the fields),
// its index entry and its known name, and answers 1.
// KEYS: aor hash, exp, known. ARGV: aor; the revision read, or "" then n and n read
// field/value pairs; then either "del" (the hash goes, with its index entry), or "set", d
// and d fields to delete, m and m field/value pairs to set (the revision's among them),
// then "zadd" with the earliest expiry ms, or "zrem" (no binding left), then the hash's own
// expiry: "", "persist", or the unix ms it goes at; last, the known mode ("", "set" with a
// name, "setnx").
var casSet = redis.NewScript(`
local i = 3
if ARGV[2] ~= '' then
  if redis.call('HGET', KEYS[1], 'rev') ~= ARGV[2] then return redis.call('HGETALL', KEYS[1]) end
else
  local n = tonumber(ARGV[3])
  if redis.call('HLEN', KEYS[1]) ~= n then return redis.call('HGETALL', KEYS[1]) end
  i = 4
  for _ = 1, n do
    if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then return redis.call('HGETALL', KEYS[1]) end
    i = i + 2
  end
end
if ARGV[i] == 'del' then
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  i = i + 1
else
  local d = tonumber(ARGV[i + 1])
  i = i + 2
  if d > 0 then
    redis.call('HDEL', KEYS[1], unpack(ARGV, i, i + d - 1))
    i = i + d
  end
  local m = tonumber(ARGV[i])
  redis.call('HSET', KEYS[1], unpack(ARGV, i + 1, i + 2 * m))
  i = i + 1 + 2 * m
  if ARGV[i] == 'zadd' then
    redis.call('ZADD', KEYS[2], ARGV[i + 1], ARGV[1])
    i = i + 2
  else
    redis.call('ZREM', KEYS[2], ARGV[1])
    i = i + 1
  end
  if ARGV[i] == 'persist' then
    redis.call('PERSIST', KEYS[1])
  elseif ARGV[i] ~= '' then
    redis.call('PEXPIREAT', KEYS[1], ARGV[i])
  end
  i = i + 1
end
if ARGV[i] == 'set' then
  redis.call('HSET', KEYS[3], ARGV[1], ARGV[i + 1])
elseif ARGV[i] == 'setnx' then
  redis.call('HSETNX', KEYS[3], ARGV[1], '')
end
return 1`)

// casArgs builds casSet's ARGV, after casHead empty slots (see casCmd), from what was read (rd), what to store (stored, with its
// index entry), the known name of the live bindings (next) and the nonce window to write
// (its text form; "" leaves the hash's as it is; until, the window's end, and keep, whether
// that is still to come, matter when no binding is left); written is the hash as it will be once
// the script has run. The known name is written only when the hash's name field says it
// differs: a phone refreshing its registration under the same name leaves <prefix>known
// alone. A hash left with no binding stays while its window does, and goes with it.
func casArgs(aor string, rd *hashRead, stored, next []Binding, window string, until int64, keep bool) (args []any, written *hashRead, err error) {
	args = make([]any, casHead, casHead+16+2*len(rd.legacy)+len(rd.fields)+2*len(stored))
	args = append(args, aor)
	if rd.legacy == nil {
		args = append(args, rd.rev)
		if rd.rev == "" {
			args = append(args, 0) // an empty hash
		}
	} else {
		args = append(args, "", len(rd.legacy))
		for f, v := range rd.legacy {
			args = append(args, f, v)
		}
	}
	mode, name := "", ""
	if len(next) > 0 {
		switch name = displayName(next, ""); {
		case name != "" && !(rd.hasName && rd.name == name):
			mode = "set"
		case name == "" && !rd.hasName:
			mode = "setnx"
		}
	}
	written = &hashRead{all: stored, name: rd.name, hasName: rd.hasName}
	if len(stored) == 0 && !keep {
		args = append(args, "del")
		written = emptyRead
	} else {
		written.rev = newRev()
		args = append(args, "set", 0)
		d := len(args) - 1
		for _, f := range rd.fields {
			if !hasKey(stored, f) {
				args = append(args, f)
			}
		}
		args[d] = len(args) - d - 1
		pairs := 1 + len(stored)
		if mode != "" {
			pairs++
			written.name, written.hasName = name, true
		}
		if window != "" {
			pairs++
		}
		args = append(args, pairs, revField, written.rev)
		if mode != "" {
			args = append(args, nameField, name)
		}
		if window != "" {
			args = append(args, windowField, window)
		}
		written.fields = make([]string, 0, len(stored))
		for _, b := range stored {
			v, err := appendBinding(nil, b)
			if err != nil {
				return nil, nil, fmt.Errorf("encoding binding: %w", err)
			}
			args = append(args, b.Key(), v)
			written.fields = append(written.fields, b.Key())
		}
		switch {
		case len(stored) > 0:
			first, _ := bounds(stored)
			args = append(args, "zadd", first.UnixMilli())
		default:
			args = append(args, "zrem")
		}
		switch {
		case len(stored) == 0:
			args = append(args, until)
		case len(rd.all) == 0 && rd.rev != "":
			args = append(args, "persist") // the hash held only a window, which expires
		default:
			args = append(args, "")
		}
	}
	args = append(args, mode)
	if mode == "set" {
		args = append(args, name)
	}
	return args, written, nil
}

// Lookup implements Store.
func (r *Redis) Lookup(ctx context.Context, aor string, now time.Time) ([]Binding, error) {
	m, err := r.p.hgetall(ctx, r.aorKey(aor))
	if err != nil {
		return nil, unavailable(err)
	}
	rd := readOf(m)
	r.states.put(aor, rd)
	return liveOf(rd.all, now), nil
}

// Recall implements Store, from aorStates.
func (r *Redis) Recall(aor string, now time.Time) ([]Binding, bool) {
	rd, ok := r.states.get(aor)
	if !ok {
		return nil, false
	}
	return liveOf(rd.all, now), true
}

// Replayed implements Store, from the counts this sidecar took itself.
func (r *Redis) Replayed(c Count) bool { return r.seen.seen(c.Nonce, c.Serial, c.NC, time.Now()) }

// liveOf is a copy of the bindings of all live at now.
func liveOf(all []Binding, now time.Time) []Binding {
	var out []Binding
	for _, b := range all {
		if b.Live(now) {
			out = append(out, b)
		}
	}
	return out
}

// Expire implements Store. Each expired binding is reported by exactly one caller, even
// with several sidecars sweeping at once. On a Redis failure midway it returns what it
// already removed along with the error.
func (r *Redis) Expire(ctx context.Context, now time.Time, limit int) ([]Binding, error) {
	if limit <= 0 {
		limit = math.MaxInt
	}
	due := &redis.ZRangeBy{Min: "-inf", Max: strconv.FormatInt(now.UnixMilli(), 10)}
	if limit < math.MaxInt {
		due.Count = int64(limit) // an AOR holds at least one due binding: no more AORs needed
	}
	aors, err := r.c.ZRangeByScore(ctx, r.prefix+"exp", due).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	var out []Binding
	for _, aor := range aors {
		if len(out) >= limit {
			break
		}
		key := r.aorKey(aor)
		room := limit - len(out)
		var gone []Binding
		err := r.watch(ctx, key, func(tx *redis.Tx) error {
			gone = gone[:0]
			m, err := tx.HGetAll(ctx, key).Result()
			if err != nil {
				return err
			}
			var keep []Binding
			for _, b := range decodeAll(m) {
				if !b.Live(now) && len(gone) < room {
					gone = append(gone, b)
				} else {
					keep = append(keep, b)
				}
			}
			_, err = tx.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
				return r.writeSet(ctx, pipe, aor, m, keep, now)
			})
			return err
		})
		r.states.drop(aor) // its revision changed
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

// AORs implements Store: the AORs whose earliest binding is live, and of those whose
// earliest binding has expired but not yet been swept (a second's worth while the sweep
// keeps up), the ones with another binding live, read from their hashes in one pipeline.
func (r *Redis) AORs(ctx context.Context, now time.Time) ([]string, error) {
	all, err := r.c.ZRangeWithScores(ctx, r.prefix+"exp", 0, -1).Result()
	if err != nil {
		return nil, unavailable(err)
	}
	ms := float64(now.UnixMilli())
	var aors, due []string
	for _, z := range all {
		aor, _ := z.Member.(string)
		if z.Score > ms {
			aors = append(aors, aor)
		} else {
			due = append(due, aor)
		}
	}
	if len(due) > 0 {
		reads := make([]*redis.MapStringStringCmd, len(due))
		if _, err := r.c.Pipelined(ctx, func(p redis.Pipeliner) error {
			for i, aor := range due {
				reads[i] = p.HGetAll(ctx, r.aorKey(aor))
			}
			return nil
		}); err != nil {
			return nil, unavailable(err)
		}
		for i, aor := range due {
			if len(liveOf(decodeAll(reads[i].Val()), now)) > 0 {
				aors = append(aors, aor)
			}
		}
	}
	sort.Strings(aors)
	return aors, nil
}

// useNonce raises a nonce's nc only upwards: compare and set in one step, with the TTL.
// Lua numbers are doubles; nc is at most 0xffffffff (8 hex digits), well inside.
var useNonce = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '-1')
if tonumber(ARGV[1]) <= cur then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1`)

// UseNonce implements Store. A ttl below a millisecond counts as one millisecond.
//
// nc 1 is how a phone answers a fresh challenge, by far the most common case: it is a plain
// SET NX with the TTL, accepted if the nonce was never counted. Any other nc, and an nc 1
// the nonce already has a count for (a replay, or a count of 0 before it), goes through the
// compare script. Two sidecars racing on one nc 1: one SET wins, the other's script sees it.
func (r *Redis) UseNonce(ctx context.Context, c Count) error {
	nonce, nc, ttl := c.Nonce, c.NC, c.TTL
	ms := max(ttl.Milliseconds(), 1)
	key := r.nonceKey(nonce)
	if nc == 1 {
		first := redis.NewStatusCmd(ctx, "set", key, nc, "px", ms, "nx")
		switch err := r.p.do(ctx, first); {
		case err == nil:
			r.seen.use(nonce, c.Serial, nc, ttl, time.Now())
			return nil
		case !errors.Is(err, redis.Nil):
			return unavailable(err)
		}
	}
	ok, err := r.p.script(ctx, useNonce, []string{key}, nc, ms).Int()
	if err != nil {
		return unavailable(err)
	}
	if ok == 0 {
		return ErrReplay
	}
	r.seen.use(nonce, c.Serial, nc, ttl, time.Now())
	return nil
}

// Ping implements Store.
func (r *Redis) Ping(ctx context.Context) error { return unavailable(r.c.Ping(ctx).Err()) }

// Close closes the client when OpenRedis made it; a client given to NewRedis stays open.
func (r *Redis) Close() error {
	if r.owned {
		return r.c.Close()
	}
	return nil
}
