// Package presence tells the world when registrations change: a users-state snapshot in the
// MikoPBX format, published to Nchan (or the gateway's pub endpoint), and locator webhooks in
// the rustpbx format. Both are computed from the location store, so several sidecars sharing
// Redis say the same thing, and neither can delay a REGISTER.
package presence

import (
	"encoding/json"
	"sort"
	"strings"
)

// States a registrar knows (the PBX adds the call states).
const (
	Idle        = "Idle"
	Unavailable = "Unavailable"
)

// UserState is one entry of the snapshot.
type UserState struct {
	State string `json:"state"`
	Name  string `json:"name"`
}

// Snapshot is the users-state message: every known user with its state.
type Snapshot struct {
	States map[string]UserState `json:"states"`
}

// User is the user part of an AOR ("201@pbx.example.com" → "201"); the snapshot is keyed
// by extension, as softphone apps expect.
func User(aor string) string {
	aor = strings.TrimPrefix(strings.TrimPrefix(aor, "sip:"), "sips:")
	user, _, _ := strings.Cut(aor, "@")
	return user
}

// Build makes the snapshot from every AOR ever registered (with display names) and the AORs
// that have a live binding now. An extension registered under several domains is Idle when
// any of them is live.
func Build(known map[string]string, live []string) Snapshot {
	s := Snapshot{States: make(map[string]UserState, len(known))}
	for aor, name := range known {
		u := User(aor)
		if u == "" {
			continue
		}
		st := s.States[u]
		if st.Name == "" {
			st.Name = name
		}
		if st.State == "" {
			st.State = Unavailable
		}
		s.States[u] = st
	}
	for _, aor := range live {
		u := User(aor)
		if u == "" {
			continue
		}
		st := s.States[u]
		st.State = Idle
		s.States[u] = st
	}
	return s
}

// JSON encodes the snapshot with sorted keys (encoding/json sorts map keys), so equal
// snapshots are equal bytes.
func (s Snapshot) JSON() []byte {
	b, _ := json.Marshal(s)
	return b
}

// Users lists the snapshot's extensions in order (for logs and tests).
func (s Snapshot) Users() []string {
	out := make([]string, 0, len(s.States))
	for u := range s.States {
		out = append(out, u)
	}
	sort.Strings(out)
	return out
}
