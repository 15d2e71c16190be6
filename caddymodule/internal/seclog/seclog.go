// Package seclog writes the security log: one line per authentication event in the exact
// form of MikoPBX's module, so existing fail2ban filters keep working:
//
//	[AUTH_FAILED] Failed login attempt for user: 201 | From: 10.0.0.5 | Time: 2026-01-19 16:44:55
//
// The file rotates by size (name.1 … name.N). Messages never hold a token or a password.
package seclog

import (
	"bytes"
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
//
// Writers only append their line to a buffer in memory; one goroutine of the Log writes the
// buffer to the file. A busy media route writes a line per request, and a write(2) that
// waits on the file system must not hold up every request that logs behind it (it did: a
// check-media-access with the log on ran 4–9% slower than with it off, and not for the CPU
// of the lines).
type Log struct {
	path     string
	maxBytes int64
	keep     int

	mu      sync.Mutex
	changed *sync.Cond // a flush finished or the Log closed (writers waiting on either)
	buf     []byte     // lines not yet handed to the writer goroutine
	spare   []byte     // the writer's last buffer, reused
	queued  uint64     // lines appended so far
	written uint64     // lines handed to the file so far
	urgent  int        // writers waiting for their line to reach the file
	err     error      // the last write's error, nil once a write succeeds again
	closed  bool       // Close was called: no more lines
	ended   bool       // the writer goroutine has written its last line

	kick chan struct{} // lines to write (cap 1)
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the writer goroutine has written everything

	// The writer goroutine's own: the file and its size.
	f    *os.File
	size int64

	// The last timestamp formatted, reused while the second and the zone stay the same.
	stampSec  int64
	stampZone *time.Location
	stamp     []byte
	line      []byte // reused formatting buffer (under mu)
}

// flushDelay is how long a routine line (a grant, a login) may wait in memory before it is
// written; failures and denials are written at once (fail2ban reads them).
const flushDelay = 200 * time.Millisecond

// flushSize is how much the buffer holds before the writer goroutine is woken early, and
// maxPending how much it may hold before writers wait (a file system that has stopped
// answering does not grow the gateway's memory without bound; nothing is dropped).
const (
	flushSize  = 64 << 10
	maxPending = 4 << 20
)

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
	l := &Log{path: path, maxBytes: maxBytes, keep: keep,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	l.changed = sync.NewCond(&l.mu)
	if err := l.open(); err != nil {
		return nil, err
	}
	go l.run()
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

// Write appends one event. An urgent one is in the file (handed to the OS) when Write
// returns, with every line before it; a routine one within flushDelay.
func (l *Log) Write(ev Event, message, from string, at time.Time) error {
	now := urgent(ev)
	l.mu.Lock()
	for len(l.buf) >= maxPending && !l.closed {
		l.changed.Wait()
	}
	if l.closed {
		l.mu.Unlock()
		return fmt.Errorf("security log is closed")
	}
	l.line = appendLine(l.line[:0], ev, message, from, l.timestamp(at))
	wake := len(l.buf) == 0 || len(l.buf)+len(l.line) >= flushSize
	l.buf = append(l.buf, l.line...)
	l.queued++
	mine := l.queued
	if now {
		l.urgent++
		wake = true
	}
	if wake {
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	if !now {
		err := l.err
		l.mu.Unlock()
		return err
	}
	for l.written < mine && !l.ended {
		l.changed.Wait()
	}
	l.urgent--
	err := l.err
	if l.written < mine {
		err = fmt.Errorf("security log is closed")
	}
	l.mu.Unlock()
	return err
}

// timestamp is at in TimeLayout (under l.mu).
func (l *Log) timestamp(at time.Time) []byte {
	if l.stamp == nil || at.Unix() != l.stampSec || at.Location() != l.stampZone {
		l.stamp = at.AppendFormat(l.stamp[:0], TimeLayout)
		l.stampSec, l.stampZone = at.Unix(), at.Location()
	}
	return l.stamp
}

// run is the writer goroutine: it wakes when the first line arrives, gives routine lines
// flushDelay to gather (unless a writer waits or the buffer fills), and writes them out.
func (l *Log) run() {
	defer func() {
		l.mu.Lock()
		l.ended = true
		l.changed.Broadcast()
		l.mu.Unlock()
		close(l.done)
	}()
	delay := time.NewTimer(flushDelay)
	delay.Stop()
	for {
		select {
		case <-l.kick:
		case <-l.stop:
			l.flush()
			return
		}
		if !l.hurry() {
			delay.Reset(flushDelay)
			select {
			case <-delay.C:
			case <-l.kick: // a writer waits, or the buffer is full
			case <-l.stop:
			}
			delay.Stop()
		}
		l.flush()
	}
}

func (l *Log) hurry() bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.urgent > 0 || len(l.buf) >= flushSize
}

// flush hands the buffer to the file (the writer goroutine only).
func (l *Log) flush() {
	l.mu.Lock()
	data, upto := l.buf, l.queued
	l.buf = l.spare[:0]
	l.mu.Unlock()
	if len(data) == 0 {
		return
	}
	err := l.writeOut(data)
	l.mu.Lock()
	if cap(data) <= 2*flushSize {
		l.spare = data[:0]
	} else {
		l.spare = nil // a burst grew it: let it go
	}
	l.written, l.err = upto, err
	l.changed.Broadcast()
	l.mu.Unlock()
}

// writeOut writes whole lines, rotating first whenever the next ones would take the file
// past maxBytes (a file is never cut inside a line; a single line longer than maxBytes gets
// a file of its own).
func (l *Log) writeOut(data []byte) error {
	for len(data) > 0 {
		if l.f == nil {
			if err := l.open(); err != nil {
				return err
			}
		}
		n := len(data)
		if l.size+int64(n) > l.maxBytes {
			n = 0
			if room := l.maxBytes - l.size; room > 0 {
				n = bytes.LastIndexByte(data[:room], '\n') + 1
			}
			if n == 0 && l.size == 0 { // one line longer than maxBytes: on its own
				if n = bytes.IndexByte(data, '\n') + 1; n == 0 {
					n = len(data)
				}
			}
		}
		if n > 0 {
			w, err := l.f.Write(data[:n])
			l.size += int64(w)
			if err != nil {
				return fmt.Errorf("writing security log: %w", err)
			}
			data = data[n:]
		}
		if len(data) > 0 {
			if err := l.rotate(); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *Log) rotate() error {
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

// Close writes what is buffered and closes the file. Writes after Close fail.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	l.changed.Broadcast()
	l.mu.Unlock()
	close(l.stop)
	<-l.done
	l.mu.Lock()
	err := l.err
	l.mu.Unlock()
	if l.f != nil {
		if cerr := l.f.Close(); err == nil {
			err = cerr
		}
		l.f = nil
	}
	return err
}
