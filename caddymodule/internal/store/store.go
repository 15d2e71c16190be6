// Package store keeps the gateway's shared security state: revoked login sessions and login
// throttling counters. The memory implementation serves one process; a Redis one serves
// several behind the same interface.
package store

import (
	"context"
	"errors"
	"time"
)

// ErrUnavailable wraps every failure to reach the backing store. Callers fail closed on it.
var ErrUnavailable = errors.New("store: unavailable")

// Store is the state every token check and login consults.
type Store interface {
	// RevokeSession marks sid revoked until until (the latest expiry of its tokens).
	RevokeSession(ctx context.Context, sid string, until time.Time) error
	// SessionRevoked reports whether sid was revoked. It only reads.
	SessionRevoked(ctx context.Context, sid string) (bool, error)

	// Failures returns the failure count for key and how long its window still runs.
	Failures(ctx context.Context, key string) (int, time.Duration, error)
	// AddFailure counts one failure for key. The window starts at the first failure and
	// lasts window; the count and the time left are returned.
	AddFailure(ctx context.Context, key string, window time.Duration) (int, time.Duration, error)
	// ClearFailures forgets key's failures (after a successful login).
	ClearFailures(ctx context.Context, key string) error

	Close() error
}
