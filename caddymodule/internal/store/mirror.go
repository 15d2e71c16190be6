package store

import (
	"context"
	"errors"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"
)

// A mirror is this process's copy of every rev:s and rev:u key, kept current by the
// invalidations the write scripts publish, so that a token check costs no round trip.
//
// It vouches for its contents only while it is live: subscribed, fully loaded after that
// subscription was confirmed, under its size cap, and with something (a message or a pong)
// heard on the subscription within staleAfter. Anything else sends Revoked back to MGET.
//
// Revocations only grow (a later until, a later at) until they expire, so every source (the
// load, the messages, this process's own writes) is merged by keeping the larger value, in
// any order. A message can therefore add a revocation but never remove one.
type mirror struct {
	c       redis.UniversalClient
	channel string // <prefix>rev
	prefix  string // <prefix>rev: (keys)
	match   string // SCAN pattern for the keys

	epoch     time.Time    // monotonic origin of lastHeard
	lastHeard atomic.Int64 // ns since epoch of the last thing read on the subscription
	live      atomic.Bool  // set only by goLive, cleared by invalidate

	mu         sync.Mutex // guards gen, subscribed
	gen        uint64     // bumped whenever the mirror stops being able to vouch
	subscribed bool       // the current subscription is confirmed

	size   atomic.Int64
	cap    atomic.Int64 // maxEntries (tests lower it)
	shards [numShards]shard
	next   int // next shard to sweep (maintain goroutine only)

	syncReq chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup
	once    sync.Once
}

type shard struct {
	mu       sync.RWMutex
	sessions map[string]int64   // sid → revoked until (unix ms)
	users    map[string]userRev // sub → logged out everywhere
}

type userRev struct{ at, until int64 } // unix ms

const (
	// maxEntries caps the mirror at about 100 MB (an entry is a map slot, a short id and two
	// int64s). Revocations live only as long as the tokens they kill, so a real deployment
	// holds far fewer; past the cap the mirror stops vouching and checks go to Redis, rather
	// than let a flood of logouts (or forged messages) grow the process without bound.
	maxEntries = 1_000_000
	numShards  = 64 // bounds the sweep's lock hold to 1/64 of the mirror

	// pingEvery paces the heartbeat on the subscription connection; staleAfter is how long
	// the mirror vouches without hearing anything. A revocation committed in Redis while
	// this gateway's link to it is broken is thus trusted away for at most staleAfter.
	pingEvery  = 250 * time.Millisecond
	staleAfter = time.Second
	// reconnectAfter of silence replaces the subscription connection: a half-open TCP
	// connection (a partition, a dead host) would otherwise keep it not-live for minutes.
	reconnectAfter = 3 * time.Second
	pingTimeout    = 500 * time.Millisecond

	mirrorSweepEvery = time.Second // one shard per tick: an expired entry goes within ~64s
	// resyncEvery reloads the keys even while live, bounding how long a revocation written
	// without a publish (a gateway of an older version during a rolling upgrade, an
	// operator's SET) stays unseen. Its cost is one SCAN over the revocations.
	resyncEvery = 5 * time.Minute
	scanCount   = 1000

	firstRetry = 100 * time.Millisecond
	maxRetry   = 30 * time.Second
)

// errResync ends a load that a newer subscription (or a loss) made pointless.
var errResync = errors.New("mirror changed while loading")

func newMirror(c redis.UniversalClient, prefix string) *mirror {
	m := &mirror{
		c:       c,
		channel: prefix + "rev",
		prefix:  prefix + "rev:",
		match:   globEscape(prefix+"rev:") + "*",
		epoch:   time.Now(),
		syncReq: make(chan struct{}, 1),
	}
	m.cap.Store(maxEntries)
	for i := range m.shards {
		m.shards[i].sessions = map[string]int64{}
		m.shards[i].users = map[string]userRev{}
	}
	m.ctx, m.cancel = context.WithCancel(context.Background())
	m.wg.Add(2)
	go m.run()
	go m.maintain()
	return m
}

// close stops every goroutine of the mirror and waits for them.
func (m *mirror) close() {
	m.once.Do(func() {
		m.cancel()
		m.wg.Wait()
		m.invalidate()
	})
}

