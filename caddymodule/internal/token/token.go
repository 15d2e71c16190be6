// Package token issues and verifies the softphone JWTs: HS256 only, the claims of MikoPBX's
// ModuleSoftphoneBackend (sub, username, role, iat, exp, type) plus jti and sid (the login
// session, which logout revokes). Tokens the PHP module minted with the same key verify here.
package token

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// Type is the token's purpose: an access token is never accepted where a refresh token is
// required, and the reverse.
type Type string

// Token types, as the PHP module spells them.
const (
	Access  Type = "access"
	Refresh Type = "refresh"
)

// MaxLen bounds a token before any parsing: ours are about 400 bytes.
const MaxLen = 2048

// Errors Verify returns; callers branch on them with errors.Is.
var (
	ErrMalformed = errors.New("token: malformed")
	ErrInvalid   = errors.New("token: invalid signature or claims")
	ErrExpired   = errors.New("token: expired")
	ErrWrongType = errors.New("token: wrong type")
)

// UserID is the `sub` claim. The PHP module writes the numeric user id as a JSON number;
// the JWT spec wants a string. Both decode; ours is written as a number when it is one.
type UserID string

// MarshalJSON writes digits as a JSON number, anything else as a string.
func (u UserID) MarshalJSON() ([]byte, error) {
	if _, err := strconv.ParseInt(string(u), 10, 64); err == nil {
		return []byte(u), nil
	}
	return json.Marshal(string(u))
}

// UnmarshalJSON accepts a JSON integer or string.
func (u *UserID) UnmarshalJSON(b []byte) error {
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*u = UserID(s)
		return nil
	}
	if _, err := strconv.ParseInt(string(b), 10, 64); err != nil {
		return fmt.Errorf("sub is neither an integer nor a string")
	}
	*u = UserID(b)
	return nil
}

// Claims is the token payload.
type Claims struct {
	Subject   UserID `json:"sub"`
	Username  string `json:"username"`
	Role      string `json:"role"`
	IssuedAt  int64  `json:"iat"`
	ExpiresAt int64  `json:"exp"`
	Type      Type   `json:"type"`
	ID        string `json:"jti,omitempty"`
	Session   string `json:"sid,omitempty"`
}

// SessionID is the login session the token belongs to. Tokens from the PHP module carry no
// sid; its access and refresh tokens of one login share sub and iat, so those two stand in
// for it and logout still revokes both.
func (c *Claims) SessionID() string {
	if c.Session != "" {
		return c.Session
	}
	return "legacy:" + string(c.Subject) + ":" + strconv.FormatInt(c.IssuedAt, 10)
}

// Expiry is exp as a time.
func (c *Claims) Expiry() time.Time { return time.Unix(c.ExpiresAt, 0) }

// The jwt.Claims methods; only exp and iat exist in our tokens.
func (c *Claims) GetExpirationTime() (*jwt.NumericDate, error) {
	if c.ExpiresAt == 0 {
		return nil, nil
	}
	return jwt.NewNumericDate(time.Unix(c.ExpiresAt, 0)), nil
}
func (c *Claims) GetIssuedAt() (*jwt.NumericDate, error) {
	if c.IssuedAt == 0 {
		return nil, nil
	}
	return jwt.NewNumericDate(time.Unix(c.IssuedAt, 0)), nil
}
func (c *Claims) GetNotBefore() (*jwt.NumericDate, error) { return nil, nil }
func (c *Claims) GetIssuer() (string, error)              { return "", nil }
func (c *Claims) GetSubject() (string, error)             { return string(c.Subject), nil }
func (c *Claims) GetAudience() (jwt.ClaimStrings, error)  { return nil, nil }

// Validate is called by the jwt parser after the standard checks.
func (c *Claims) Validate() error {
	if c.Subject == "" || c.Username == "" {
		return errors.New("sub and username are required")
	}
	if c.Type != Access && c.Type != Refresh {
		return errors.New("unknown token type")
	}
	return nil
}

// Identity is what a token says about its holder.
type Identity struct {
	UserID   string
	Username string
	Role     string
}

// Pair is what a login returns.
type Pair struct {
	Access, Refresh             string
	AccessClaims, RefreshClaims Claims
}

// Issuer mints and verifies tokens with one key.
type Issuer struct {
	key        []byte
	accessTTL  time.Duration
	refreshTTL time.Duration
	now        func() time.Time
	leeway     time.Duration
	parser     *jwt.Parser
	cache      *verifiedCache
	macs       sync.Pool // keyed HMAC-SHA256 hashes for fastVerify
}

// Options for NewIssuer; zero values take the PHP module's defaults.
type Options struct {
	AccessTTL  time.Duration    // default 3600 s
	RefreshTTL time.Duration    // default 30 days
	Leeway     time.Duration    // clock skew allowed on exp/iat; default 0
	Now        func() time.Time // default time.Now
}

