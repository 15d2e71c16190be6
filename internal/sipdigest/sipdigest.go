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
	"hash"
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
	seen := make(map[string]bool, 10)
	for {
		rest = strings.TrimLeft(rest, " \t\r\n,")
		if rest == "" {
			break
		}
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return c, fmt.Errorf("%w: parameter without value", ErrMalformed)
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var val string
		if strings.HasPrefix(rest, `"`) {
			end := -1
			var b strings.Builder
			for i := 1; i < len(rest); i++ {
				ch := rest[i]
				if ch == '\\' && i+1 < len(rest) {
					i++
					b.WriteByte(rest[i])
					continue
				}
				if ch == '"' {
					end = i
					break
				}
				b.WriteByte(ch)
			}
			if end < 0 {
				return c, fmt.Errorf("%w: unterminated quoted value", ErrMalformed)
			}
			val = b.String()
			rest = rest[end+1:]
		} else {
			end := strings.IndexAny(rest, ", \t\r\n")
			if end < 0 {
				end = len(rest)
			}
			val = rest[:end]
			rest = rest[end:]
		}
		if seen[key] {
			return c, fmt.Errorf("%w: %s given twice", ErrMalformed, key)
		}
		seen[key] = true
		switch key {
		case "username":
			c.Username = val
		case "realm":
			c.Realm = val
		case "nonce":
			c.Nonce = val
		case "uri":
			c.URI = val
		case "response":
			c.Response = val
		case "algorithm":
			c.Algorithm = val
		case "cnonce":
			c.CNonce = val
		case "qop":
			c.QOP = val
		case "nc":
			c.NC = val
		case "opaque":
			c.Opaque = val
		}
	}
	if c.Username == "" || c.Realm == "" || c.Nonce == "" || c.URI == "" || c.Response == "" {
		return c, fmt.Errorf("%w: missing a required parameter", ErrMalformed)
	}
	if c.Algorithm == "" {
		if seen["algorithm"] {
			return c, fmt.Errorf("%w: empty algorithm", ErrAlgorithm)
		}
		c.Algorithm = MD5
	}
	if _, err := newHash(c.Algorithm); err != nil {
		return c, err
	}
	if c.QOP != "" && (c.QOP != "auth" || c.NC == "" || c.CNonce == "") {
		return c, fmt.Errorf("%w: qop needs auth, nc and cnonce", ErrMalformed)
	}
	return c, nil
}

func newHash(alg string) (hash.Hash, error) {
	switch {
	case strings.EqualFold(alg, MD5):
		return md5.New(), nil
	case strings.EqualFold(alg, SHA256):
		return sha256.New(), nil
	}
	return nil, ErrAlgorithm
}

// h is H(parts joined by ':') in hex; an empty alg is MD5 (RFC 7616 §3.4: the default), an
// unknown one gives "", which Equal never matches.
func h(alg string, parts ...string) string {
	if alg == "" {
		alg = MD5
	}
	hh, err := newHash(alg)
	if err != nil {
		return ""
	}
	for i, p := range parts {
		if i > 0 {
			hh.Write([]byte{':'})
		}
		hh.Write([]byte(p))
	}
	return hex.EncodeToString(hh.Sum(nil))
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
func Equal(a, b string) bool {
	if a == "" || b == "" {
		return false
	}
	return subtle.ConstantTimeCompare([]byte(strings.ToLower(a)), []byte(strings.ToLower(b))) == 1
}
