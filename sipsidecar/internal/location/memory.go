package location

import (
	"container/heap"
	"context"
	"slices"
	"sort"
	"sync"
	"time"
)

// Memory is the in-process Store: everything is lost when the process ends.
//
// Expiry is indexed like the Redis store's sorted set: a min-heap holds every AOR once,
// ordered by the earliest expiry among its stored bindings (expired ones included until
// Expire reports them), so Expire touches only AORs that are due, never the whole table.
// Nonce counters sit in a map with their own expiry heap, swept a little on every call.
type Memory struct {
	mu    sync.RWMutex // readers: Lookup, Known, AORs
	aors  map[string]*aorEntry
	due   aorHeap
	known map[string]string

	nmu    sync.Mutex // nonce counters: apart from the bindings, so the two never wait on each other
	nonces map[string]nonceCount
	ndue   nonceHeap
	now    func() time.Time // nonce TTLs only; binding times come from the caller
}

type aorEntry struct {
	aor      string
	bindings []Binding // in the order fn returned them, expired leftovers at the end
	first    time.Time // earliest ExpiresAt in bindings
	index    int       // position in Memory.due
}

type nonceCount struct {
	nc  uint64
	end time.Time
}

// NewMemory returns an empty store.
func NewMemory() *Memory {
	return &Memory{
		aors:   map[string]*aorEntry{},
		known:  map[string]string{},
		nonces: map[string]nonceCount{},
		now:    time.Now,
	}
}

// Update implements Store. fn sees the live bindings; expired ones it does not replace stay
// stored (hidden) until Expire reports them. When fn returns two bindings with one Key, the
// later one wins.
func (m *Memory) Update(_ context.Context, aor string, now time.Time, fn func([]Binding) ([]Binding, error)) ([]Binding, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	e := m.aors[aor]
	var all []Binding
	if e != nil {
		all = e.bindings
	}
	live := make([]Binding, 0, len(all))
	for _, b := range all {
		if b.Live(now) {
			live = append(live, b)
		}
	}
	next, err := fn(live)
	if err != nil {
		return nil, err
	}
	next = normalize(aor, next)
	stored := slices.Clip(slices.Clone(next))
	for _, b := range all {
		if !b.Live(now) && !hasKey(next, b.Key()) {
			stored = append(stored, b) // left for Expire to report
		}
	}
	m.set(aor, e, stored)
	if len(next) > 0 {
		m.known[aor] = displayName(next, m.known[aor])
	}
	return slices.Clone(next), nil
}

// set makes aor hold exactly bs, keeping the expiry heap in step.
func (m *Memory) set(aor string, e *aorEntry, bs []Binding) {
	if len(bs) == 0 {
		if e != nil {
			heap.Remove(&m.due, e.index)
			delete(m.aors, aor)
		}
		return
	}
	first, _ := bounds(bs)
	if e == nil {
		e = &aorEntry{aor: aor}
		m.aors[aor] = e
		e.bindings, e.first = bs, first
		heap.Push(&m.due, e)
		return
	}
	e.bindings, e.first = bs, first
	heap.Fix(&m.due, e.index)
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
	for m.due.Len() > 0 && !m.due[0].first.After(now) && (limit <= 0 || len(out) < limit) {
		e := m.due[0]
		keep := make([]Binding, 0, len(e.bindings))
		for _, b := range e.bindings {
			if !b.Live(now) && (limit <= 0 || len(out) < limit) {
				out = append(out, b)
			} else {
				keep = append(keep, b)
			}
		}
		m.set(e.aor, e, keep)
	}
	return out, nil
}

// Known implements Store.
func (m *Memory) Known(context.Context) (map[string]string, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	out := make(map[string]string, len(m.known))
	for k, v := range m.known {
		out[k] = v
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
func (m *Memory) UseNonce(_ context.Context, nonce string, nc uint64, ttl time.Duration) error {
	ttl = max(ttl, time.Millisecond)
	m.nmu.Lock()
	defer m.nmu.Unlock()
	now := m.now()
	// Forget counters whose TTL passed; a heap entry whose counter was renewed since is skipped.
	for m.ndue.Len() > 0 && !now.Before(m.ndue[0].end) {
		d := heap.Pop(&m.ndue).(nonceDue)
		if cur, ok := m.nonces[d.nonce]; ok && !now.Before(cur.end) {
			delete(m.nonces, d.nonce)
		}
	}
	if cur, ok := m.nonces[nonce]; ok && nc <= cur.nc {
		return ErrReplay
	}
	end := now.Add(ttl)
	m.nonces[nonce] = nonceCount{nc: nc, end: end}
	heap.Push(&m.ndue, nonceDue{end: end, nonce: nonce})
	return nil
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
		if i := slices.IndexFunc(out, func(o Binding) bool { return o.Key() == b.Key() }); i >= 0 {
			out = slices.Delete(out, i, i+1)
		}
		out = append(out, b)
	}
	return out
}

func hasKey(bs []Binding, key string) bool {
	return slices.ContainsFunc(bs, func(b Binding) bool { return b.Key() == key })
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

type aorHeap []*aorEntry

func (h aorHeap) Len() int           { return len(h) }
func (h aorHeap) Less(i, j int) bool { return h[i].first.Before(h[j].first) }
func (h aorHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *aorHeap) Push(x any) {
	e := x.(*aorEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *aorHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.index = -1
	return e
}

type nonceDue struct {
	end   time.Time
	nonce string
}

type nonceHeap []nonceDue

func (h nonceHeap) Len() int           { return len(h) }
func (h nonceHeap) Less(i, j int) bool { return h[i].end.Before(h[j].end) }
func (h nonceHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *nonceHeap) Push(x any)        { *h = append(*h, x.(nonceDue)) }
func (h *nonceHeap) Pop() any {
	old := *h
	d := old[len(old)-1]
	*h = old[:len(old)-1]
	return d
}
