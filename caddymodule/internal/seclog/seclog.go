// Package seclog writes the security log: one line per authentication event in the exact
// form of MikoPBX's module, so existing fail2ban filters keep working:
//
//	[AUTH_FAILED] Failed login attempt for user: 201 | From: 10.0.0.5 | Time: 2026-01-19 16:44:55
//
// The file rotates by size (name.1 … name.N). Messages never hold a token or a password.
package seclog

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
	"unicode/utf8"
)

// Event is the bracketed tag.
type Event string

// The events of the reference.
const (
	AuthSuccess          Event = "AUTH_SUCCESS"
	AuthFailed           Event = "AUTH_FAILED"
	Logout               Event = "LOGOUT"
	MediaAccessDenied    Event = "MEDIA_ACCESS_DENIED"
	MediaAccessGranted   Event = "MEDIA_ACCESS_GRANTED"
	NchanSubAccessDenied Event = "NCHAN_SUB_ACCESS_DENIED"
)

// TimeLayout is the reference's timestamp form (local time).
const TimeLayout = "2006-01-02 15:04:05"

// Line formats one event. Control characters and '|' in message or from are replaced so
// that a crafted username cannot forge a second line or a field.
func Line(ev Event, message, from string, at time.Time) string {
	return string(appendLine(make([]byte, 0, 64+len(message)+len(from)), ev, message, from, at.AppendFormat(nil, TimeLayout)))
}

// appendLine appends one line; stamp is the time formatted with TimeLayout.
func appendLine(b []byte, ev Event, message, from string, stamp []byte) []byte {
	b = append(b, '[')
	b = append(b, ev...)
	b = append(b, "] "...)
	b = appendClean(b, message)
	b = append(b, " | From: "...)
	b = appendClean(b, from)
	b = append(b, " | Time: "...)
	b = append(b, stamp...)
	return append(b, '\n')
}

func appendClean(b []byte, s string) []byte {
	if len(s) > 256 {
		s = s[:256]
	}
	if plainASCII(s) {
		return append(b, s...)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '|' || r == '\uFFFD' {
			r = '_'
		}
		b = utf8.AppendRune(b, r)
	}
	return b
}

// plainASCII reports whether s is printable ASCII without '|': nothing for appendClean to
// replace (the usual username and address).
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c >= 0x7f || c == '|' {
			return false
		}
	}
	return true
}

// Log is a size-rotated security log file, safe for concurrent use.
type Log struct {
	path     string
	maxBytes int64
	keep     int

	mu    sync.Mutex
	f     *os.File
	w     *bufio.Writer
	size  int64
	timer *time.Timer // pending flush of routine lines
	line  []byte      // reused formatting buffer

	// The last timestamp formatted, reused while the second and the zone stay the same (a
	// busy media route writes many lines a second).
	stampSec  int64
	stampZone *time.Location
	stamp     []byte
}

// flushDelay is how long a routine line (a grant, a login) may wait in memory before it is
// written; failures and denials are written at once (fail2ban reads them).
const flushDelay = 200 * time.Millisecond

// Open opens (creating, mode 0600) the log at path. When a write would take it past maxBytes
// it is renamed to path.1 (older ones shift up to path.keep) and a new file is started.
func Open(path string, maxBytes int64, keep int) (*Log, error) {
	if maxBytes <= 0 {
		maxBytes = 10 << 20
	}
	if keep <= 0 {
		keep = 5
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("creating security log folder: %w", err)
	}
	l := &Log{path: path, maxBytes: maxBytes, keep: keep}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *Log) open() error {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("opening security log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return fmt.Errorf("opening security log: %w", err)
	}
	l.f, l.size = f, st.Size()
	l.w = bufio.NewWriterSize(f, 16<<10)
	return nil
}

// urgent events reach the file before Write returns.
func urgent(ev Event) bool {
	switch ev {
	case AuthFailed, MediaAccessDenied, NchanSubAccessDenied, Logout:
		return true
	}
	return false
}

// Write appends one event.
func (l *Log) Write(ev Event, message, from string, at time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.line = appendLine(l.line[:0], ev, message, from, l.timestamp(at))
	line := l.line
	if l.f == nil {
		return fmt.Errorf("security log is closed")
	}
	if l.size > 0 && l.size+int64(len(line)) > l.maxBytes {
		if err := l.rotate(); err != nil {
			return err
		}
	}
	n, err := l.w.Write(line)
	l.size += int64(n)
	if err != nil {
		return fmt.Errorf("writing security log: %w", err)
	}
	if urgent(ev) {
		return l.flushLocked()
	}
	if l.timer == nil {
		l.timer = time.AfterFunc(flushDelay, l.Flush)
	}
	return nil
}

// timestamp is at in TimeLayout (under l.mu).
func (l *Log) timestamp(at time.Time) []byte {
	if l.stamp == nil || at.Unix() != l.stampSec || at.Location() != l.stampZone {
		l.stamp = at.AppendFormat(l.stamp[:0], TimeLayout)
		l.stampSec, l.stampZone = at.Unix(), at.Location()
	}
	return l.stamp
}

// Flush writes buffered lines to the file.
func (l *Log) Flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.flushLocked()
}

func (l *Log) flushLocked() error {
	if l.timer != nil {
		l.timer.Stop()
		l.timer = nil
	}
	if l.w == nil {
		return nil
	}
	if err := l.w.Flush(); err != nil {
		return fmt.Errorf("writing security log: %w", err)
	}
	return nil
}

func (l *Log) rotate() error {
	l.flushLocked()
	l.f.Close()
	l.f = nil
	for i := l.keep - 1; i >= 1; i-- {
		_ = os.Rename(fmt.Sprintf("%s.%d", l.path, i), fmt.Sprintf("%s.%d", l.path, i+1))
	}
	if err := os.Rename(l.path, l.path+".1"); err != nil {
		return fmt.Errorf("rotating security log: %w", err)
	}
	return l.open()
}

// Close closes the file.
func (l *Log) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.f == nil {
		return nil
	}
	l.flushLocked()
	err := l.f.Close()
	l.f, l.w = nil, nil
	return err
}
