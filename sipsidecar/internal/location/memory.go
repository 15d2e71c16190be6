package location

import (
	"context"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"
)

// Memory is the in-process Store: everything is lost when the process ends.
//
// Each AOR ever stored has one entry, kept after its bindings expire for Known. Expiry is
// indexed like the Redis store's sorted set, by the earliest expiry among an AOR's stored
// bindings (expired ones included until Expire reports them), in per-second slots (see
// expiryIndex), so Expire touches only AORs that are due, never the whole table.
// Nonce counters are a nonceCounters, apart from the bindings.
type Memory struct {
	mu   sync.RWMutex // readers: Lookup, Known, AORs
	aors map[string]*aorEntry
	due  expiryIndex

	nonces *nonceCounters   // under their own lock: bindings and nonces never wait on each other
	now    func() time.Time // nonce TTLs only; binding times come from the caller
}

type aorEntry struct {
	aor  string
	name string // display name, for Known
	// bindings are in the order fn returned them, expired leftovers at the end. The store
	// rewrites them in place, so no slice of them ever leaves it: callers get copies.
	bindings []Binding
	first    time.Time // earliest ExpiresAt in bindings, while there are any

	slot       *expirySlot // in Memory.due while bindings is not empty
	prev, next *aorEntry   // within slot
}

// NewMemory returns an empty store.
func NewMemory() *Memory {
	return &Memory{
		aors:   map[string]*aorEntry{},
		nonces: newNonceCounters(),
		now:    time.Now,
	}
}

// Update implements Store. fn sees the live bindings; expired ones it does not replace stay
// stored (hidden) until Expire reports them. When fn returns two bindings with one Key, the
// later one wins.
func (m *Memory) Update(ctx context.Context, aor string, now time.Time, fn func([]Binding) ([]Binding, error)) ([]Binding, error) {
	return m.UpdateCounted(ctx, aor, now, Count{}, fn)
}

// UpdateCounted implements Store: the count is recorded under the store's lock, after fn
// and before its bindings are stored.
func (m *Memory) UpdateCounted(_ context.Context, aor string, now time.Time, c Count, fn func([]Binding) ([]Binding, error)) ([]Binding, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.aors[aor]
	var all []Binding
	if e != nil {
		all = e.bindings
	}
	live := make([]Binding, 0, len(all))
	for i := range all { // by index: a Binding is a few hundred bytes to copy
		if all[i].Live(now) {
			live = append(live, all[i])
		}
	}
	next, err := fn(live)
	if err != nil {
		return nil, err
	}
	if c.Nonce != "" {
		if err := m.nonces.use(c.Nonce, c.Serial, c.NC, c.TTL, m.now()); err != nil {
			return nil, err
		}
	}
	next = normalize(aor, next) // the caller's from here on: storage gets a copy
	if e == nil {
		if len(next) == 0 {
			return next, nil
		}
		e = &aorEntry{aor: aor}
		m.aors[aor] = e
	}
	if len(next) > 0 {
		e.name = displayName(next, e.name)
	}
	// The stored set is next followed by the expired bindings it does not replace, built in
	// e.bindings' own array when it is large enough: the leftovers are gathered at its
	// front, moved behind next's place, and next is copied in front of them.
	left := all[:0]
	for i := range all {
		if !all[i].Live(now) && !hasKeyOf(next, all[i]) {
			left = append(left, all[i]) // left for Expire to report
		}
	}
	n := len(next) + len(left)
	stored := all[:0]
	if cap(stored) < n {
		stored = make([]Binding, 0, n)
	} else if n < len(all) {
		clear(all[n:]) // no stale copies keeping strings alive
	}
	stored = stored[:n]
	copy(stored[len(next):], left)
	copy(stored, next)
	m.store(e, stored)
	return next, nil
}

// store makes e hold exactly bs, keeping the expiry index in step. An entry left without
// bindings stays in the table, for Known, but lets go of its array.
func (m *Memory) store(e *aorEntry, bs []Binding) {
	if len(bs) == 0 {
		e.bindings = nil
		m.due.remove(e)
		return
	}
	e.bindings = bs
	m.due.set(e, earliest(bs))
}

