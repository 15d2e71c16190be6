// Package sipdigest is the HTTP Digest arithmetic of RFC 2617 / RFC 7616 as SIP uses it
// (RFC 3261 §22, RFC 8760): parsing an Authorization header and recomputing a response from
// a plain secret or a stored HA1. Both programs use it: the sidecar to read what a phone sent,
// the gateway to decide the callback.
package sipdigest

import (
	"crypto/md5"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Algorithms this package computes.
const (
	MD5    = "MD5"
	SHA256 = "SHA-256"
)

// MaxHeaderLen bounds an Authorization header before it is parsed.
const MaxHeaderLen = 4096

// Credentials are the parameters of a Digest Authorization header.
type Credentials struct {
	Username  string
	Realm     string
	Nonce     string
	URI       string
	Response  string
	Algorithm string // MD5 when absent
	CNonce    string
	QOP       string
	NC        string
	Opaque    string
}

// Errors from parsing.
var (
	ErrNotDigest = errors.New("sipdigest: not a Digest authorization")
	ErrMalformed = errors.New("sipdigest: malformed authorization")
	ErrAlgorithm = errors.New("sipdigest: unsupported algorithm")
)

// Parse reads `Digest k=v, k="v", …` (RFC 3261 §25.1 quoted-strings with backslash
// escapes). Unknown parameters are ignored; a parameter given twice, an unterminated quote,
// or a missing username/realm/nonce/uri/response is malformed; an algorithm other than MD5
// or SHA-256 (an explicitly empty one included) is ErrAlgorithm; qop, when present, must be
// "auth" with nc and cnonce.
func Parse(header string) (Credentials, error) {
	var c Credentials
	if len(header) > MaxHeaderLen {
		return c, fmt.Errorf("%w: too long", ErrMalformed)
	}
	s := strings.TrimSpace(header)
	scheme, rest := s, ""
	if i := strings.IndexAny(s, " \t\r\n"); i >= 0 {
		scheme, rest = s[:i], s[i:]
	}
	if !strings.EqualFold(scheme, "Digest") {
		return c, ErrNotDigest
	}
	var seen uint16      // the known parameters met so far, one bit each
	var unknown []string // the others, lower-cased (rare: a phone sends one or two)
	for {
		rest = strings.TrimLeft(rest, " \t\r\n,")
		if rest == "" {
			break
		}
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return c, fmt.Errorf("%w: parameter without value", ErrMalformed)
		}
		key := strings.TrimSpace(rest[:eq])
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var val string
		if strings.HasPrefix(rest, `"`) {
			var ok bool
			if val, rest, ok = quoted(rest); !ok {
				return c, fmt.Errorf("%w: unterminated quoted value", ErrMalformed)
			}
		} else {
			end := strings.IndexAny(rest, ", \t\r\n")
			if end < 0 {
				end = len(rest)
			}
			val = rest[:end]
			rest = rest[end:]
		}
		id := paramID(key)
		if id < 0 {
			key = strings.ToLower(key)
			if slices.Contains(unknown, key) {
				return c, fmt.Errorf("%w: %s given twice", ErrMalformed, key)
			}
			unknown = append(unknown, key)
			continue
		}
		if seen&(1<<id) != 0 {
			return c, fmt.Errorf("%w: %s given twice", ErrMalformed, params[id])
		}
		seen |= 1 << id
		*c.field(id) = val
	}
	if c.Username == "" || c.Realm == "" || c.Nonce == "" || c.URI == "" || c.Response == "" {
		return c, fmt.Errorf("%w: missing a required parameter", ErrMalformed)
	}
	if c.Algorithm == "" {
		if seen&(1<<paramAlgorithm) != 0 {
			return c, fmt.Errorf("%w: empty algorithm", ErrAlgorithm)
		}
		c.Algorithm = MD5
	}
	if !strings.EqualFold(c.Algorithm, MD5) && !strings.EqualFold(c.Algorithm, SHA256) {
		return c, ErrAlgorithm
	}
	if c.QOP != "" && (c.QOP != "auth" || c.NC == "" || c.CNonce == "") {
		return c, fmt.Errorf("%w: qop needs auth, nc and cnonce", ErrMalformed)
	}
	return c, nil
}

