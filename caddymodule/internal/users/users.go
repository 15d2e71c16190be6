// Package users holds softphone users and checks their secrets. One secret serves both the
// HTTP login and the SIP REGISTER: the plain SIP password, or its digest HA1 so that the
// plain text need not be stored.
package users

import (
	"context"
	"crypto/md5"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/softphone-gateway/softphone-gateway/internal/sipdigest"
)

// ErrNotFound means no backend knows the user.
var ErrNotFound = errors.New("users: not found")

// MaxUsernameLen bounds a username before any lookup.
const MaxUsernameLen = 64

// User is one softphone account.
type User struct {
	ID             int64  `json:"id"`
	Username       string `json:"username"`
	Password       string `json:"password,omitempty"`   // the SIP secret in plain text
	HA1            string `json:"ha1,omitempty"`        // MD5(username:realm:secret), hex
	HA1SHA256      string `json:"ha1_sha256,omitempty"` // SHA-256(username:realm:secret), hex
	DisplayName    string `json:"display_name,omitempty"`
	Role           string `json:"role,omitempty"`    // default "user"
	Enabled        *bool  `json:"enabled,omitempty"` // default true
	CallHook       string `json:"call_hook,omitempty"`
	CallStatusHook string `json:"call_status_hook,omitempty"`
}

// IsEnabled reports whether the user may log in (absent means enabled).
func (u *User) IsEnabled() bool { return u.Enabled == nil || *u.Enabled }

// IDString is the user id as the token's sub claim carries it.
func (u *User) IDString() string { return strconv.FormatInt(u.ID, 10) }

// RoleOrDefault is the role, "user" when unset.
func (u *User) RoleOrDefault() string {
	if u.Role == "" {
		return "user"
	}
	return u.Role
}

// Validate rejects a user record that cannot work.
func (u *User) Validate() error {
	switch {
	case u.Username == "":
		return errors.New("username is empty")
	case len(u.Username) > MaxUsernameLen:
		return fmt.Errorf("username %q is longer than %d characters", u.Username, MaxUsernameLen)
	case strings.ContainsAny(u.Username, ":@ \t\r\n\"\\"):
		return fmt.Errorf("username %q contains a character that cannot appear in a SIP user or digest", u.Username)
	case u.ID <= 0:
		return fmt.Errorf("user %s: id must be a positive integer", u.Username)
	case u.Password == "" && u.HA1 == "" && u.HA1SHA256 == "":
		return fmt.Errorf("user %s: needs password, ha1 or ha1_sha256", u.Username)
	case u.HA1 != "" && !isHex(u.HA1, md5.Size):
		return fmt.Errorf("user %s: ha1 must be %d hex characters", u.Username, 2*md5.Size)
	case u.HA1SHA256 != "" && !isHex(u.HA1SHA256, sha256.Size):
		return fmt.Errorf("user %s: ha1_sha256 must be %d hex characters", u.Username, 2*sha256.Size)
	}
	return nil
}

func isHex(s string, n int) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == n
}

// HA1 returns the user's digest HA1 for alg (sipdigest.MD5 or sipdigest.SHA256) in realm,
// from the plain secret or the stored hash. ok is false when the user has neither for alg.
func (u *User) HA1For(alg, realm string) (ha1 string, ok bool) {
	switch {
	case u.Password != "":
		return sipdigest.HA1(alg, u.Username, realm, u.Password), true
	case strings.EqualFold(alg, sipdigest.MD5) && u.HA1 != "":
		return strings.ToLower(u.HA1), true
	case strings.EqualFold(alg, sipdigest.SHA256) && u.HA1SHA256 != "":
		return strings.ToLower(u.HA1SHA256), true
	}
	return "", false
}

// Backend finds users by username.
type Backend interface {
	// Lookup returns the user or ErrNotFound; any other error is a technical failure.
	Lookup(ctx context.Context, username string) (*User, error)
}

// Chain asks each backend in order; the first that knows the user answers.
type Chain []Backend

// Lookup implements Backend.
func (c Chain) Lookup(ctx context.Context, username string) (*User, error) {
	for _, b := range c {
		u, err := b.Lookup(ctx, username)
		if errors.Is(err, ErrNotFound) {
			continue
		}
		return u, err
	}
	return nil, ErrNotFound
}

// decoy stands in for an unknown user so that a miss costs the same work as a hit.
var decoy = &User{ID: 1, Username: "decoy", Password: "decoy-secret-never-matches"}

// CheckPassword reports whether password is u's secret. u may be nil (unknown user): the
// same hashing and comparisons run and the answer is false. Every branch computes all three
// candidate hashes so plain, HA1 and HA1-SHA-256 users cost the same.
func CheckPassword(u *User, password, realm string) bool {
	known := 1
	if u == nil {
		u, known = decoy, 0
	}
	sum := sha256.Sum256([]byte(password))
	plainWant := sha256.Sum256([]byte(u.Password))
	md5Got := sipdigest.HA1(sipdigest.MD5, u.Username, realm, password)
	shaGot := sipdigest.HA1(sipdigest.SHA256, u.Username, realm, password)

	var ok int
	switch {
	case u.Password != "":
		ok = subtle.ConstantTimeCompare(sum[:], plainWant[:])
	case u.HA1 != "":
		ok = subtle.ConstantTimeCompare([]byte(md5Got), []byte(strings.ToLower(u.HA1)))
	case u.HA1SHA256 != "":
		ok = subtle.ConstantTimeCompare([]byte(shaGot), []byte(strings.ToLower(u.HA1SHA256)))
	}
	return ok&known == 1 && password != ""
}