// Lookup implements Store.
func (m *Memory) Lookup(_ context.Context, aor string, now time.Time) ([]Binding, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	e := m.aors[aor]
	if e == nil {
		return nil, nil
	}
	var out []Binding
	for _, b := range e.bindings {
		if b.Live(now) {
			out = append(out, b)
		}
	}
	return out, nil
}

// Expire implements Store. limit <= 0 means no limit.
func (m *Memory) Expire(_ context.Context, now time.Time, limit int) ([]Binding, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Binding
	full := func() bool { return limit > 0 && len(out) >= limit }
	for s := m.due.due(now); s != nil && !full(); s = m.due.due(now) {
		for e := s.head; e != nil && !full(); {
			next := e.next // e may move to a later slot
			if !e.first.After(now) {
				keep := e.bindings[:0]
				for _, b := range e.bindings {
					if !b.Live(now) && !full() {
						out = append(out, b)
					} else {
						keep = append(keep, b)
					}
				}
				clear(e.bindings[len(keep):])
				m.store(e, keep)
			}
			e = next
		}
		if m.due.due(now) == s {
			break // the limit, or the current second's entries not yet due
		}
	}
	return out, nil
}

// Known implements Store.
func (m *Memory) Known(context.Context) (map[string]string, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make(map[string]string, len(m.aors))
	for aor, e := range m.aors {
		out[aor] = e.name
	}
	return out, nil
}

// AORs implements Store.
func (m *Memory) AORs(_ context.Context, now time.Time) ([]string, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	var out []string
	for aor, e := range m.aors {
		for _, b := range e.bindings {
			if b.Live(now) {
				out = append(out, aor)
				break
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// UseNonce implements Store. A ttl below a millisecond counts as one millisecond, as in Redis.
func (m *Memory) UseNonce(_ context.Context, c Count) error {
	return m.nonces.use(c.Nonce, c.Serial, c.NC, c.TTL, m.now())
}

// Replayed implements Store.
func (m *Memory) Replayed(c Count) bool { return m.nonces.seen(c.Nonce, c.Serial, c.NC, m.now()) }

// Recall implements Store: this store is the truth, so it is Lookup.
func (m *Memory) Recall(aor string, now time.Time) ([]Binding, bool) {
	bs, _ := m.Lookup(context.Background(), aor, now)
	return bs, true
}

// Ping implements Store.
func (m *Memory) Ping(context.Context) error { return nil }

// Close implements Store.
func (m *Memory) Close() error { return nil }

// normalize stamps aor on every binding and keeps the last binding of each Key, in order.
func normalize(aor string, bs []Binding) []Binding {
	out := make([]Binding, 0, len(bs))
	for _, b := range bs {
		b.AOR = aor
		if i := slices.IndexFunc(out, func(o Binding) bool { return sameKey(o, b) }); i >= 0 {
			out = slices.Delete(out, i, i+1)
		}
		out = append(out, b)
	}
	return out
}

func hasKey(bs []Binding, key string) bool {
	return slices.ContainsFunc(bs, func(b Binding) bool { return b.Key() == key })
}

func hasKeyOf(bs []Binding, b Binding) bool {
	return slices.ContainsFunc(bs, func(o Binding) bool { return sameKey(o, b) })
}

// sameKey is a.Key() == b.Key() without building the "instance:" strings.
func sameKey(a, b Binding) bool {
	switch {
	case a.InstanceID != "" && b.InstanceID != "":
		return a.InstanceID == b.InstanceID
	case a.InstanceID != "":
		return instanceKey(b.Contact, a.InstanceID)
	case b.InstanceID != "":
		return instanceKey(a.Contact, b.InstanceID)
	}
	return a.Contact == b.Contact
}

// instanceKey reports whether contact, a Key without an instance, equals "instance:"+id.
func instanceKey(contact, id string) bool {
	rest, ok := strings.CutPrefix(contact, "instance:")
	return ok && rest == id
}

// displayName is the last non-empty display name in bs, else old.
func displayName(bs []Binding, old string) string {
	for i := len(bs) - 1; i >= 0; i-- {
		if bs[i].DisplayName != "" {
			return bs[i].DisplayName
		}
	}
	return old
}

// earliest returns the earliest expiry of bs.
func earliest(bs []Binding) time.Time {
	first := bs[0].ExpiresAt
	for _, b := range bs[1:] {
		if b.ExpiresAt.Before(first) {
			first = b.ExpiresAt
		}
	}
	return first
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
