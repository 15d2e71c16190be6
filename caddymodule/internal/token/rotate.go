package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"time"
)

// DeriveID makes a token id from another, deterministically under the signing key: the
// refresh rotation mints the pair that follows a refresh token from these, so a retry of
// that token inside the grace window receives exactly the same pair.
func (i *Issuer) DeriveID(label, from string) string {
	mac := hmac.New(sha256.New, i.key)
	mac.Write([]byte(label))
	mac.Write([]byte{0})
	mac.Write([]byte(from))
	return base64.RawURLEncoding.EncodeToString(mac.Sum(nil)[:16])
}

// IssueAt mints a token with a given id and issue time (see DeriveID).
func (i *Issuer) IssueAt(id Identity, typ Type, sid, jti string, at time.Time) (string, Claims, error) {
	c := i.claims(id, typ, sid, at)
	c.ID = jti
	s, err := i.Sign(&c)
	return s, c, err
}

// PresentedID names a token for rotation: its jti, or for a PHP-minted token (which has
// none) a digest of its signature.
func (i *Issuer) PresentedID(c *Claims, raw string) string {
	if c.ID != "" {
		return c.ID
	}
	return i.DeriveID("legacy", raw)
}
