// Package store keeps the gateway's shared security state: revoked login sessions, users
// logged out everywhere, refresh-token families and login throttling counters. The memory
// implementation serves one process (and survives restarts through a journal in the data
// dir); the Redis one serves several gateways behind the same interface. Both pass one
// conformance suite (storetest).
//
// The Redis store answers token checks (Revoked) from a local mirror of the revocations,
// kept current by invalidations its write scripts publish. A revocation made on another
// gateway takes effect here once Redis delivers its publish (sub-millisecond on a LAN); when
// this process cannot confirm its subscription is live, it asks Redis on every check. The
// details are in redis.go's key layout and in mirror.go.
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
	// RevokeSession marks sid revoked until until (the latest expiry of its tokens). A later
	// call never shortens an earlier revocation.
	RevokeSession(ctx context.Context, sid string, until time.Time) error
	// SessionRevoked reports whether sid was revoked. It only reads.
	SessionRevoked(ctx context.Context, sid string) (bool, error)
	// RevokeUser revokes every session of user sub issued at or before at ("log out
	// everywhere"), remembered until until.
	RevokeUser(ctx context.Context, sub string, at, until time.Time) error
	// Revoked reports whether a token of session sid, user sub, issued at iat is revoked,
	// either way, in one read. A shared store may answer from a local mirror that learns
	// another gateway's revocation a moment after that gateway was told it is done.
	Revoked(ctx context.Context, sid, sub string, iat time.Time) (bool, error)
	// RevokedNow is Revoked read from the shared state itself, for a check that mints new
	// credentials (a refresh): no revocation another gateway has completed can be missed.
	RevokedNow(ctx context.Context, sid, sub string, iat time.Time) (bool, error)

	// Rotate advances refresh-token family fam (RFC 9700 §4.14) when presented is its
	// current token id: next becomes current, presented becomes the previous one. Presenting
	// the previous id again within grace of the rotation answers the same rotation (a
	// concurrent retry); presenting any other retired id revokes the family's session (fam
	// is the session id) and answers Reused. An unknown family adopts presented. The record
	// lives until until.
	Rotate(ctx context.Context, fam, presented, next string, now time.Time, grace time.Duration, until time.Time) (Rotation, error)

	// Failures returns the failure count for key and how long its window still runs.
	Failures(ctx context.Context, key string) (int, time.Duration, error)
	// AddFailure counts one failure for key. The window starts at the first failure and
	// lasts window; the count and the time left are returned.
	AddFailure(ctx context.Context, key string, window time.Duration) (int, time.Duration, error)
	// ClearFailures forgets key's failures (after a successful login).
	ClearFailures(ctx context.Context, key string) error

	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
	Close() error
}

// Outcome of a Rotate.
type Outcome int

// Rotate outcomes.
const (
	Rotated Outcome = iota + 1 // presented was current (or within grace): issue the pair for At
	Reused                     // a retired token came back: the family is revoked
)

// Rotation says what Rotate decided. For Rotated, At is the moment of the rotation, so a
// retry within the grace window re-mints exactly the same pair.
type Rotation struct {
	Outcome Outcome
	At      time.Time
}
