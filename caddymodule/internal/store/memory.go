package store

import (
	"context"
	"sync"
	"time"
)

// Memory is the in-process Store. With a journal (OpenMemory) revocations and families
// survive a restart; throttling counters are deliberately not kept.
type Memory struct {
	now     func() time.Time
	journal *journal // nil: nothing persisted

	mu        sync.RWMutex
	revoked   map[string]time.Time // sid → until
	users     map[string]userMark  // sub → logged out everywhere at
	families  map[string]family
	failures  map[string]window
	lastSweep time.Time
}

type userMark struct {
	at, until time.Time
}

type family struct {
	cur, prev string
	at        time.Time // last rotation
	until     time.Time
}

type window struct {
	count int
	end   time.Time
}

// sweepEvery is how often writes prune expired entries, keeping memory bounded by the
// number of live revocations, families and windows.
const sweepEvery = time.Minute

// NewMemory returns an empty store that persists nothing; now may be nil (time.Now).
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{
		now:      now,
		revoked:  map[string]time.Time{},
		users:    map[string]userMark{},
		families: map[string]family{},
		failures: map[string]window{},
	}
}

// RevokeSession implements Store.
func (m *Memory) RevokeSession(_ context.Context, sid string, until time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked()
	if !until.After(m.revoked[sid]) {
		return nil
	}
	if err := m.journal.write(record{Op: opRevoke, Key: sid, Until: until.UnixMilli()}); err != nil {
		return err
	}
	m.revoked[sid] = until
	return nil
}

// SessionRevoked implements Store.
func (m *Memory) SessionRevoked(_ context.Context, sid string) (bool, error) {
	m.mu.RLock()
	until, ok := m.revoked[sid]
	m.mu.RUnlock()
	return ok && m.now().Before(until), nil
}

// RevokeUser implements Store.
func (m *Memory) RevokeUser(_ context.Context, sub string, at, until time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked()
	cur := m.users[sub]
	if !at.After(cur.at) && !until.After(cur.until) {
		return nil
	}
	next := userMark{at: maxTime(at, cur.at), until: maxTime(until, cur.until)}
	if err := m.journal.write(record{Op: opUser, Key: sub, At: next.at.UnixMilli(), Until: next.until.UnixMilli()}); err != nil {
		return err
	}
	m.users[sub] = next
	return nil
}

// Revoked implements Store.
func (m *Memory) Revoked(_ context.Context, sid, sub string, iat time.Time) (bool, error) {
	now := m.now()
	m.mu.RLock()
	until, ok := m.revoked[sid]
	u, uok := m.users[sub]
	m.mu.RUnlock()
	if ok && now.Before(until) {
		return true, nil
	}
	return uok && now.Before(u.until) && !iat.After(u.at), nil
}

// RevokedNow implements Store: the memory store has no other copy to be behind.
func (m *Memory) RevokedNow(ctx context.Context, sid, sub string, iat time.Time) (bool, error) {
	return m.Revoked(ctx, sid, sub, iat)
}

// Rotate implements Store.
func (m *Memory) Rotate(_ context.Context, fam, presented, next string, now time.Time, grace time.Duration, until time.Time) (Rotation, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked()
	f, ok := m.families[fam]
	if ok && !now.Before(f.until) {
		ok = false
	}
	switch {
	case !ok || presented == f.cur:
		nf := family{cur: next, prev: presented, at: now, until: until}
		if err := m.journal.write(record{Op: opFamily, Key: fam, Cur: nf.cur, Prev: nf.prev, At: now.UnixMilli(), Until: until.UnixMilli()}); err != nil {
			return Rotation{}, err
		}
		m.families[fam] = nf
		return Rotation{Outcome: Rotated, At: now}, nil
	case presented == f.prev && now.Sub(f.at) <= grace:
		return Rotation{Outcome: Rotated, At: f.at}, nil
	default:
		// Reuse of a retired refresh token: someone holds a copy. Kill the session.
		revokeUntil := maxTime(until, f.until)
		if revokeUntil.After(m.revoked[fam]) {
			if err := m.journal.write(record{Op: opRevoke, Key: fam, Until: revokeUntil.UnixMilli()}); err != nil {
				return Rotation{}, err
			}
			m.revoked[fam] = revokeUntil
		}
		return Rotation{Outcome: Reused}, nil
	}
}

// Failures implements Store.
func (m *Memory) Failures(_ context.Context, key string) (int, time.Duration, error) {
	m.mu.RLock()
	w, ok := m.failures[key]
	m.mu.RUnlock()
	now := m.now()
	if !ok || !now.Before(w.end) {
		return 0, 0, nil
	}
	return w.count, w.end.Sub(now), nil
}

// AddFailure implements Store.
func (m *Memory) AddFailure(_ context.Context, key string, d time.Duration) (int, time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked()
	now := m.now()
	w := m.failures[key]
	if !now.Before(w.end) {
		w = window{end: now.Add(d)}
	}
	w.count++
	m.failures[key] = w
	return w.count, w.end.Sub(now), nil
}

// ClearFailures implements Store.
func (m *Memory) ClearFailures(_ context.Context, key string) error {
	m.mu.Lock()
	delete(m.failures, key)
	m.mu.Unlock()
	return nil
}

// Ping implements Store.
func (m *Memory) Ping(context.Context) error { return nil }

// Close implements Store.
func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	err := m.journal.close()
	m.journal = nil
	return err
}

func (m *Memory) sweepLocked() {
	now := m.now()
	if now.Sub(m.lastSweep) < sweepEvery {
		return
	}
	m.lastSweep = now
	for k, until := range m.revoked {
		if !now.Before(until) {
			delete(m.revoked, k)
		}
	}
	for k, u := range m.users {
		if !now.Before(u.until) {
			delete(m.users, k)
		}
	}
	for k, f := range m.families {
		if !now.Before(f.until) {
			delete(m.families, k)
		}
	}
	for k, w := range m.failures {
		if !now.Before(w.end) {
			delete(m.failures, k)
		}
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
