package location

import (
	"sync"
	"time"
)

// recentReads keeps what the Redis store's Lookup last read of an AOR, for the Update that
// usually follows within milliseconds: a phone's REGISTER without credentials is looked up
// for a NAT refresh and challenged, and its authenticated REGISTER then updates the same
// AOR. That Update starts its compare-and-set from the kept read instead of reading the
// hash again (one Redis command of four per registration). The compare-and-set checks the
// hash against what Redis holds, so an entry another writer made stale costs one retry with
// a fresh read, never a lost binding.
//
// Entries are taken once, live at most recentTTL, and two generations of at most
// recentMax entries each bound the memory (a few MiB).
type recentReads struct {
	mu        sync.Mutex
	cur, prev map[string]recentRead
	now       func() time.Time
}

type recentRead struct {
	hash map[string]string // as HGETALL answered it
	all  []Binding         // hash decoded; never handed to a caller
	at   time.Time
}

const (
	recentTTL = 2 * time.Second
	recentMax = 4096
)

func newRecentReads(now func() time.Time) *recentReads {
	return &recentReads{cur: map[string]recentRead{}, prev: map[string]recentRead{}, now: now}
}

// put keeps a read of aor's hash.
func (c *recentReads) put(aor string, hash map[string]string, all []Binding) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.cur) >= recentMax {
		c.prev, c.cur = c.cur, make(map[string]recentRead, recentMax)
	}
	c.cur[aor] = recentRead{hash: hash, all: all, at: c.now()}
}

// take returns and forgets the kept read of aor, if it is recent enough.
func (c *recentReads) take(aor string) (recentRead, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.cur[aor]
	if ok {
		delete(c.cur, aor)
	} else if e, ok = c.prev[aor]; ok {
		delete(c.prev, aor)
	}
	if !ok || c.now().Sub(e.at) > recentTTL {
		return recentRead{}, false
	}
	return e, true
}

// len is the number of entries kept (for tests).
func (c *recentReads) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur) + len(c.prev)
}