// trusted reports whether the mirror may answer a check made at now.
func (m *mirror) trusted(now time.Time) bool {
	return m.live.Load() && now.Sub(m.epoch)-time.Duration(m.lastHeard.Load()) <= staleAfter
}

// revoked is Revoked from the mirror; ok is false when the mirror cannot vouch.
func (m *mirror) revoked(sid, sub string, iat time.Time) (revoked, ok bool) {
	now := time.Now()
	if !m.trusted(now) {
		return false, false
	}
	ms := now.UnixMilli()
	sh := m.shard(sid)
	sh.mu.RLock()
	until, found := sh.sessions[sid]
	sh.mu.RUnlock()
	if found && ms < until {
		return true, true
	}
	sh = m.shard(sub)
	sh.mu.RLock()
	u, found := sh.users[sub]
	sh.mu.RUnlock()
	return found && ms < u.until && iat.UnixMilli() <= u.at, true
}

// shard picks id's shard by FNV-1a (inline: no allocation on the check path).
func (m *mirror) shard(id string) *shard {
	h := uint32(2166136261)
	for i := 0; i < len(id); i++ {
		h = (h ^ uint32(id[i])) * 16777619
	}
	return &m.shards[h%numShards]
}

// addSession merges "sid revoked until until".
func (m *mirror) addSession(sid string, until int64) {
	now := time.Now().UnixMilli()
	if until <= now {
		return
	}
	sh := m.shard(sid)
	sh.mu.Lock()
	cur, found := sh.sessions[sid]
	switch {
	case found && cur >= until:
	case found:
		sh.sessions[sid] = until
	case m.grow():
		sh.sessions[strings.Clone(sid)] = until // not pinning the token or message it came from
	}
	sh.mu.Unlock()
}

// addUser merges "sub logged out everywhere at at, remembered until until". An expired
// entry counts as absent, as its key does in Redis.
func (m *mirror) addUser(sub string, at, until int64) {
	now := time.Now().UnixMilli()
	if until <= now {
		return
	}
	sh := m.shard(sub)
	sh.mu.Lock()
	cur, found := sh.users[sub]
	switch {
	case found && cur.until > now:
		sh.users[sub] = userRev{at: max(at, cur.at), until: max(until, cur.until)}
	case found:
		sh.users[sub] = userRev{at: at, until: until}
	case m.grow():
		sh.users[strings.Clone(sub)] = userRev{at: at, until: until}
	}
	sh.mu.Unlock()
}

// grow reserves room for one more entry. At the cap the entry is dropped and the mirror
// stops vouching until a load completes without dropping anything: a dropped entry that
// Redis holds (any but a forged one) comes back with that load.
func (m *mirror) grow() bool {
	if m.size.Add(1) <= m.cap.Load() {
		return true
	}
	m.size.Add(-1)
	m.invalidate()
	m.requestSync()
	return false
}

// apply merges one published invalidation: "<kind> <value> <until ms> <id>", kind s (value
// 1) or u (value: the logout-everywhere time in unix ms). Anything else is ignored: the
// channel is open to every client of the Redis server, so a message is only ever allowed to
// add a revocation, and a malformed one does nothing.
func (m *mirror) apply(p string) {
	kind, value, until, id, ok := parseInvalidation(p)
	switch {
	case !ok:
	case kind == 's':
		m.addSession(id, until)
	case kind == 'u':
		m.addUser(id, value, until)
	}
}

func parseInvalidation(p string) (kind byte, value, until int64, id string, ok bool) {
	if len(p) < 2 || p[1] != ' ' || (p[0] != 's' && p[0] != 'u') {
		return 0, 0, 0, "", false
	}
	kind, rest := p[0], p[2:]
	v, rest, ok1 := strings.Cut(rest, " ")
	u, id, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || id == "" {
		return 0, 0, 0, "", false
	}
	value, err1 := strconv.ParseInt(v, 10, 64)
	until, err2 := strconv.ParseInt(u, 10, 64)
	if err1 != nil || err2 != nil || value < 0 || until <= 0 || (kind == 's' && value != 1) {
		return 0, 0, 0, "", false
	}
	return kind, value, until, id, true
}

