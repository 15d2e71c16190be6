package sipserver

import (
	"hash/maphash"
	"sync"
	"time"
)

// txCache is the state of the UDP non-INVITE server transactions (RFC 3261 §17.2.2): a
// request whose transaction is still being handled is absorbed, and one whose transaction
// has completed gets the same final response again, until Timer J (64*T1 = 32 s) would have
// ended the transaction.
//
// It is built for tens of thousands of transactions a second without weighing on the
// garbage collector: completed transactions live in a few generations, each an append-only
// byte arena (key and response bytes) indexed by a map of integers, so the collector has
// nothing to scan, and a whole generation is dropped at once when it ages out. An arena is
// a list of chunks of up to 1 MiB: it grows by adding one, never by copying what it holds
// (a single growing slice moved tens of megabytes at every growth: 5% of the sidecar's CPU
// at 19,500 REGISTERs/s while the generations filled). A memory cap
// drops the oldest generation early; a retransmission that comes after that is handled
// again as a new request (the registrar refuses it: its nonce count is a replay, and a
// repeated Call-ID and CSeq is out of order).
type txCache struct {
	seed   maphash.Seed
	span   time.Duration // what one generation covers
	maxMem int           // arena bytes in use at most, over all generations (each may hold up to a chunk more unused)
	chunk  int           // arena chunk size

	mu       sync.Mutex
	gens     []*generation // newest first
	inflight map[string]struct{}
	mem      int
}

type generation struct {
	start  time.Time
	index  map[uint64]span
	chunks [][]byte // the arena; new entries go into the last one
	used   int      // bytes in chunks
}

// span locates one entry in its generation's arena: the key, then the response.
type span struct {
	chunk     uint32
	off       uint32
	keyLen    uint32
	answerLen uint32
}

// entry is the bytes s locates.
func (g *generation) entry(s span) (key, answer []byte) {
	b := g.chunks[s.chunk][s.off:]
	return b[:s.keyLen], b[s.keyLen : s.keyLen+s.answerLen]
}

const (
	timerJ      = 32 * time.Second // 64*T1, RFC 3261 §17.2.2
	generations = 8
	// defaultMaxMem bounds the cache: about 250,000 remembered answers of a REGISTER 200
	// (a few seconds of the highest rate this sidecar sustains), far more than any
	// realistic load keeps within 32 s.
	defaultMaxMem = 128 << 20
	maxChunk      = 1 << 20
)

func newTxCache(maxMem int) *txCache {
	if maxMem <= 0 {
		maxMem = defaultMaxMem
	}
	return &txCache{
		seed:     maphash.MakeSeed(),
		span:     timerJ / (generations - 1),
		maxMem:   maxMem,
		chunk:    min(maxChunk, maxMem),
		inflight: map[string]struct{}{},
	}
}

// verdict of begin
type verdict int

const (
	fresh    verdict = iota // a new transaction: handle it, then finish or abandon it
	absorbed                // its transaction is being handled: send nothing
	repeat                  // completed: send the returned answer again
)

// begin looks key up. A fresh key is marked in flight until finish or abandon.
// The returned answer (for repeat) is a copy the caller may keep.
func (c *txCache) begin(key string, now time.Time) (verdict, []byte) {
	h := maphash.String(c.seed, key)
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.inflight[key]; ok {
		return absorbed, nil
	}
	c.ageLocked(now)
	for _, g := range c.gens {
		if s, ok := g.index[h]; ok {
			if k, a := g.entry(s); string(k) == key {
				if len(a) == 0 {
					return absorbed, nil // handled, nothing was sent (a dropped flood)
				}
				return repeat, append([]byte(nil), a...)
			}
		}
	}
	c.inflight[key] = struct{}{}
	return fresh, nil
}

// finish completes key's transaction with answer (nil: nothing was sent, and its
// retransmissions get nothing either).
func (c *txCache) finish(key string, answer []byte, now time.Time) {
	h := maphash.String(c.seed, key)
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.inflight, key)
	c.ageLocked(now)
	need := len(key) + len(answer)
	for c.mem+need > c.maxMem && len(c.gens) > 1 {
		c.dropOldestLocked()
	}
	if c.mem+need > c.maxMem {
		return // one generation already holds the cap: remember nothing more for now
	}
	g := c.gens[0]
	if n := len(g.chunks); n == 0 || len(g.chunks[n-1])+need > cap(g.chunks[n-1]) {
		g.chunks = append(g.chunks, make([]byte, 0, max(c.chunk, need)))
	}
	last := len(g.chunks) - 1
	b := g.chunks[last]
	off := len(b)
	b = append(b, key...)
	g.chunks[last] = append(b, answer...)
	g.index[h] = span{chunk: uint32(last), off: uint32(off), keyLen: uint32(len(key)), answerLen: uint32(len(answer))}
	g.used += need
	c.mem += need
}

// abandon forgets an in-flight key without remembering an answer: its next retransmission
// is handled as a new request.
func (c *txCache) abandon(key string) {
	c.mu.Lock()
	delete(c.inflight, key)
	c.mu.Unlock()
}

// ageLocked starts a new generation when the newest is a span old and drops those that
// ended more than Timer J ago.
func (c *txCache) ageLocked(now time.Time) {
	if len(c.gens) == 0 || now.Sub(c.gens[0].start) >= c.span {
		// The index is sized like the last one's: a steady load then never regrows it.
		g := &generation{start: now, index: map[uint64]span{}}
		if len(c.gens) > 0 {
			g.index = make(map[uint64]span, len(c.gens[0].index))
		}
		c.gens = append([]*generation{g}, c.gens...)
	}
	// Every entry of the oldest generation was written before the next one started, so it
	// can go once that start is more than Timer J ago.
	for len(c.gens) > 1 && now.Sub(c.gens[len(c.gens)-2].start) > timerJ {
		c.dropOldestLocked()
	}
}

func (c *txCache) dropOldestLocked() {
	old := c.gens[len(c.gens)-1]
	c.mem -= old.used
	c.gens = c.gens[:len(c.gens)-1]
}

// stats reports the remembered answers, the in-flight keys and the arena bytes.
func (c *txCache) stats() (answers, inflight, mem int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, g := range c.gens {
		answers += len(g.index)
	}
	return answers, len(c.inflight), c.mem
}