// params are the parameters Parse reads, by id; paramAlgorithm is algorithm's.
var params = [...]string{"username", "realm", "nonce", "uri", "response", "algorithm", "cnonce", "qop", "nc", "opaque"}

const paramAlgorithm = 5

// paramID is key's index in params, in any case, or -1.
func paramID(key string) int {
	for i, p := range params {
		if len(p) == len(key) && strings.EqualFold(p, key) {
			return i
		}
	}
	return -1
}

// field is where parameter id goes in c.
func (c *Credentials) field(id int) *string {
	return [...]*string{&c.Username, &c.Realm, &c.Nonce, &c.URI, &c.Response, &c.Algorithm, &c.CNonce, &c.QOP, &c.NC, &c.Opaque}[id]
}

// quoted reads the quoted-string s starts with and returns its value, unescaped, and what
// follows it; ok is false when it is never closed. A value without a backslash, the usual
// case, is a slice of s.
func quoted(s string) (val, rest string, ok bool) {
	for i := 1; i < len(s); i++ {
		switch s[i] {
		case '"':
			return s[1:i], s[i+1:], true
		case '\\':
			return quotedEscaped(s)
		}
	}
	return "", s, false
}

func quotedEscaped(s string) (val, rest string, ok bool) {
	var b strings.Builder
	for i := 1; i < len(s); i++ {
		ch := s[i]
		if ch == '\\' && i+1 < len(s) {
			i++
			b.WriteByte(s[i])
			continue
		}
		if ch == '"' {
			return b.String(), s[i+1:], true
		}
		b.WriteByte(ch)
	}
	return "", s, false
}

// h is H(parts joined by ':') in hex; an empty alg is MD5 (RFC 7616 §3.4: the default), an
// unknown one gives "", which Equal never matches. The joined input is built on the stack
// when it is small, as it is for every header a phone sends, so the only allocation is
// the hex string.
func h(alg string, parts ...string) string {
	var md5alg bool
	switch {
	case alg == "" || strings.EqualFold(alg, MD5):
		md5alg = true
	case strings.EqualFold(alg, SHA256):
	default:
		return ""
	}
	var stack [512]byte
	in := stack[:0]
	for i, p := range parts {
		if i > 0 {
			in = append(in, ':')
		}
		in = append(in, p...)
	}
	var out [2 * sha256.Size]byte
	if md5alg {
		sum := md5.Sum(in)
		hex.Encode(out[:], sum[:])
		return string(out[:2*md5.Size])
	}
	sum := sha256.Sum256(in)
	hex.Encode(out[:], sum[:])
	return string(out[:])
}

// HA1 is H(username:realm:password) for alg ("" for an unsupported alg).
func HA1(alg, username, realm, password string) string { return h(alg, username, realm, password) }

// Response computes the expected response for credentials c and request method, given HA1:
// H(HA1:nonce:nc:cnonce:qop:HA2) with qop, H(HA1:nonce:HA2) without (RFC 2069 form), where
// HA2 = H(method:uri). It is "" when c.Algorithm is not supported.
func Response(c Credentials, method, ha1 string) string {
	ha2 := h(c.Algorithm, method, c.URI)
	if c.QOP == "" {
		return h(c.Algorithm, ha1, c.Nonce, ha2)
	}
	return h(c.Algorithm, ha1, c.Nonce, c.NC, c.CNonce, c.QOP, ha2)
}

// Equal compares two hex responses in constant time (case-insensitive hex). An empty
// response equals nothing: a response computed for an unsupported algorithm is "", and ""
// must never match a phone's empty response.
// The time it takes depends on the lengths (public: the algorithm's) and not on where the
// strings differ; it allocates nothing.
func Equal(a, b string) bool {
	if a == "" || len(a) != len(b) {
		return false
	}
	var diff byte
	for i := 0; i < len(a); i++ {
		diff |= foldASCII(a[i]) ^ foldASCII(b[i])
	}
	return subtle.ConstantTimeByteEq(diff, 0) == 1
}

// foldASCII lowers an ASCII capital letter without a branch: c-'A' is below 26 only for
// 'A'..'Z' (for c < 'A' it wraps to near 2^32), and subtracting 26 in 64 bits then borrows
// into the top bit, which becomes the 0x20 bit.
func foldASCII(c byte) byte {
	x := uint64(uint32(c) - 'A')
	return c | byte((x-26)>>63)<<5
}
