// Package location stores SIP registrations ("bindings"): several contacts per address of
// record, each with its own expiry. Two implementations, memory and Redis, pass one
// conformance suite (storetest).
package location

import (
	"context"
	"errors"
	"time"
)

// Binding is one Contact registered for an AOR (RFC 3261 §10).
type Binding struct {
	AOR            string    `json:"aor"`        // "user@domain", lower-case domain
	Contact        string    `json:"contact"`    // Contact URI as the phone sent it, without header params
	ExpiresAt      time.Time `json:"expires_at"` // absolute expiry of the granted registration
	Granted        int       `json:"granted"`    // seconds granted at the last authenticated REGISTER
	AuthAt         time.Time `json:"auth_at"`    // when the hook last accepted this binding
	UpdatedAt      time.Time `json:"updated_at"` // last REGISTER that touched it
	CallID         string    `json:"call_id"`    // Call-ID of the REGISTER that created or refreshed it
	CSeq           uint32    `json:"cseq"`       // CSeq number of that REGISTER
	Source         string    `json:"source"`     // observed source ip:port, used for routing
	Transport      string    `json:"transport"`  // udp, tcp, tls, ws, wss (lower case)
	UserAgent      string    `json:"user_agent,omitempty"`
	InstanceID     string    `json:"instance_id,omitempty"` // +sip.instance when present
	Q              string    `json:"q,omitempty"`
	NAT            bool      `json:"nat"` // told the short NAT expiry
	DisplayName    string    `json:"display_name,omitempty"`
	CallHook       string    `json:"call_hook,omitempty"`
	CallStatusHook string    `json:"call_status_hook,omitempty"`
	WebRTC         bool      `json:"supports_webrtc,omitempty"`
}

// Key identifies the binding within its AOR: the +sip.instance when the phone sent one
// (RFC 5626 §4.2: the same device re-registering from a new address replaces itself),
// else the Contact URI.
func (b Binding) Key() string {
	if b.InstanceID != "" {
		return "instance:" + b.InstanceID
	}
	return b.Contact
}

// Live reports whether the binding has not expired at now.
func (b Binding) Live(now time.Time) bool { return now.Before(b.ExpiresAt) }

// Deferred is a Store whose UpdateCounted can finish without a goroutine waiting for it
// (Redis): UpdateCountedThen returns at once and calls then with what UpdateCounted would
// have returned, exactly once, from any goroutine (mostly the one that read the server's
// answer, so then must not wait), perhaps before it returns.
type Deferred interface {
	UpdateCountedThen(ctx context.Context, aor string, now time.Time, c Count, fn func(current []Binding) ([]Binding, error), then func([]Binding, error))
}

// Count is the digest nonce count an authenticated REGISTER carries, which UpdateCounted
// records with its write. A Count without a Nonce records nothing.
type Count struct {
	Nonce string
	NC    uint64
	TTL   time.Duration // how long the record lives: at least as long as the nonce is fresh
	// Serial is the nonce's serial number when this process made it (digest.Info), else 0:
	// where this process keeps its memory of the nonce's count (a dense array for its own
	// nonces, see nonceCounters). It is a function of the nonce, so every count of one nonce
	// must carry the same Serial; the counts are the same whatever it is.
	Serial uint32
	// Issued (unix seconds) and ID order the nonce among the others (digest.Info): the Redis
	// store keeps an AOR's counts in a window over that order (see nonceWindow). Both are
	// functions of the nonce, and no two nonces share both.
	Issued int64
	ID     uint64
}

// Errors callers branch on.
var (
	ErrReplay = errors.New("location: nonce count not increasing")
	// ErrStaleNonce: the AOR has taken counts of newer nonces since, and this store no
	// longer tells whether this one's count is new. Not a replay for sure: the phone gets
	// a fresh nonce.
	ErrStaleNonce  = errors.New("location: nonce older than the AOR's window")
	ErrUnavailable = errors.New("location: store unavailable")
)

// Store keeps bindings and the per-nonce counters of the digest replay guard.
// Every method is safe for concurrent use; Redis errors come back wrapping ErrUnavailable.
type Store interface {
	// Update runs fn on the AOR's live bindings and stores what it returns, atomically:
	// two Updates racing on one AOR never lose a binding (fn may run more than once).
	// fn owns the slice it is given: it may change it and return it (a retry gets a fresh
	// one). An error from fn aborts the update and is returned as is. The result is the
	// stored set.
	Update(ctx context.Context, aor string, now time.Time, fn func(current []Binding) ([]Binding, error)) ([]Binding, error)
	// Lookup returns the AOR's live bindings at now.
	Lookup(ctx context.Context, aor string, now time.Time) ([]Binding, error)
	// Expire removes every binding expired at now and returns them (at most limit; limit <= 0
	// means no limit), so the caller can publish "unregistered"/"offline" events. Each
	// expired binding is returned once, even to several callers sweeping at once.
	Expire(ctx context.Context, now time.Time, limit int) ([]Binding, error)
	// Known returns every AOR that has ever registered with its display name (kept after its
	// bindings expire), for presence snapshots.
	Known(ctx context.Context) (map[string]string, error)
	// AORs returns the AORs with at least one live binding at now.
	AORs(ctx context.Context, now time.Time) ([]string, error)
	// UpdateCounted is Update for an authenticated REGISTER: it also records c's nonce count
	// in the same step as the write, so the count is taken exactly when fn's bindings are
	// stored. ErrReplay, with nothing stored, when c.NC is not above the count last taken of
	// the nonce for this AOR; a store may refuse it on another AOR too (Memory does), and
	// may answer ErrStaleNonce for a nonce older than the newest few it took for the AOR
	// (Redis does). Either way one count is taken at most once per AOR; the registrar's
	// nonces belong to one AOR (digest.MakeFor), so at most once. An error from fn comes
	// first and records nothing. A zero Count is Update.
	UpdateCounted(ctx context.Context, aor string, now time.Time, c Count, fn func(current []Binding) ([]Binding, error)) ([]Binding, error)
	// Replayed reports, without asking a shared server, whether this process has seen
	// c's nonce counted at c.NC or above: a replay UpdateCounted would refuse. It answers
	// false when it cannot tell (a count another sidecar took).
	Replayed(c Count) bool
	// Recall returns the AOR's live bindings as this process last read or wrote them,
	// without asking a shared server. They may be out of date, so they serve only a
	// decision that a later Update checks again. ok is false when nothing is known of aor.
	Recall(aor string, now time.Time) (bindings []Binding, ok bool)
	// UseNonce records c.NC for c.Nonce; ErrReplay when it is not above the last one seen.
	// The record lives for c.TTL.
	UseNonce(ctx context.Context, c Count) error
	// Ping reports whether the store is reachable.
	Ping(ctx context.Context) error
	Close() error
}
