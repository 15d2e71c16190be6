package broker

import (
	"context"
	"net"
	"net/http"
	"sync"
	"time"
)

// An EventSource subscriber over HTTP/1.1 is parked the same way as a waiting long-poll (see
// park.go): its connection is taken over before anything is written, the response head is
// written by hand (Connection: close, the body runs until the connection ends), and every
// later event is written by the publisher's fan-out. No goroutine, no net/http buffers stay
// behind. HTTP/2 streams cannot be taken over and stream from their handler goroutine.
type stream struct {
	b      *Broker
	c      *channel
	conn   net.Conn
	finish func()

	mu     sync.Mutex // serialises writes and guards the fields below
	cur    cursor
	buf    []byte
	closed bool
	stop   func() bool
}

// parkEventSource takes the connection over and registers the stream; false when the
// connection cannot be taken over (the caller streams from its goroutine instead).
func (b *Broker) parkEventSource(ctx context.Context, w http.ResponseWriter, r *http.Request, name string, release func()) bool {
	if r.ProtoMajor != 1 || b.opts.KeepLongPolls {
		return false
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	c, err := b.join(name)
	if err != nil {
		conn.Write([]byte("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"))
		conn.Close()
		if release != nil {
			release()
		}
		return true
	}
	s := &stream{b: b, c: c, conn: conn, finish: release, cur: eventCursor(r)}
	s.mu.Lock()
	s.buf = append(s.buf[:0], "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream; charset=utf-8\r\nDate: "...)
	s.buf = append(s.buf, time.Now().UTC().Format(http.TimeFormat)...)
	s.buf = append(s.buf, "\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n: hi\n\n"...)
	s.stop = context.AfterFunc(ctx, func() { s.shut("") })
	ok := s.writeLocked()
	if ok {
		// Registered while s.mu is held, as shutLocked unregisters: a shut by a context that is
		// already over cannot run in between and leave the closed stream in c.streams for good.
		b.mu.Lock()
		if c.streams == nil {
			c.streams = map[*stream]struct{}{}
		}
		c.streams[s] = struct{}{}
		b.mu.Unlock()
	}
	s.mu.Unlock()
	if !ok {
		return true
	}
	s.catchUp() // the backlog after its cursor, and anything published meanwhile
	return true
}

// catchUp writes every message after the stream's cursor, then the channel's end state.
func (s *stream) catchUp() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for !s.closed {
		m, ok, st := s.pollLocked()
		switch {
		case ok:
			s.buf = appendEvent(s.buf[:0], m)
			if !s.writeLocked() {
				return
			}
			id := m.ID
			s.cur = &id
		case st == stateGone:
			s.shutLocked(":410: 410 Gone\n\n")
			return
		case st == stateDown:
			s.shutLocked(":502: 502 Bad Gateway\n\n")
			return
		default:
			return
		}
	}
}

func (s *stream) pollLocked() (Message, bool, state) {
	s.b.mu.Lock()
	defer s.b.mu.Unlock()
	return s.b.pollLocked(s.c, s.cur)
}

// writeLocked writes s.buf; a slow or gone client is dropped.
func (s *stream) writeLocked() bool {
	s.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := s.conn.Write(s.buf); err != nil {
		s.shutLocked("")
		return false
	}
	return true
}

// shut ends the stream with a last comment (may be empty).
func (s *stream) shut(last string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.shutLocked(last)
}

func (s *stream) shutLocked(last string) {
	if s.closed {
		return
	}
	s.closed = true
	if last != "" {
		s.conn.SetWriteDeadline(time.Now().Add(time.Second))
		s.conn.Write([]byte(last))
	}
	s.conn.Close()
	if s.stop != nil {
		s.stop()
	}
	s.b.mu.Lock()
	delete(s.c.streams, s)
	s.b.mu.Unlock()
	s.b.leave(s.c)
	if s.finish != nil {
		s.finish()
	}
}

// wakeStreams brings every stream of a channel up to date after a change, spread over a few
// goroutines.
func wakeStreams(ss []*stream) {
	if len(ss) == 0 {
		return
	}
	workers := min(8, 1+len(ss)/512)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(ss); i += workers {
				ss[i].catchUp()
			}
		})
	}
	wg.Wait()
}

// streamsOf lists a channel's streams (under b.mu).
func (c *channel) streamList() []*stream {
	if len(c.streams) == 0 {
		return nil
	}
	out := make([]*stream, 0, len(c.streams))
	for s := range c.streams {
		out = append(out, s)
	}
	return out
}
