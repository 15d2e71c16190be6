package token

import (
	"sync"
	"time"
)

// verifiedCache remembers tokens that passed the full check, keyed by their exact text, so
// a phone presenting the same access token for every media request pays the signature and
// JSON work once. Only good tokens enter it (a flood of forgeries cannot fill it); expiry and
// type are checked on every hit; revocation is never cached (it is the store's, checked after).
type verifiedCache struct {
	mu      sync.RWMutex
	entries map[string]*Claims
	max     int
}

func newVerifiedCache(max int) *verifiedCache {
	return &verifiedCache{entries: make(map[string]*Claims, 1024), max: max}
}

func (c *verifiedCache) get(raw string) *Claims {
	if c == nil {
		return nil
	}
	c.mu.RLock()
	cl := c.entries[raw]
	c.mu.RUnlock()
	return cl
}

func (c *verifiedCache) put(raw string, cl *Claims, now time.Time) {
	if c == nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.entries) >= c.max {
		// Make room: drop the expired, and if that is not enough, an arbitrary half.
		for k, v := range c.entries {
			if v.ExpiresAt < now.Unix() {
				delete(c.entries, k)
			}
		}
		if len(c.entries) >= c.max {
			n := 0
			for k := range c.entries {
				delete(c.entries, k)
				if n++; n >= c.max/2 {
					break
				}
			}
		}
	}
	c.entries[raw] = cl
}
