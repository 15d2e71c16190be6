package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"hash"
	"strings"
	"time"
)

// The two header encodings HS256 tokens come with: ours (and golang-jwt's) and the PHP
// module's (firebase/php-jwt writes typ first). A token whose header is byte for byte one of
// these needs no header parsing: its algorithm is known to be HS256.
const (
	headerOurs = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9" // {"alg":"HS256","typ":"JWT"}
	headerPHP  = "eyJ0eXAiOiJKV1QiLCJhbGciOiJIUzI1NiJ9" // {"typ":"JWT","alg":"HS256"}
)

var strictB64 = base64.RawURLEncoding.Strict()

// fastVerify checks a token with one of the known HS256 headers without golang-jwt's generic
// parser (which decodes the header into a map): the same checks in the same order — strict
// base64 and the claims' JSON, the HS256 signature (HMAC-SHA256 from a pool of keyed
// hashes, compared in constant time), then exp required and not passed, iat not in the future, both
// with the leeway, then the claims' own Validate. ok is false when the token is not of that shape; the caller then runs the full
// parser, which is also what decides every malformed or foreign token.
func (i *Issuer) fastVerify(raw string) (c *Claims, err error, ok bool) {
	h, rest, found := strings.Cut(raw, ".")
	if !found || (h != headerOurs && h != headerPHP) {
		return nil, nil, false
	}
	p, s, found := strings.Cut(rest, ".")
	if !found || strings.IndexByte(s, '.') >= 0 {
		return nil, nil, false
	}
	// golang-jwt's order: the claims are decoded (a bad one is malformed) before the
	// signature is checked. Anything odd goes to the full parser, which names it.
	payload, err := strictB64.DecodeString(p)
	if err != nil {
		return nil, nil, false
	}
	c = new(Claims)
	if err := decodeClaims(payload, c); err != nil {
		return nil, nil, false
	}
	sig, err := strictB64.DecodeString(s)
	if err != nil {
		return nil, nil, false
	}
	if !i.validMAC(raw[:len(h)+1+len(p)], sig) {
		return nil, ErrInvalid, true
	}
	now := i.now()
	switch {
	case c.ExpiresAt == 0:
		return nil, ErrInvalid, true
	case !now.Before(time.Unix(c.ExpiresAt, 0).Add(i.leeway)):
		return nil, ErrExpired, true
	case c.IssuedAt != 0 && now.Before(time.Unix(c.IssuedAt, 0).Add(-i.leeway)):
		return nil, ErrInvalid, true
	case c.Validate() != nil:
		return nil, ErrInvalid, true
	}
	return c, nil, true
}

// validMAC checks an HS256 signature with a keyed HMAC taken from the issuer's pool.
func (i *Issuer) validMAC(signingInput string, sig []byte) bool {
	mac := i.macs.Get().(hash.Hash)
	mac.Reset()
	mac.Write([]byte(signingInput))
	var sum [sha256.Size]byte
	ok := hmac.Equal(mac.Sum(sum[:0]), sig)
	i.macs.Put(mac)
	return ok
}
