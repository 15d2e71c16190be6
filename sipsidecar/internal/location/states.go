package location

import "sync"

// hashRead is an AOR's hash as the Redis store last read or wrote it: enough to write the
// hash again with a compare-and-set, and the bindings decoded from it.
type hashRead struct {
	rev     string // the revision field; "" for an empty hash, or one an older sidecar wrote
	name    string // the name field
	hasName bool
	window  string       // the nonce window's field as read ("" when none, or when win holds it)
	win     *nonceWindow // the window parsed, when this sidecar wrote it; else nil
	fields  []string     // every other field: the binding keys
	all     []Binding    // the bindings decoded, expired ones included; never handed out or changed
	// legacy is a non-empty hash without a revision, as read: the compare-and-set checks
	// it field by field. Such reads are never kept in aorStates.
	legacy map[string]string
}

// readOf makes a hashRead of what HGETALL (or the compare-and-set, on a conflict) answered.
func readOf(m map[string]string) *hashRead {
	rd := &hashRead{rev: m[revField], all: decodeAll(m), fields: make([]string, 0, len(m))}
	rd.name, rd.hasName = m[nameField]
	rd.window = m[windowField]
	for f := range m {
		if !ownField(f) {
			rd.fields = append(rd.fields, f)
		}
	}
	if rd.rev == "" && len(m) > 0 {
		rd.legacy = m
	}
	return rd
}

// emptyRead is the guess for an AOR this process knows nothing of: most such AORs are new
// ones, and the compare-and-set answers with the hash when the guess is wrong.
var emptyRead = &hashRead{}

// aorStates keeps the last read or write of the AORs this sidecar served recently, so that
// most registrations cost Redis one round trip: the compare-and-set of the authenticated
// REGISTER, which writes the binding and takes the nonce count together. Without it, the
// challenge's NAT-refresh check reads the hash and the write reads it again. It is a
// write-through cache whose every use is checked: an Update from a kept state that another
// sidecar (or Expire) has since changed finds a different revision in the script, which
// answers with the hash as it is, and fn runs again on that. So a stale entry costs that
// retry, never a binding; and Recall's answers only decide whether a NAT refresh is tried,
// which the Update then checks.
//
// Two generations of at most half the configured number each bound the memory: an entry
// is about 2.1 KiB with one binding and a full nonce window (TestAORStatesMemory: the
// hash's JSON, which the decoded Binding's strings point into, the Binding, the window and
// the map's share), so the default of 65,536 AORs (SIPSIDECAR_REDIS_CACHE_AORS) is at most
// about 140 MiB.
type aorStates struct {
	mu        sync.Mutex
	cur, prev map[string]*hashRead
	max       int // in one generation; 0 keeps nothing
}

// DefaultCacheAORs is how many AORs' states the Redis store keeps unless told otherwise.
const DefaultCacheAORs = 65536

// newAORStates keeps between n/2 and n AORs (the two generations).
func newAORStates(n int) *aorStates {
	return &aorStates{cur: map[string]*hashRead{}, prev: map[string]*hashRead{}, max: n / 2}
}

// put keeps rd as aor's state; a legacy read is dropped instead (its compare needs every
// field, which is not worth keeping for a hash only an older sidecar writes).
func (c *aorStates) put(aor string, rd *hashRead) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rd.legacy != nil || c.max == 0 {
		delete(c.cur, aor)
		delete(c.prev, aor)
		return
	}
	c.keepLocked(aor, rd)
	delete(c.prev, aor)
}

// keepLocked puts rd in the newer generation, which becomes the older one when full.
func (c *aorStates) keepLocked(aor string, rd *hashRead) {
	if _, ok := c.cur[aor]; !ok && len(c.cur) >= c.max {
		c.prev, c.cur = c.cur, make(map[string]*hashRead, c.max)
	}
	c.cur[aor] = rd
}

// get returns aor's kept state; an entry of the older generation moves to the newer.
func (c *aorStates) get(aor string) (*hashRead, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if rd, ok := c.cur[aor]; ok {
		return rd, true
	}
	rd, ok := c.prev[aor]
	if !ok {
		return nil, false
	}
	delete(c.prev, aor)
	c.keepLocked(aor, rd)
	return rd, true
}

// drop forgets aor.
func (c *aorStates) drop(aor string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.cur, aor)
	delete(c.prev, aor)
}

// len is the number of AORs kept (for tests).
func (c *aorStates) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.cur) + len(c.prev)
}
