package location

import (
	"container/heap"
	"context"
	"sort"
	"sync"
	"time"
)

// Memory is the in-process Store: everything is lost when the process ends.
type Memory struct {
	mu       sync.Mutex
	aors     map[string][]Binding
	expiries expiryHeap // one entry per stored binding version; stale ones are skipped
	known    map[string]string
	nonces   map[string]nonceCount
	swept    time.Time
}

type nonceCount struct {
	nc  uint64
	end time.Time
}

type expiryEntry struct {
	at  time.Time
	aor string
	key string
}

type expiryHeap []expiryEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiryEntry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

// NewMemory returns an empty store.
func NewMemory() *Memory {
	return &Memory{aors: map[string][]Binding{}, known: map[string]string{}, nonces: map[string]nonceCount{}}
}

// Update implements Store. fn sees the live bindings; expired ones it does not replace stay
// stored until Expire reports them.
func (m *Memory) Update(_ context.Context, aor string, now time.Time, fn func([]Binding) ([]Binding, error)) ([]Binding, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	all := m.aors[aor]
	live := make([]Binding, 0, len(all))
	for _, b := range all {
		if b.Live(now) {
			live = append(live, b)
		}
	}
	next, err := fn(clone(live))
	if err != nil {
		return nil, err
	}
	pushed := make(map[string]time.Time, len(all))
	for _, b := range all {
		pushed[b.Key()] = b.ExpiresAt
	}
	stored := make([]Binding, 0, len(next))
	keys := make(map[string]bool, len(next))
	for i := range next {
		next[i].AOR = aor
		b := next[i]
		keys[b.Key()] = true
		stored = append(stored, b)
		// One heap entry per expiry time: a refresh that keeps the expiry adds nothing.
		if at, ok := pushed[b.Key()]; !ok || !at.Equal(b.ExpiresAt) {
			heap.Push(&m.expiries, expiryEntry{at: b.ExpiresAt, aor: aor, key: b.Key()})
		}
		if b.DisplayName != "" || m.known[aor] == "" {
			m.known[aor] = b.DisplayName
		}
	}
	for _, b := range all {
		if !b.Live(now) && !keys[b.Key()] {
			stored = append(stored, b)
		}
	}
	if len(stored) == 0 {
		delete(m.aors, aor)
	} else {
		m.aors[aor] = stored
	}
	return clone(next), nil
}

// Lookup implements Store.
func (m *Memory) Lookup(_ context.Context, aor string, now time.Time) ([]Binding, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Binding
	for _, b := range m.aors[aor] {
		if b.Live(now) {
			out = append(out, b)
		}
	}
	return out, nil
}

// Expire implements Store.
func (m *Memory) Expire(_ context.Context, now time.Time, limit int) ([]Binding, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []Binding
	for m.expiries.Len() > 0 && !m.expiries[0].at.After(now) && (limit <= 0 || len(out) < limit) {
		e := heap.Pop(&m.expiries).(expiryEntry)
		bs := m.aors[e.aor]
		for i, b := range bs {
			// Only the version this entry was pushed for: a refreshed binding has a later expiry.
			if b.Key() == e.key && b.ExpiresAt.Equal(e.at) {
				out = append(out, b)
				bs = append(bs[:i:i], bs[i+1:]...)
				break
			}
		}
		if len(bs) == 0 {
			delete(m.aors, e.aor)
		} else {
			m.aors[e.aor] = bs
		}
	}
	return out, nil
}

// Known implements Store.
func (m *Memory) Known(context.Context) (map[string]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]string, len(m.known))
	for k, v := range m.known {
		out[k] = v
	}
	return out, nil
}

// AORs implements Store.
func (m *Memory) AORs(_ context.Context, now time.Time) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	for aor, bs := range m.aors {
		for _, b := range bs {
			if b.Live(now) {
				out = append(out, aor)
				break
			}
		}
	}
	sort.Strings(out)
	return out, nil
}

// UseNonce implements Store.
func (m *Memory) UseNonce(_ context.Context, nonce string, nc uint64, ttl time.Duration) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	now := time.Now()
	if now.Sub(m.swept) > time.Minute {
		m.swept = now
		for k, v := range m.nonces {
			if now.After(v.end) {
				delete(m.nonces, k)
			}
		}
	}
	if cur, ok := m.nonces[nonce]; ok && now.Before(cur.end) && nc <= cur.nc {
		return ErrReplay
	}
	m.nonces[nonce] = nonceCount{nc: nc, end: now.Add(ttl)}
	return nil
}

// Ping implements Store.
func (m *Memory) Ping(context.Context) error { return nil }

// Close implements Store.
func (m *Memory) Close() error { return nil }

func clone(bs []Binding) []Binding {
	if bs == nil {
		return nil
	}
	return append([]Binding(nil), bs...)
}
