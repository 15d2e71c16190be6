package users

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
)

// MaxFileSize bounds a users file.
const MaxFileSize = 16 << 20

// Static is a backend over a fixed set of users: the JSON file and the inline list both
// become one. It is read-only and safe for concurrent use.
type Static struct {
	byName map[string]*User
}

// NewStatic validates list and indexes it by username.
func NewStatic(list []User) (*Static, error) {
	s := &Static{byName: make(map[string]*User, len(list))}
	ids := make(map[int64]string, len(list))
	for i := range list {
		u := list[i]
		if err := u.Validate(); err != nil {
			return nil, fmt.Errorf("user %d: %w", i+1, err)
		}
		if _, dup := s.byName[u.Username]; dup {
			return nil, fmt.Errorf("user %s is listed twice", u.Username)
		}
		if other, dup := ids[u.ID]; dup {
			return nil, fmt.Errorf("users %s and %s share id %d", other, u.Username, u.ID)
		}
		ids[u.ID] = u.Username
		s.byName[u.Username] = &u
	}
	return s, nil
}

// LoadFile reads a JSON users file: an array of users, or {"users":[…]}.
// Unknown fields are errors, so a typo such as "pasword" is caught at start.
func LoadFile(path string) (*Static, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("reading users file: %w", err)
	}
	if st.Size() > MaxFileSize {
		return nil, fmt.Errorf("users file %s is larger than %d bytes", path, MaxFileSize)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading users file: %w", err)
	}
	list, err := decodeList(b)
	if err != nil {
		return nil, fmt.Errorf("parsing users file %s: %w", path, err)
	}
	s, err := NewStatic(list)
	if err != nil {
		return nil, fmt.Errorf("users file %s: %w", path, err)
	}
	return s, nil
}

func decodeList(b []byte) ([]User, error) {
	b = bytes.TrimSpace(b)
	var list []User
	if len(b) > 0 && b[0] == '{' {
		var doc struct {
			Users []User `json:"users"`
		}
		if err := strictUnmarshal(b, &doc); err != nil {
			return nil, err
		}
		return doc.Users, nil
	}
	if err := strictUnmarshal(b, &list); err != nil {
		return nil, err
	}
	return list, nil
}

func strictUnmarshal(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return fmt.Errorf("trailing data after the JSON value")
	}
	return nil
}

// Lookup implements Backend.
func (s *Static) Lookup(_ context.Context, username string) (*User, error) {
	if u, ok := s.byName[username]; ok {
		return u, nil
	}
	return nil, ErrNotFound
}

// Len is the number of users.
func (s *Static) Len() int { return len(s.byName) }
