// Package digest makes and checks the registrar's digest challenges (RFC 7616, RFC 8760):
// HMAC-signed, time-bound nonces, each for one scope (the AOR it challenges), so any sidecar
// sharing the secret can check a nonce another one issued, and no nonce table is needed —
// only the nc counts, kept in the location store.
package digest

import (
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"hash"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Errors from Check.
var (
	ErrStale   = errors.New("digest: stale nonce")
	ErrInvalid = errors.New("digest: invalid nonce")
)

// nonce layout before base64url: 8 bytes issue time (unix seconds, big endian), 4 bytes of
// the issuing Nonces' instance tag and 4 of its serial number (see Serial), 4 random bytes,
// then 16 bytes of HMAC-SHA256(secret, the 20 before). The MAC makes the whole nonce
// unpredictable to anyone without the secret; tag and serial make it unique, the random
// bytes only add to that.
const (
	nonceRaw  = 8 + 12 + 16
	nonceLen  = (nonceRaw*8 + 5) / 6 // base64url without padding
	clockSkew = 5 * time.Second      // a nonce from a sidecar whose clock runs slightly ahead
)

// strict is the nonce encoding for decoding: one encoding, one nonce (Strict allocates its
// copy on every call).
var strict = base64.RawURLEncoding.Strict()

// Nonces issues and checks nonces under one secret.
type Nonces struct {
	secret []byte
	ttl    time.Duration
	now    func() time.Time
	macs   sync.Pool // of *keyedMAC

	tag    uint32        // random per Nonces: which nonces are this one's own
	serial atomic.Uint32 // the last serial given out
}

// NewNonces returns a nonce maker; ttl is how long a nonce is fresh (then stale), now may be
// nil (time.Now). An empty secret is replaced by a random one: nonces then only verify in
// this process, never under a guessable key.
func NewNonces(secret []byte, ttl time.Duration, now func() time.Time) *Nonces {
	if now == nil {
		now = time.Now
	}
	if len(secret) == 0 {
		secret = make([]byte, 32)
		rand.Read(secret)
	}
	var tag [4]byte
	rand.Read(tag[:])
	return &Nonces{secret: append([]byte(nil), secret...), ttl: ttl, now: now, tag: binary.BigEndian.Uint32(tag[:])}
}

// TTL is how long a nonce stays fresh.
func (n *Nonces) TTL() time.Duration { return n.ttl }

// mac is the first 16 bytes of HMAC-SHA256(secret, body || scope), body at most 20 bytes.
// Keyed HMACs are pooled: a new one hashes the key's pads again and allocates for every
// nonce made or checked.
func (n *Nonces) mac(out *[16]byte, body []byte, scope string) {
	m, _ := n.macs.Get().(*keyedMAC)
	if m == nil {
		m = &keyedMAC{h: hmac.New(sha256.New, n.secret)}
	}
	m.h.Reset()
	m.in = append(append(m.in[:0], body...), scope...)
	m.h.Write(m.in)
	copy(out[:], m.h.Sum(m.sum[:0]))
	if cap(m.in) <= maxScope+20 { // an oversized scope's buffer is not kept
		n.macs.Put(m)
	}
}

// maxScope is the longest scope a pooled MAC keeps room for (an AOR is seldom longer).
const maxScope = 256

// keyedMAC is a pooled HMAC with room for its sum and its input, which would escape to the
// heap through the hash.Hash interface if they were on the caller's stack.
type keyedMAC struct {
	h   hash.Hash
	sum [sha256.Size]byte
	in  []byte // what is hashed, copied here for the same reason
}

// Make returns a fresh nonce of token-safe characters, for no particular scope.
func (n *Nonces) Make() string { return n.MakeFor("") }

// MakeFor returns a fresh nonce of token-safe characters that checks only for scope: the
// registrar makes a challenge's nonce for the AOR it challenges, so that a nonce, and a
// nonce count taken on it, belongs to one AOR (the Redis store keeps each AOR's counts in
// the AOR's own hash).
func (n *Nonces) MakeFor(scope string) string {
	var raw [nonceRaw]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(n.now().Unix()))
	binary.BigEndian.PutUint32(raw[8:12], n.tag)
	s := n.serial.Add(1)
	if s == 0 { // 0 is Serial's "not ours": skipped when the counter wraps
		s = n.serial.Add(1)
	}
	binary.BigEndian.PutUint32(raw[12:16], s)
	if _, err := rand.Read(raw[16:20]); err != nil {
		panic("crypto/rand failed: " + err.Error())
	}
	n.mac((*[16]byte)(raw[20:]), raw[:20], scope)
	var out [nonceLen]byte
	base64.RawURLEncoding.Encode(out[:], raw[:])
	return string(out[:]) // the one allocation: EncodeToString makes two
}