// invalidate makes the mirror stop vouching until the next completed load.
func (m *mirror) invalidate() {
	m.mu.Lock()
	m.invalidateLocked()
	m.mu.Unlock()
}

func (m *mirror) invalidateLocked() {
	m.gen++
	m.live.Store(false)
}

// disconnected: the subscription is gone (an error, a lapse, an unsubscribe).
func (m *mirror) disconnected() {
	m.mu.Lock()
	m.subscribed = false
	m.invalidateLocked()
	m.mu.Unlock()
}

// subscribedNow: Redis confirmed the subscription. Everything published from here on
// reaches us, so a load starting now completes the picture.
func (m *mirror) subscribedNow() {
	m.mu.Lock()
	m.subscribed = true
	m.invalidateLocked()
	m.mu.Unlock()
	m.requestSync()
}

func (m *mirror) requestSync() {
	select {
	case m.syncReq <- struct{}{}:
	default:
	}
}

func (m *mirror) heard() { m.lastHeard.Store(int64(time.Since(m.epoch))) }

func (m *mirror) silence() time.Duration {
	return time.Since(m.epoch) - time.Duration(m.lastHeard.Load())
}

func (m *mirror) isSubscribed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.subscribed
}

// run keeps one subscription at a time; it returns on close.
func (m *mirror) run() {
	defer m.wg.Done()
	for m.ctx.Err() == nil {
		ps := m.c.Subscribe(m.ctx, m.channel)
		stop, beat, start := make(chan struct{}), make(chan struct{}), time.Now()
		go func() {
			defer close(beat)
			m.heartbeat(ps, stop, start)
		}()
		m.receive(ps)
		close(stop)
		<-beat
		ps.Close()
		m.disconnected()
		m.sleep(firstRetry)
	}
}

// receive reads the subscription until it is closed. go-redis redials and resubscribes by
// itself after an error; the confirmation it then delivers starts a new load.
func (m *mirror) receive(ps *redis.PubSub) {
	pause := firstRetry
	for {
		msg, err := ps.Receive(m.ctx)
		if err != nil {
			m.disconnected()
			if errors.Is(err, redis.ErrClosed) || !m.sleep(pause) {
				return
			}
			pause = min(2*pause, time.Second) // Redis is down: one dial per pause
			continue
		}
		pause = firstRetry
		m.heard()
		switch msg := msg.(type) {
		case *redis.Subscription:
			if msg.Kind == "subscribe" && msg.Channel == m.channel {
				m.subscribedNow()
			} else {
				m.disconnected()
			}
		case *redis.Message:
			if msg.Channel == m.channel {
				m.apply(msg.Payload)
			}
		}
	}
}

// heartbeat pings the subscription so that silence means a broken link, and replaces a
// subscription (begun at start) that stays silent, confirmed or not. It closes ps on close
// so that a blocked Receive returns.
func (m *mirror) heartbeat(ps *redis.PubSub, stop <-chan struct{}, start time.Time) {
	t := time.NewTicker(pingEvery)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-m.ctx.Done():
			ps.Close()
			return
		case <-t.C:
		}
		if min(time.Since(start), m.silence()) > reconnectAfter {
			m.disconnected()
			ps.Close()
			return
		}
		if !m.isSubscribed() {
			continue // nothing to ping yet; receive is (re)dialling
		}
		ctx, cancel := context.WithTimeout(m.ctx, pingTimeout)
		_ = ps.Ping(ctx) // a failure shows as silence, or as an error in receive
		cancel()
	}
}

// maintain loads the keys when asked (a new subscription, an overflow), every resyncEvery
// and again after a failed load, backing off; it sweeps expired entries in between.
func (m *mirror) maintain() {
	defer m.wg.Done()
	sweep, resync := time.NewTicker(mirrorSweepEvery), time.NewTicker(resyncEvery)
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer sweep.Stop()
	defer resync.Stop()
	defer retry.Stop()
	pause := firstRetry
	for {
		select {
		case <-m.ctx.Done():
			return
		case <-sweep.C:
			m.sweep()
			continue
		case <-m.syncReq:
			pause = firstRetry // a new subscription deserves a prompt load
		case <-resync.C:
		case <-retry.C:
		}
		if m.sync() {
			retry.Stop()
			pause = firstRetry
			continue
		}
		retry.Reset(pause)
		pause = min(2*pause, maxRetry)
	}
}

