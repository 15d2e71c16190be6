// Package digest makes and checks the registrar's digest challenges (RFC 7616, RFC 8760):
// HMAC-signed, time-bound nonces, so any sidecar sharing the secret can check a nonce another
// one issued, and no nonce table is needed — only the per-nonce nc counter, kept in the
// location store.
package digest

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strconv"
	"strings"
	"time"
)

// Errors from Check.
var (
	ErrStale   = errors.New("digest: stale nonce")
	ErrInvalid = errors.New("digest: invalid nonce")
)

// nonce layout before base64url: 8 bytes issue time (unix seconds, big endian), 12 random
// bytes, 16 bytes of HMAC-SHA256(secret, time|random).
const (
	nonceRaw  = 8 + 12 + 16
	nonceLen  = (nonceRaw*8 + 5) / 6 // base64url without padding
	clockSkew = 5 * time.Second      // a nonce from a sidecar whose clock runs slightly ahead
)

// Nonces issues and checks nonces under one secret.
type Nonces struct {
	secret []byte
	ttl    time.Duration
	now    func() time.Time
}

// NewNonces returns a nonce maker; ttl is how long a nonce is fresh (then stale), now may be
// nil (time.Now).
func NewNonces(secret []byte, ttl time.Duration, now func() time.Time) *Nonces {
	if now == nil {
		now = time.Now
	}
	return &Nonces{secret: append([]byte(nil), secret...), ttl: ttl, now: now}
}

// TTL is how long a nonce stays fresh.
func (n *Nonces) TTL() time.Duration { return n.ttl }

func (n *Nonces) mac(body []byte) []byte {
	m := hmac.New(sha256.New, n.secret)
	m.Write(body)
	return m.Sum(nil)[:16]
}

// Make returns a fresh nonce of token-safe characters.
func (n *Nonces) Make() string {
	var raw [nonceRaw]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(n.now().Unix()))
	if _, err := rand.Read(raw[8:20]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	copy(raw[20:], n.mac(raw[:20]))
	return base64.RawURLEncoding.EncodeToString(raw[:])
}

// Check verifies that nonce was made here (under this secret) and is still fresh: nil, or
// ErrStale for a genuine nonce past its TTL, or ErrInvalid for anything else.
func (n *Nonces) Check(nonce string) error {
	if len(nonce) != nonceLen {
		return ErrInvalid
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(nonce)
	if err != nil || len(raw) != nonceRaw {
		return ErrInvalid
	}
	if !hmac.Equal(raw[20:], n.mac(raw[:20])) {
		return ErrInvalid
	}
	issued := time.Unix(int64(binary.BigEndian.Uint64(raw[:8])), 0)
	now := n.now()
	switch {
	case issued.After(now.Add(clockSkew)):
		return ErrInvalid
	case now.Sub(issued) > n.ttl:
		return ErrStale
	}
	return nil
}

// Challenge is a WWW-Authenticate value offering algorithm with qop=auth.
func Challenge(realm, nonce, algorithm string, stale bool) string {
	var b strings.Builder
	b.WriteString(`Digest realm="`)
	b.WriteString(quote(realm))
	b.WriteString(`", nonce="`)
	b.WriteString(quote(nonce))
	b.WriteString(`", algorithm=`)
	b.WriteString(algorithm)
	b.WriteString(`, qop="auth"`)
	if stale {
		b.WriteString(", stale=true")
	}
	return b.String()
}

// quote escapes a quoted-string's content (RFC 3261 §25.1).
func quote(s string) string {
	if !strings.ContainsAny(s, "\"\\\r\n") {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		switch r {
		case '"', '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case '\r', '\n':
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}

// ParseNC reads a nonce count: exactly 8 hex digits (RFC 7616 §3.4).
func ParseNC(s string) (uint64, error) {
	if len(s) != 8 {
		return 0, ErrInvalid
	}
	v, err := strconv.ParseUint(s, 16, 32)
	if err != nil {
		return 0, ErrInvalid
	}
	return v, nil
}
