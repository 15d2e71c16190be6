package location

import (
	"hash/maphash"
	"math"
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

	// ring holds the counters of this process's own nonces, by serial (Count.Serial): a
	// nonce is used moments after it was made, so the counters in use are neighbours in
	// the array, where the map scatters millions of them over memory. A counter lives in
	// ring[serial & (len-1)] while it is live, and no live counter is ever overwritten:
	// a slot taken by a live one grows the ring (which never shrinks), up to maxRing, and
	// past that a counter goes to the map. So a serial's counter is in its slot or in the
	// map, never in both.
	ring    []serialCounter
	maxRing int // maxRing, or less in tests
}

type nonceCounter struct {
	nc  uint64
	end int64 // unix ns
}

type nonceExpiry struct {
	end int64
	key uint64
}

type serialCounter struct {
	serial uint32
	nc     uint32 // ParseNC's counts fit; a larger one goes to the map
	end    int64  // unix ns; 0: never used
}

// The ring starts at firstRing slots and grows to maxRing (2²³ slots of 16 bytes:
// 128 MiB, the counters of six minutes at 23,000 nonces a second).
const (
	firstRing = 1 << 12
	maxRing   = 1 << 23
)

func newNonceCounters() *nonceCounters {
	return &nonceCounters{seed: maphash.MakeSeed(), count: map[uint64]nonceCounter{}, maxRing: maxRing}
}

// use records nc for nonce at now; ErrReplay when nc is not above the last count seen
// within the TTL. serial is the nonce's Count.Serial (0: none). A ttl below a millisecond
// counts as one millisecond, as in Redis.
func (n *nonceCounters) use(nonce string, serial uint32, nc uint64, ttl time.Duration, now time.Time) error {
	ttl = max(ttl, time.Millisecond)
	t := now.UnixNano()
	end := t + int64(ttl)
	n.mu.Lock()
	defer n.mu.Unlock()
	if s := n.slotLocked(serial); s != nil && s.serial == serial && t < s.end {
		if nc <= uint64(s.nc) {
			return ErrReplay
		}
		if nc <= math.MaxUint32 {
			*s = serialCounter{serial: serial, nc: uint32(nc), end: end}
			return nil
		}
		*s = serialCounter{} // a count too large for the ring: the map holds it from now on
	}
	n.sweepLocked(t)
	key := maphash.String(n.seed, nonce)
	cur, ok := n.count[key]
	if ok && t < cur.end {
		if nc <= cur.nc {
			return ErrReplay
		}
	} else if serial != 0 && nc <= math.MaxUint32 {
		// New: into the ring when there is room for it.
		if s := n.claimLocked(serial, t); s != nil {
			*s = serialCounter{serial: serial, nc: uint32(nc), end: end}
			return nil
		}
	}
	n.count[key] = nonceCounter{nc: nc, end: end}
	n.queue = append(n.queue, nonceExpiry{end: end, key: key})
	return nil
}

// seen reports whether nonce has a count of nc or more at now: what use would refuse.
func (n *nonceCounters) seen(nonce string, serial uint32, nc uint64, now time.Time) bool {
	t := now.UnixNano()
	n.mu.Lock()
	defer n.mu.Unlock()
	if s := n.slotLocked(serial); s != nil && s.serial == serial && t < s.end {
		return nc <= uint64(s.nc)
	}
	if len(n.count) == 0 {
		return false
	}
	cur, ok := n.count[maphash.String(n.seed, nonce)]
	return ok && t < cur.end && nc <= cur.nc
}

// slotLocked is serial's slot in the ring; nil for serial 0 and when there is no ring yet.
func (n *nonceCounters) slotLocked(serial uint32) *serialCounter {
	if serial == 0 || len(n.ring) == 0 {
		return nil
	}
	return &n.ring[int(serial)&(len(n.ring)-1)]
}

// claimLocked is a slot for a new counter of serial: its own, or one whose counter has
// ended, growing the ring when a live counter holds it; nil when the ring can grow no more.
func (n *nonceCounters) claimLocked(serial uint32, t int64) *serialCounter {
	if n.ring == nil {
		n.ring = make([]serialCounter, min(firstRing, n.maxRing))
	}
	for {
		s := &n.ring[int(serial)&(len(n.ring)-1)]
		if s.serial == serial || t >= s.end {
			return s
		}
		if len(n.ring) >= n.maxRing {
			return nil
		}
		n.growLocked(t)
	}
}

// growLocked doubles the ring, moving the live counters: two that share a slot in the new
// ring would have shared one in the old, so none is lost.
func (n *nonceCounters) growLocked(t int64) {
	ring := make([]serialCounter, 2*len(n.ring))
	for _, s := range n.ring {
		if t < s.end {
			ring[int(s.serial)&(len(ring)-1)] = s
		}
	}
	n.ring = ring
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

// size is the number of counters in the map and in its queue, and the ring's length (for
// tests).
func (n *nonceCounters) size() (counters, queued, ring int) {
	n.mu.Lock()
	defer n.mu.Unlock()
	return len(n.count), len(n.queue) - n.head, len(n.ring)
}
