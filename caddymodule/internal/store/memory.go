package store

import (
	"context"
	"sync"
	"time"
)

// Memory is the in-process Store.
type Memory struct {
	now func() time.Time

	mu        sync.RWMutex
	revoked   map[string]time.Time // sid → until
	failures  map[string]window
	lastSweep time.Time
}

type window struct {
	count int
	end   time.Time
}

// sweepEvery is how often writes prune expired entries, keeping memory bounded by the
// number of live revocations and windows.
const sweepEvery = time.Minute

// NewMemory returns an empty store; now may be nil (time.Now).
func NewMemory(now func() time.Time) *Memory {
	if now == nil {
		now = time.Now
	}
	return &Memory{now: now, revoked: map[string]time.Time{}, failures: map[string]window{}}
}

// RevokeSession implements Store.
func (m *Memory) RevokeSession(_ context.Context, sid string, until time.Time) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.sweepLocked()
	if until.After(m.revoked[sid]) {
		m.revoked[sid] = until
	}
	return nil
}

// SessionRevoked implements Store.
func (m *Memory) SessionRevoked(_ context.Context, sid string) (bool, error) {
	m.mu.RLock()
	until, ok := m.revoked[sid]
	m.mu.RUnlock()
	return ok && m.now().Before(until), nil
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

// Close implements Store.
func (m *Memory) Close() error { return nil }

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
	for k, w := range m.failures {
		if !now.Before(w.end) {
			delete(m.failures, k)
		}
	}
}
