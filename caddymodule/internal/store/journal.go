package store

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// The journal keeps the memory store's revocations and families on disk: one JSON record per
// line, appended and synced before the change is acknowledged, compacted (expired records
// dropped) every time it is opened. Tokens are never written, only session ids, user ids and
// token ids.

type op string

const (
	opRevoke op = "revoke" // Key = sid
	opUser   op = "user"   // Key = sub, At = logged out everywhere at
	opFamily op = "family" // Key = family (sid), Cur, Prev, At = rotation time
)

type record struct {
	Op    op     `json:"op"`
	Key   string `json:"key"`
	Cur   string `json:"cur,omitempty"`
	Prev  string `json:"prev,omitempty"`
	At    int64  `json:"at,omitempty"` // unix ms
	Until int64  `json:"until"`        // unix ms
}

type journal struct {
	f *os.File
}

// maxJournalLine bounds one record when reading.
const maxJournalLine = 4096

// OpenMemory returns a memory store backed by the journal at path (created 0600 when
// absent). A journal that cannot be read is an error: starting with an empty store would
// bring logged-out tokens back to life.
func OpenMemory(path string, now func() time.Time) (*Memory, error) {
	m := NewMemory(now)
	t := m.now()
	if err := m.replay(path, t); err != nil {
		return nil, err
	}
	if err := m.compact(path, t); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening state journal: %w", err)
	}
	m.journal = &journal{f: f}
	return m, nil
}

func (m *Memory) replay(path string, now time.Time) error {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading state journal: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, maxJournalLine), maxJournalLine)
	line := 0
	for sc.Scan() {
		line++
		var r record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			// A torn last line (a crash mid-write) lost a change nobody was told about.
			if !sc.Scan() {
				break
			}
			return fmt.Errorf("state journal %s line %d: %w", path, line, err)
		}
		m.apply(r)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading state journal %s: %w", path, err)
	}
	return nil
}

func (m *Memory) apply(r record) {
	until := time.UnixMilli(r.Until)
	switch r.Op {
	case opRevoke:
		if until.After(m.revoked[r.Key]) {
			m.revoked[r.Key] = until
		}
	case opUser:
		cur := m.users[r.Key]
		m.users[r.Key] = userMark{at: maxTime(time.UnixMilli(r.At), cur.at), until: maxTime(until, cur.until)}
	case opFamily:
		m.families[r.Key] = family{cur: r.Cur, prev: r.Prev, at: time.UnixMilli(r.At), until: until}
	}
}

// compact rewrites the journal with the live records only (temp file + rename).
func (m *Memory) compact(path string, now time.Time) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating state folder: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".state-*")
	if err != nil {
		return fmt.Errorf("compacting state journal: %w", err)
	}
	defer os.Remove(tmp.Name())
	w := bufio.NewWriter(tmp)
	enc := json.NewEncoder(w)
	for k, until := range m.revoked {
		if now.Before(until) {
			enc.Encode(record{Op: opRevoke, Key: k, Until: until.UnixMilli()})
		}
	}
	for k, u := range m.users {
		if now.Before(u.until) {
			enc.Encode(record{Op: opUser, Key: k, At: u.at.UnixMilli(), Until: u.until.UnixMilli()})
		}
	}
	for k, f := range m.families {
		if now.Before(f.until) {
			enc.Encode(record{Op: opFamily, Key: k, Cur: f.cur, Prev: f.prev, At: f.at.UnixMilli(), Until: f.until.UnixMilli()})
		}
	}
	if err := errors.Join(w.Flush(), tmp.Chmod(0o600), tmp.Sync(), tmp.Close()); err != nil {
		return fmt.Errorf("compacting state journal: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("compacting state journal: %w", err)
	}
	return nil
}

// write appends r and syncs it; a nil journal persists nothing.
func (j *journal) write(r record) error {
	if j == nil {
		return nil
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	if _, err := j.f.Write(append(b, '\n')); err != nil {
		return fmt.Errorf("%w: writing state journal: %v", ErrUnavailable, err)
	}
	if err := j.f.Sync(); err != nil {
		return fmt.Errorf("%w: syncing state journal: %v", ErrUnavailable, err)
	}
	return nil
}

func (j *journal) close() error {
	if j == nil {
		return nil
	}
	return j.f.Close()
}