// NewIssuer returns an Issuer for key (the trimmed text of secret.key, used as bytes).
func NewIssuer(key []byte, o Options) (*Issuer, error) {
	if len(key) < MinKeyLen {
		return nil, fmt.Errorf("signing key is %d bytes, need at least %d", len(key), MinKeyLen)
	}
	if o.AccessTTL <= 0 {
		o.AccessTTL = time.Hour
	}
	if o.RefreshTTL <= 0 {
		o.RefreshTTL = 30 * 24 * time.Hour
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	k := bytes.Clone(key)
	iss := &Issuer{
		key:        k,
		accessTTL:  o.AccessTTL,
		refreshTTL: o.RefreshTTL,
		now:        o.Now,
		leeway:     o.Leeway,
		cache:      newVerifiedCache(100_000),
		parser: jwt.NewParser(
			jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}),
			jwt.WithExpirationRequired(),
			jwt.WithIssuedAt(),
			jwt.WithLeeway(o.Leeway),
			jwt.WithStrictDecoding(),
			jwt.WithTimeFunc(o.Now),
		),
	}
	iss.macs.New = func() any { return hmac.New(sha256.New, k) }
	return iss, nil
}

// AccessTTL is the access-token lifetime (the login answer's expires_in).
func (i *Issuer) AccessTTL() time.Duration { return i.accessTTL }

// RefreshTTL is the refresh-token lifetime.
func (i *Issuer) RefreshTTL() time.Duration { return i.refreshTTL }

// NewSessionID returns a fresh random login-session id.
func NewSessionID() string { return randomID() }

// IssuePair mints an access and a refresh token for one new login session.
func (i *Issuer) IssuePair(id Identity) (Pair, error) {
	sid := NewSessionID()
	now := i.now()
	var p Pair
	var err error
	p.AccessClaims = i.claims(id, Access, sid, now)
	if p.Access, err = i.Sign(&p.AccessClaims); err != nil {
		return Pair{}, err
	}
	p.RefreshClaims = i.claims(id, Refresh, sid, now)
	if p.Refresh, err = i.Sign(&p.RefreshClaims); err != nil {
		return Pair{}, err
	}
	return p, nil
}

// Issue mints one token of type typ in session sid.
func (i *Issuer) Issue(id Identity, typ Type, sid string) (string, Claims, error) {
	c := i.claims(id, typ, sid, i.now())
	s, err := i.Sign(&c)
	return s, c, err
}

func (i *Issuer) claims(id Identity, typ Type, sid string, now time.Time) Claims {
	ttl := i.accessTTL
	if typ == Refresh {
		ttl = i.refreshTTL
	}
	return Claims{
		Subject:   UserID(id.UserID),
		Username:  id.Username,
		Role:      id.Role,
		IssuedAt:  now.Unix(),
		ExpiresAt: now.Add(ttl).Unix(),
		Type:      typ,
		ID:        randomID(),
		Session:   sid,
	}
}

// Sign encodes and signs c.
func (i *Issuer) Sign(c *Claims) (string, error) {
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, c).SignedString(i.key)
	if err != nil {
		return "", fmt.Errorf("signing token: %w", err)
	}
	return s, nil
}

// Verify checks raw's size, shape, algorithm (HS256 only), signature, expiry and type.
// It never touches the store: revocation is the caller's next step. The returned claims are
// shared and must not be modified.
func (i *Issuer) Verify(raw string, want Type) (*Claims, error) {
	if len(raw) == 0 || len(raw) > MaxLen {
		return nil, ErrMalformed
	}
	if c := i.cache.get(raw); c != nil { // nil cache: get returns nil
		if i.now().Add(-i.leeway).Unix() >= c.ExpiresAt {
			return nil, ErrExpired
		}
		if c.Type != want {
			return c, ErrWrongType
		}
		return c, nil
	}
	c, err, fast := i.fastVerify(raw)
	if !fast {
		c = new(Claims)
		_, err = i.parser.ParseWithClaims(raw, c, func(*jwt.Token) (any, error) { return i.key, nil })
	}
	switch {
	case err == nil:
	case errors.Is(err, jwt.ErrTokenMalformed):
		return nil, ErrMalformed
	case errors.Is(err, jwt.ErrTokenExpired):
		return nil, ErrExpired
	case errors.Is(err, ErrExpired), errors.Is(err, ErrInvalid):
		return nil, err
	default:
		return nil, ErrInvalid
	}
	i.cache.put(raw, c, i.now()) // nil cache: nothing
	if c.Type != want {
		return c, ErrWrongType
	}
	return c, nil
}

func randomID() string {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		panic("crypto/rand failed: " + err.Error()) // rand.Read never fails on Linux
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}