// Check verifies that nonce was made under this secret, for no particular scope, and is
// fresh. It returns nil, ErrStale for a genuine nonce (the MAC matches) issued more than TTL
// ago or too far in the future (another sidecar's clock is off: a fresh challenge with
// stale=true lets the phone retry at once), or ErrInvalid for anything else, oversized input
// included.
func (n *Nonces) Check(nonce string) error {
	_, err := n.Inspect(nonce, "")
	return err
}

// Info is what a nonce that checks tells of itself.
type Info struct {
	// Issued (unix seconds) and ID (the issuing Nonces' tag, then its serial) order nonces:
	// by Issued, then by ID. No two nonces share both.
	Issued int64
	ID     uint64
	// Serial is the nonce's serial when this Nonces made it: a number above zero, counting
	// up from 1 in the order the nonces were made, so the nonces in use at one time have
	// serials close together (and 2³² of them wrap around only after days at any rate a
	// sidecar takes). It is 0 for a nonce made by another Nonces under the same secret
	// (another sidecar, or this one before a restart).
	Serial uint32
}

// Inspect is Check for a nonce made by MakeFor(scope); it also returns what the nonce tells
// of itself (the zero Info when it refuses the nonce). A nonce made for another scope is
// ErrInvalid.
func (n *Nonces) Inspect(nonce, scope string) (Info, error) {
	if len(nonce) != nonceLen {
		return Info{}, ErrInvalid
	}
	var src [nonceLen]byte // on the stack, as raw is: a check allocates nothing
	copy(src[:], nonce)
	var raw [nonceRaw + 2]byte // Decode may write a partial group's bytes past nonceRaw
	if k, err := strict.Decode(raw[:], src[:]); err != nil || k != nonceRaw {
		return Info{}, ErrInvalid
	}
	var want [16]byte
	n.mac(&want, raw[:20], scope)
	if !hmac.Equal(raw[20:nonceRaw], want[:]) {
		return Info{}, ErrInvalid
	}
	issued := int64(binary.BigEndian.Uint64(raw[:8]))
	now := n.now()
	if t := time.Unix(issued, 0); t.After(now.Add(clockSkew)) || now.Sub(t) > n.ttl {
		return Info{}, ErrStale
	}
	info := Info{Issued: issued, ID: binary.BigEndian.Uint64(raw[8:16])}
	if binary.BigEndian.Uint32(raw[8:12]) == n.tag {
		info.Serial = binary.BigEndian.Uint32(raw[12:16])
	}
	return info, nil
}

// AppendChallenge appends a WWW-Authenticate value offering algorithm with qop=auth (RFC
// 7616 §3.3, RFC 8760 §2.4): `Digest realm="…", nonce="…", algorithm=SHA-256, qop="auth"`, plus
// `, stale=true` when stale. realm and nonce are escaped as quoted-strings (control
// characters dropped); algorithm is written in its canonical form, and anything that is
// not a token loses its non-token characters, so no input can add a parameter or a header.
func AppendChallenge(b []byte, realm, nonce, algorithm string, stale bool) []byte {
	b = append(b, `Digest realm="`...)
	b = appendQuoted(b, realm)
	b = append(b, `", nonce="`...)
	b = appendQuoted(b, nonce)
	b = append(b, `", algorithm=`...)
	b = appendToken(b, algorithm)
	b = append(b, `, qop="auth"`...)
	if stale {
		b = append(b, ", stale=true"...)
	}
	return b
}

// appendQuoted appends a quoted-string's content (RFC 3261 §25.1): '"' and '\\' escaped,
// control characters (CR and LF above all) dropped.
func appendQuoted(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '"' || c == '\\':
			b = append(b, '\\', c)
		case c < 0x20 || c == 0x7f:
		default:
			b = append(b, c)
		}
	}
	return b
}

// appendToken appends MD5 and SHA-256 canonically and keeps only token characters of
// anything else (RFC 3261 §25.1 token).
func appendToken(b []byte, s string) []byte {
	switch {
	case strings.EqualFold(s, "MD5"):
		return append(b, "MD5"...)
	case strings.EqualFold(s, "SHA-256"):
		return append(b, "SHA-256"...)
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-.!%*_+`'~", c) >= 0 {
			b = append(b, c)
		}
	}
	return b
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
