package broker

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// A waiting long-poll is "parked": its connection is taken over from net/http, and the
// goroutine, its stack and net/http's buffers are released. What remains is this struct and
// the socket, a few hundred bytes instead of some 40 KiB, so tens of thousands of phones can
// wait on one gateway. When a message comes (or the wait times out, the channel is deleted,
// the upstream goes away, or the subscriber's token is cut off) the answer is written
// straight to the socket with Connection: close, and the client polls again on a new
// connection. HTTP/2 requests cannot be taken over and wait the ordinary way.
type parked struct {
	b      *Broker
	c      *channel
	conn   net.Conn
	cur    cursor
	head   bool
	once   sync.Once
	finish func() // the caller's release

	mu    sync.Mutex  // guards timer and stop, set while the waiter may already be answered
	timer *time.Timer // the subscriber timeout
	stop  func() bool // stops the context.AfterFunc
}

// parkLongPoll hijacks the request's connection and registers it as a waiter. It reports
// false when the connection cannot be taken over (the caller then waits in its goroutine).
func (b *Broker) parkLongPoll(ctx context.Context, w http.ResponseWriter, r *http.Request, c *channel, cur cursor, release func()) bool {
	if r.ProtoMajor != 1 {
		return false
	}
	conn, _, err := http.NewResponseController(w).Hijack()
	if err != nil {
		return false
	}
	p := &parked{b: b, c: c, conn: conn, cur: cur, head: r.Method == http.MethodHead, finish: release}
	p.mu.Lock()
	if b.opts.SubscriberTimeout > 0 {
		p.timer = time.AfterFunc(b.opts.SubscriberTimeout, func() { p.unpark(); p.answerStatus(http.StatusRequestTimeout) })
	}
	p.stop = context.AfterFunc(ctx, func() { p.unpark(); p.answerStatus(http.StatusRequestTimeout) })
	p.mu.Unlock()
	b.mu.Lock()
	// Re-check under the lock that registers the waiter: a message published between the
	// caller's poll and now must not be missed.
	m, ok, st := b.pollLocked(c, cur)
	if !ok && st == stateOpen {
		if c.parked == nil {
			c.parked = map[*parked]struct{}{}
		}
		c.parked[p] = struct{}{}
	}
	b.mu.Unlock()
	switch {
	case ok:
		p.answerMessage(m)
		return true
	case st != stateOpen:
		p.answerState(st)
		return true
	}
	return true
}

// unpark removes p from its channel's waiters (when it answers for its own reasons).
func (p *parked) unpark() {
	p.b.mu.Lock()
	delete(p.c.parked, p)
	p.b.mu.Unlock()
}

// takeParked removes and returns a channel's waiters; the caller answers them.
func (c *channel) takeParked() []*parked {
	if len(c.parked) == 0 {
		return nil
	}
	out := make([]*parked, 0, len(c.parked))
	for p := range c.parked {
		out = append(out, p)
	}
	clear(c.parked)
	return out
}

// wakeParked answers waiters after a change, spread over a few goroutines so one publish
// reaches ten thousand sockets quickly.
func (b *Broker) wakeParked(ps []*parked) {
	if len(ps) == 0 {
		return
	}
	workers := min(8, 1+len(ps)/512)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(ps); i += workers {
				p := ps[i]
				m, ok, st, _ := b.poll(p.c, p.cur)
				switch {
				case ok:
					p.answerMessage(m)
				case st != stateOpen:
					p.answerState(st)
				default:
					// Nothing after its cursor (it was woken by another change): wait again.
					b.mu.Lock()
					m, ok, st = b.pollLocked(p.c, p.cur)
					if !ok && st == stateOpen {
						p.c.parked[p] = struct{}{}
					}
					b.mu.Unlock()
					if ok {
						p.answerMessage(m)
					} else if st != stateOpen {
						p.answerState(st)
					}
				}
			}
		})
	}
	wg.Wait()
}

