package token

import (
	"errors"
	"strings"
)

// Errors from reading a bearer credential.
var (
	ErrNoToken    = errors.New("token: none sent")
	ErrTwoTokens  = errors.New("token: more than one sent")
	ErrNotBearer  = errors.New("token: not a Bearer credential")
	ErrBadCharset = errors.New("token: characters outside b64token")
)

// FromHeader extracts the token from `Authorization: Bearer <token>` (RFC 6750 §2.1).
// The scheme is case-insensitive; the token must be one b64token with nothing after it.
func FromHeader(h string) (string, error) {
	if h == "" {
		return "", ErrNoToken
	}
	if len(h) > MaxLen+64 {
		return "", ErrMalformed
	}
	scheme, rest, ok := strings.Cut(h, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", ErrNotBearer
	}
	return checkB64Token(strings.TrimLeft(rest, " "))
}

// FromQueryValue accepts a token given in a URL query (`?authorization=…`), with or without
// a leading "Bearer ".
func FromQueryValue(v string) (string, error) {
	if v == "" {
		return "", ErrNoToken
	}
	if len(v) > MaxLen+64 {
		return "", ErrMalformed
	}
	if len(v) > 7 && strings.EqualFold(v[:7], "Bearer ") {
		v = strings.TrimLeft(v[7:], " ")
	}
	return checkB64Token(v)
}

// checkB64Token enforces RFC 6750's b64token: 1*( ALPHA / DIGIT / "-" / "." / "_" / "~" /
// "+" / "/" ) *"=". A comma or space means a second credential was appended.
func checkB64Token(t string) (string, error) {
	if t == "" {
		return "", ErrNoToken
	}
	end := len(t)
	for end > 0 && t[end-1] == '=' {
		end--
	}
	if end == 0 {
		return "", ErrBadCharset
	}
	// One table look-up per byte: this runs on every media request, over some 200 bytes.
	for i := 0; i < end; i++ {
		switch b64Class[t[i]] {
		case b64Char:
		case b64Separator:
			return "", ErrTwoTokens
		default:
			return "", ErrBadCharset
		}
	}
	return t, nil
}

// What a byte is to checkB64Token.
const (
	b64Bad       = iota // outside b64token
	b64Char             // ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/"
	b64Separator        // "," or " ": a second credential
)

var b64Class = func() (t [256]uint8) {
	for c := range 256 {
		switch {
		case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
			t[c] = b64Char
		case c == '-' || c == '.' || c == '_' || c == '~' || c == '+' || c == '/':
			t[c] = b64Char
		case c == ',' || c == ' ':
			t[c] = b64Separator
		}
	}
	return t
}()