// sync makes one load for the current subscription; false means it failed and should be
// retried. With no confirmed subscription there is nothing to do: the next one asks.
func (m *mirror) sync() bool {
	m.mu.Lock()
	g, ok := m.gen, m.subscribed
	m.mu.Unlock()
	if !ok {
		return true
	}
	return m.load(g) == nil && m.goLive(g)
}

// goLive makes the mirror vouch if nothing invalidated it since load generation g began.
func (m *mirror) goLive(g uint64) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.gen != g || !m.subscribed {
		return false
	}
	m.live.Store(true)
	return true
}

// load merges every rev key with its value and expiry (pipelined per SCAN page). SCAN
// returns every key that exists for the whole scan; one written during it is also
// published to our (already confirmed) subscription, so nothing falls between the two.
func (m *mirror) load(g uint64) error {
	var cursor uint64
	for {
		keys, next, err := m.c.Scan(m.ctx, cursor, m.match, scanCount).Result()
		if err != nil {
			return err
		}
		if err := m.loadKeys(keys); err != nil {
			return err
		}
		m.mu.Lock()
		stale := m.gen != g
		m.mu.Unlock()
		if stale {
			return errResync
		}
		if next == 0 {
			return nil
		}
		cursor = next
	}
}

func (m *mirror) loadKeys(keys []string) error {
	keys = slices.DeleteFunc(keys, func(k string) bool {
		rest := strings.TrimPrefix(k, m.prefix)
		return !strings.HasPrefix(rest, "s:") && !strings.HasPrefix(rest, "u:")
	})
	if len(keys) == 0 {
		return nil
	}
	pipe := m.c.Pipeline()
	vals := make([]*redis.StringCmd, len(keys))
	exps := make([]*redis.IntCmd, len(keys))
	for i, k := range keys {
		vals[i] = pipe.Get(m.ctx, k)
		exps[i] = redis.NewIntCmd(m.ctx, "pexpiretime", k)
		_ = pipe.Process(m.ctx, exps[i])
	}
	if _, err := pipe.Exec(m.ctx); err != nil && !errors.Is(err, redis.Nil) {
		return err
	}
	for i, k := range keys {
		v, err := vals[i].Result()
		until := exps[i].Val()
		if errors.Is(err, redis.Nil) || until == -2 {
			continue // expired since the SCAN
		}
		if err != nil {
			return err
		}
		if until == -1 {
			until = math.MaxInt64 // no expiry: revoked for good
		}
		rest := strings.TrimPrefix(k, m.prefix)
		switch {
		case strings.HasPrefix(rest, "s:"):
			m.addSession(rest[2:], until)
		case strings.HasPrefix(rest, "u:"):
			at, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				// The MGET path fails closed on this user; the mirror cannot do better
				// than refuse to vouch at all.
				return errors.New("bad user revocation value")
			}
			m.addUser(rest[2:], at, until)
		}
	}
	return nil
}

// sweep drops the expired entries of one shard.
func (m *mirror) sweep() {
	now := time.Now().UnixMilli()
	sh := &m.shards[m.next]
	m.next = (m.next + 1) % numShards
	sh.mu.Lock()
	for k, until := range sh.sessions {
		if until <= now {
			delete(sh.sessions, k)
			m.size.Add(-1)
		}
	}
	for k, u := range sh.users {
		if u.until <= now {
			delete(sh.users, k)
			m.size.Add(-1)
		}
	}
	sh.mu.Unlock()
}

// sleep waits d or until close; false means closed.
func (m *mirror) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-m.ctx.Done():
		return false
	}
}

// globEscape quotes the glob characters of a SCAN MATCH pattern, so that a prefix holding
// one matches only itself.
func globEscape(s string) string {
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[]\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}
