package location

import (
	"hash/maphash"
	"sync"
	"time"
)

// nonceCounters is the memory store's digest replay guard, and the Redis store's memory of
// the counts it took itself: the highest nonce count seen per nonce, for the nonce's TTL.
//
// Every authenticated REGISTER adds a nonce, so at 20,000 registrations/s with the usual
// six-minute TTL it holds millions. It is built so that neither a lookup nor the garbage
// collector has to walk them:
//   - counters are keyed by a 64-bit keyed hash of the nonce (a random seed per process),
//     so the map and the queue hold no pointers and no strings (nor keep alive the header
//     a nonce string was sliced from). Two nonces alike in all 64
//     bits would share a counter; the nonces are ones this sidecar signed and checked
//     before they get here, and the odds among even ten million live ones are about 3 in a
//     million per TTL, so a phone would at worst be challenged once more;
//   - expiry is a FIFO queue, not a heap: with one TTL (the registrar always passes the
//     same), ends arrive in order and forgetting is a pop. A shorter TTL after longer ones
//     waits in the queue behind them, but a counter past its end is never used: the check
//     compares the end, the queue only reclaims memory.
type nonceCounters struct {
	seed maphash.Seed

	mu    sync.Mutex
	count map[uint64]nonceCounter
	queue []nonceExpiry // ends in arrival order; queue[head:] are pending
	head  int
}

type nonceCounter struct {
	nc  uint64
	end int64 // unix ns
}

type nonceExpiry struct {
	end int64
	key uint64
}

func newNonceCounters() *nonceCounters {
	return &nonceCounters{seed: maphash.MakeSeed(), count: map[uint64]nonceCounter{}}
}

// use records nc for nonce at now; ErrReplay when nc is not above the last count seen
// within the TTL. A ttl below a millisecond counts as one millisecond, as in Redis.
func (n *nonceCounters) use(nonce string, nc uint64, ttl time.Duration, now time.Time) error {
	ttl = max(ttl, time.Millisecond)
	key := maphash.String(n.seed, nonce)
	t := now.UnixNano()
	n.mu.Lock()
	defer n.mu.Unlock()
	n.sweepLocked(t)
	if cur, ok := n.count[key]; ok && t < cur.end && nc <= cur.nc {
		return ErrReplay
	}
	end := t + int64(ttl)
	n.count[key] = nonceCounter{nc: nc, end: end}
	n.queue = append(n.queue, nonceExpiry{end: end, key: key})
	return nil
}

// seen reports whether nonce has a count of nc or more at now: what use would refuse.
func (n *nonceCounters) seen(nonce string, nc uint64, now time.Time) bool {
	key := maphash.String(n.seed, nonce)
	n.mu.Lock()
	defer n.mu.Unlock()
	cur, ok := n.count[key]
	return ok && now.UnixNano() < cur.end && nc <= cur.nc
}

// sweepLocked forgets the counters whose end has come, from the front of the queue; an
// entry whose counter was renewed since (a later end) leaves the counter alone.
func (n *nonceCounters) sweepLocked(t int64) {
	for n.head < len(n.queue) && n.queue[n.head].end <= t {
		d := n.queue[n.head]
		if cur, ok := n.count[d.key]; ok && cur.end <= t {
			delete(n.count, d.key)
		}
		n.head++
	}
	// Reuse the queue's front once most of it is spent, so it neither grows without end
	// nor is copied on every call.
	if n.head > 1024 && n.head > len(n.queue)/2 {
		k := copy(n.queue, n.queue[n.head:])
		n.queue = n.queue[:k]
		n.head = 0
	}
}

// size is the number of counters held (for tests).
func (n *nonceCounters) size() (counters, queued int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.count), len(n.queue) - n.head
}
