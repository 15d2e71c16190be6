package token

import (
	"encoding/json"
	"strconv"
	"strings"
)

// decodeClaims reads a claims object. The common shape — a flat object of plain strings and
// integers — is read by hand (encoding/json's reflection was 70% of a first verify); anything
// else (escapes, fractions, nested values, null) goes to encoding/json, so the result is
// always what encoding/json would produce. FuzzDecodeClaims holds the two to each other.
func decodeClaims(b []byte, c *Claims) error {
	if fastDecodeClaims(b, c) {
		return nil
	}
	*c = Claims{}
	return json.Unmarshal(b, c)
}

// fastDecodeClaims reports false (leaving c partly written) when b is not of the plain shape.
func fastDecodeClaims(b []byte, c *Claims) bool {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return false
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return skipSpace(b, i+1) == len(b)
	}
	for {
		key, j, ok := plainString(b, i)
		if !ok || foldsToField(key) {
			return false
		}
		i = skipSpace(b, j)
		if i >= len(b) || b[i] != ':' {
			return false
		}
		i = skipSpace(b, i+1)
		if i >= len(b) {
			return false
		}
		if b[i] == '"' {
			s, j, ok := plainString(b, i)
			if !ok {
				return false
			}
			switch key {
			case "sub":
				c.Subject = UserID(s)
			case "username":
				c.Username = s
			case "role":
				c.Role = s
			case "type":
				c.Type = Type(s)
			case "jti":
				c.ID = s
			case "sid":
				c.Session = s
			case "iat", "exp":
				return false // a string where a number belongs: let encoding/json refuse it
			}
			i = j
		} else {
			j := i
			if j < len(b) && b[j] == '-' {
				j++
			}
			start := j
			for j < len(b) && b[j] >= '0' && b[j] <= '9' {
				j++
			}
			if j == start || j-start > 18 || (b[start] == '0' && j-start > 1) {
				return false // not a plain integer (or a JSON-invalid leading zero)
			}
			if j < len(b) && (b[j] == '.' || b[j] == 'e' || b[j] == 'E') {
				return false
			}
			n, err := strconv.ParseInt(string(b[i:j]), 10, 64)
			if err != nil {
				return false
			}
			switch key {
			case "iat":
				c.IssuedAt = n
			case "exp":
				c.ExpiresAt = n
			case "sub":
				c.Subject = UserID(b[i:j])
			case "username", "role", "type", "jti", "sid":
				return false
			}
			i = j
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return false
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return skipSpace(b, i+1) == len(b)
		default:
			return false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// plainString reads a JSON string without escapes or control characters starting at b[i].
func plainString(b []byte, i int) (string, int, bool) {
	if i >= len(b) || b[i] != '"' {
		return "", 0, false
	}
	for j := i + 1; j < len(b); j++ {
		switch c := b[j]; {
		case c == '"':
			return string(b[i+1 : j]), j + 1, true
		case c == '\\' || c < 0x20 || c >= 0x80:
			return "", 0, false // escapes and non-ASCII: encoding/json's rules apply
		}
	}
	return "", 0, false
}

var claimKeys = [...]string{"sub", "username", "role", "iat", "exp", "type", "jti", "sid"}

// foldsToField reports a key that is not one of ours exactly but that encoding/json would
// still match to a field (it matches names case-insensitively).
func foldsToField(key string) bool {
	for _, k := range claimKeys {
		if key != k && strings.EqualFold(key, k) {
			return true
		}
	}
	return false
}