func (p *parked) answerState(st state) {
	switch st {
	case stateGone:
		p.answerStatus(http.StatusGone)
	case stateDown:
		p.answerStatus(http.StatusBadGateway)
	}
}

// answerMessage writes the long-poll answer for m, exactly as serveLongPoll would.
func (p *parked) answerMessage(m Message) {
	p.once.Do(func() {
		w := bufio.NewWriterSize(p.conn, 512+len(m.Data))
		w.WriteString("HTTP/1.1 200 OK\r\n")
		writeCommon(w)
		if m.ContentType != "" {
			w.WriteString("Content-Type: " + m.ContentType + "\r\n")
		}
		w.WriteString("Content-Length: " + strconv.Itoa(len(m.Data)) + "\r\n")
		w.WriteString("Last-Modified: " + time.Unix(m.ID.Time, 0).UTC().Format(http.TimeFormat) + "\r\n")
		w.WriteString("Etag: " + strconv.Itoa(m.ID.Tag) + "\r\n")
		w.WriteString("Vary: If-None-Match, If-Modified-Since\r\n\r\n")
		if !p.head {
			w.Write(m.Data)
		}
		p.flushAndClose(w)
	})
}

// answerStatus writes an empty answer (408, 410, 502).
func (p *parked) answerStatus(code int) {
	p.once.Do(func() {
		w := bufio.NewWriterSize(p.conn, 256)
		w.WriteString("HTTP/1.1 " + strconv.Itoa(code) + " " + http.StatusText(code) + "\r\n")
		writeCommon(w)
		w.WriteString("Content-Length: 0\r\n")
		if code == http.StatusGone {
			w.WriteString("Etag: 0\r\nVary: If-None-Match, If-Modified-Since\r\n")
		}
		w.WriteString("\r\n")
		p.flushAndClose(w)
	})
}

func writeCommon(w *bufio.Writer) {
	w.WriteString("Date: " + time.Now().UTC().Format(http.TimeFormat) + "\r\nConnection: close\r\n")
}

func (p *parked) flushAndClose(w *bufio.Writer) {
	p.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	w.Flush()
	p.conn.Close()
	p.release()
}

// sweepParked answers (and forgets) parked long-polls whose client has gone away, every
// interval, so an abandoned poll does not hold its socket and its subscriber count until
// the subscriber timeout.
func (b *Broker) sweepParked(interval time.Duration, done <-chan struct{}) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-t.C:
		}
		var ps []*parked
		var ss []*stream
		b.mu.Lock()
		for _, c := range b.channels {
			for p := range c.parked {
				ps = append(ps, p)
			}
			for s := range c.streams {
				ss = append(ss, s)
			}
		}
		b.mu.Unlock()
		for _, s := range ss {
			if peerGone(s.conn) {
				s.shut("")
			}
		}
		for _, p := range ps {
			if peerGone(p.conn) {
				p.unpark()
				p.once.Do(func() { p.conn.Close(); p.release() })
			}
		}
	}
}

// release gives back what a parked waiter held, after its socket is closed.
func (p *parked) release() {
	p.mu.Lock()
	if p.timer != nil {
		p.timer.Stop()
	}
	if p.stop != nil {
		p.stop()
	}
	p.mu.Unlock()
	p.b.leave(p.c)
	if p.finish != nil {
		p.finish()
	}
}

// peerGone peeks at the socket without blocking: end of stream or an error means the client
// closed it; pending bytes or nothing at all mean it is still there.
func peerGone(c net.Conn) bool {
	if tc, ok := c.(interface{ NetConn() net.Conn }); ok {
		c = tc.NetConn()
	}
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return true
	}
	gone := false
	var buf [1]byte
	err = raw.Read(func(fd uintptr) bool {
		n, _, err := syscall.Recvfrom(int(fd), buf[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		gone = n == 0 && err == nil || err != nil && err != syscall.EAGAIN && err != syscall.EWOULDBLOCK && err != syscall.EINTR
		return true // never wait
	})
	return gone || err != nil
}
