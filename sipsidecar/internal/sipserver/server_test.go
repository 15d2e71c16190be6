package sipserver

import (
	"bytes"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// udpServer serves h on a loopback UDP port and returns its address.
func udpServer(t *testing.T, h Handler) (*Server, *net.UDPAddr) {
	t.Helper()
	return serveUDP(t, Options{Handler: h, Workers: 4})
}

// serveUDP is udpServer with options. A test whose handler blocks must release it in a
// cleanup registered after this call (cleanups run last first), or a failure hangs on Wait.
func serveUDP(t *testing.T, o Options) (*Server, *net.UDPAddr) {
	t.Helper()
	s := New(o)
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.ServeUDP(pc) }()
	t.Cleanup(func() {
		pc.Close()
		if err := <-done; err != nil {
			t.Errorf("ServeUDP: %v", err)
		}
		s.Wait()
		s.Close()
	})
	return s, pc.LocalAddr().(*net.UDPAddr)
}

// phone is a UDP socket that sends requests as given and reads answers.
type phone struct {
	t    *testing.T
	conn *net.UDPConn
}

func newPhone(t *testing.T) *phone {
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &phone{t: t, conn: c}
}

func (p *phone) port() int { return p.conn.LocalAddr().(*net.UDPAddr).Port }

func (p *phone) send(to *net.UDPAddr, msg string) {
	p.t.Helper()
	if _, err := p.conn.WriteToUDP([]byte(msg), to); err != nil {
		p.t.Fatal(err)
	}
}

// read returns the next datagram, or "" after wait.
func (p *phone) read(wait time.Duration) string {
	buf := make([]byte, 65535)
	p.conn.SetReadDeadline(time.Now().Add(wait))
	n, _, err := p.conn.ReadFromUDP(buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}

// register is a REGISTER from p with the given branch; viaParams follow the branch.
func register(p *phone, branch, viaParams string) string {
	port := p.port()
	return "REGISTER sip:pbx.test SIP/2.0\r\n" +
		"Via: SIP/2.0/UDP 127.0.0.1:" + strconv.Itoa(port) + ";branch=" + branch + viaParams + "\r\n" +
		"Max-Forwards: 70\r\n" +
		"From: <sip:201@pbx.test>;tag=a1\r\n" +
		"To: <sip:201@pbx.test>\r\n" +
		"Call-ID: call-" + branch + "\r\n" +
		"CSeq: 1 REGISTER\r\n" +
		"Contact: <sip:201@127.0.0.1:" + strconv.Itoa(port) + ">\r\n" +
		"Content-Length: 0\r\n\r\n"
}

// counted wraps h with a count of its calls.
func counted(h Handler) (Handler, *atomic.Int32) {
	n := new(atomic.Int32)
	return func(req *sip.Request, w *bytes.Buffer) int { n.Add(1); return h(req, w) }, n
}

func silent(*sip.Request, *bytes.Buffer) int { return 0 }

// countOverloads is an OnRetransmission that counts the requests dropped as overload.
func countOverloads(n *atomic.Int32) func(string) {
	return func(kind string) {
		if kind == "overload" {
			n.Add(1)
		}
	}
}

func answer(code int) Handler {
	return func(req *sip.Request, w *bytes.Buffer) int {
		sip.NewResponseFromRequest(req, code, "X", nil).StringWrite(w)
		return code
	}
}

func TestUDPTransactions(t *testing.T) {
	wait := 2 * time.Second
	quiet := 150 * time.Millisecond

	t.Run("a retransmission of a completed transaction gets the same bytes without the handler", func(t *testing.T) {
		h, calls := counted(answer(200))
		_, addr := udpServer(t, h)
		p := newPhone(t)
		msg := register(p, "z9hG4bK-one", ";rport")
		p.send(addr, msg)
		first := p.read(wait)
		p.send(addr, msg)
		second := p.read(wait)
		if !strings.HasPrefix(first, "SIP/2.0 200") || first != second {
			t.Fatalf("answers differ or missing:\n%q\n%q", first, second)
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("handler ran %d times, want 1", n)
		}
	})

	t.Run("a retransmission while the handler runs is absorbed", func(t *testing.T) {
		var calls atomic.Int32
		release := make(chan struct{})
		_, addr := udpServer(t, func(req *sip.Request, w *bytes.Buffer) int {
			calls.Add(1)
			<-release
			return answer(200)(req, w)
		})
		var unblock sync.Once // runs before udpServer's cleanup, which waits for the handler
		t.Cleanup(func() { unblock.Do(func() { close(release) }) })
		p := newPhone(t)
		msg := register(p, "z9hG4bK-slow", ";rport")
		p.send(addr, msg)
		time.Sleep(50 * time.Millisecond) // let a worker take it
		p.send(addr, msg)
		if got := p.read(quiet); got != "" {
			t.Fatalf("answer before the handler finished: %q", got)
		}
		unblock.Do(func() { close(release) })
		if got := p.read(wait); !strings.HasPrefix(got, "SIP/2.0 200") {
			t.Fatalf("no answer after release: %q", got)
		}
		if got := p.read(quiet); got != "" {
			t.Fatalf("absorbed retransmission was answered too: %q", got)
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("handler ran %d times, want 1", n)
		}
	})

	t.Run("a challenge is not remembered: a retransmission gets a fresh one", func(t *testing.T) {
		h, calls := counted(answer(401))
		_, addr := udpServer(t, h)
		p := newPhone(t)
		msg := register(p, "z9hG4bK-challenge", ";rport")
		p.send(addr, msg)
		p.read(wait)
		p.send(addr, msg)
		if got := p.read(wait); !strings.HasPrefix(got, "SIP/2.0 401") {
			t.Fatalf("second answer: %q", got)
		}
		if n := calls.Load(); n != 2 {
			t.Fatalf("handler ran %d times, want 2", n)
		}
	})

	t.Run("the same branch from another address is another transaction", func(t *testing.T) {
		// Attack: a third party replays a phone's request (same branch and Via) from its own
		// address to collect the phone's remembered answer. It must get nothing remembered.
		h, calls := counted(answer(200))
		_, addr := udpServer(t, h)
		victim, attacker := newPhone(t), newPhone(t)
		msg := register(victim, "z9hG4bK-victim", ";rport")
		victim.send(addr, msg)
		victim.read(wait)
		attacker.send(addr, msg)
		attacker.read(wait)
		if n := calls.Load(); n != 2 {
			t.Fatalf("handler ran %d times, want 2 (the attacker's copy handled on its own)", n)
		}
	})

	t.Run("a branch without the RFC 3261 cookie is handled every time", func(t *testing.T) {
		h, calls := counted(answer(200))
		_, addr := udpServer(t, h)
		p := newPhone(t)
		msg := register(p, "old-style-1", ";rport")
		p.send(addr, msg)
		p.read(wait)
		p.send(addr, msg)
		p.read(wait)
		if n := calls.Load(); n != 2 {
			t.Fatalf("handler ran %d times, want 2", n)
		}
	})

	t.Run("answers go to the source port with rport, else to the Via port", func(t *testing.T) {
		_, addr := udpServer(t, answer(200))
		p, other := newPhone(t), newPhone(t)
		p.send(addr, register(p, "z9hG4bK-rport", ";rport"))
		if got := p.read(wait); !strings.Contains(got, "received=127.0.0.1") || !strings.Contains(got, "rport="+strconv.Itoa(p.port())) {
			t.Fatalf("rport answer: %q", got)
		}
		// Sent from p, but the Via names other's port and no rport: RFC 3261 §18.2.2.
		msg := strings.Replace(register(p, "z9hG4bK-via", ""), "127.0.0.1:"+strconv.Itoa(p.port())+";branch", "127.0.0.1:"+strconv.Itoa(other.port())+";branch", 1)
		p.send(addr, msg)
		if got := other.read(wait); !strings.HasPrefix(got, "SIP/2.0 200") {
			t.Fatalf("Via port got %q", got)
		}
	})

	t.Run("garbage, keep-alives and responses get nothing and change nothing", func(t *testing.T) {
		h, calls := counted(answer(200))
		s, addr := udpServer(t, h)
		p := newPhone(t)
		for _, junk := range []string{"\r\n\r\n", "\x00\x00\x00\x00", "hello", "REGISTER\r\n\r\n",
			"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKx\r\nCSeq: 1 REGISTER\r\nContent-Length: 0\r\n\r\n",
			"ACK sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:1;branch=z9hG4bKy\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
			strings.Repeat("A", 65000)} {
			p.send(addr, junk)
		}
		if got := p.read(quiet); got != "" {
			t.Fatalf("junk was answered: %q", got)
		}
		if n := calls.Load(); n != 0 {
			t.Fatalf("handler ran %d times for junk", n)
		}
		if answers, inflight, _ := s.CacheStats(); answers != 0 || inflight != 0 {
			t.Fatalf("junk left state: %d answers, %d in flight", answers, inflight)
		}
		p.send(addr, register(p, "z9hG4bK-after", ";rport"))
		if got := p.read(wait); !strings.HasPrefix(got, "SIP/2.0 200") {
			t.Fatalf("server stopped answering after junk: %q", got)
		}
	})

	t.Run("a dropped request's retransmissions are dropped too", func(t *testing.T) {
		h, calls := counted(silent)
		_, addr := udpServer(t, h)
		p := newPhone(t)
		msg := register(p, "z9hG4bK-flood", ";rport")
		p.send(addr, msg)
		time.Sleep(50 * time.Millisecond)
		p.send(addr, msg)
		if got := p.read(quiet); got != "" {
			t.Fatalf("dropped request answered: %q", got)
		}
		if n := calls.Load(); n != 1 {
			t.Fatalf("handler ran %d times, want 1", n)
		}
	})
}

func TestUDPOverloadDropsNewRequests(t *testing.T) {
	release := make(chan struct{})
	h, calls := counted(func(req *sip.Request, w *bytes.Buffer) int {
		<-release
		return answer(200)(req, w)
	})
	overloads := new(atomic.Int32)
	_, addr := serveUDP(t, Options{Handler: h, Workers: 1, OnRetransmission: countOverloads(overloads)})
	var unblock sync.Once
	t.Cleanup(func() { unblock.Do(func() { close(release) }) })
	p := newPhone(t)
	// One worker: the first request is being handled, the second waits, the third is dropped.
	p.send(addr, register(p, "z9hG4bK-first", ";rport"))
	time.Sleep(50 * time.Millisecond)
	p.send(addr, register(p, "z9hG4bK-second", ";rport"))
	time.Sleep(50 * time.Millisecond)
	third := register(p, "z9hG4bK-third", ";rport")
	p.send(addr, third)
	time.Sleep(50 * time.Millisecond)
	if overloads.Load() != 1 || calls.Load() != 1 {
		t.Fatalf("%d overloads, %d handled: want the third request dropped", overloads.Load(), calls.Load())
	}
	unblock.Do(func() { close(release) })
	p.read(2 * time.Second)
	p.read(2 * time.Second)
	if calls.Load() != 2 {
		t.Fatalf("the waiting request was not handled: %d handled", calls.Load())
	}
	// The dropped request is not remembered: its retransmission is handled.
	p.send(addr, third)
	if got := p.read(2 * time.Second); !strings.HasPrefix(got, "SIP/2.0 200") || calls.Load() != 3 {
		t.Fatalf("retransmission after the overload: %q, %d handled", got, calls.Load())
	}
}

// TestUDPInline: a request Inline picks is answered by the reader itself while every
// worker is busy, and its retransmission is still repeated from the cache; the others still
// go to the workers. Once more than half the queue behind the workers waits, inline requests
// are shed (the phone retransmits), so that the queued ones finish first.
func TestUDPInline(t *testing.T) {
	release := make(chan struct{})
	h, calls := counted(func(req *sip.Request, w *bytes.Buffer) int {
		if b, _ := req.Via().Params.Get("branch"); strings.Contains(b, "slow") {
			<-release
		}
		return answer(200)(req, w)
	})
	inline := func(req *sip.Request) bool {
		b, _ := req.Via().Params.Get("branch")
		return strings.Contains(b, "inline")
	}
	overloads := new(atomic.Int32)
	_, addr := serveUDP(t, Options{Handler: h, Workers: 2, Inline: inline, OnRetransmission: countOverloads(overloads)})
	var unblock sync.Once
	t.Cleanup(func() { unblock.Do(func() { close(release) }) })
	p := newPhone(t)
	p.send(addr, register(p, "z9hG4bK-slow-1", ";rport")) // both workers busy, nothing queued
	p.send(addr, register(p, "z9hG4bK-slow-2", ";rport"))
	time.Sleep(50 * time.Millisecond)
	fast := register(p, "z9hG4bK-inline-1", ";rport")
	p.send(addr, fast)
	if got := p.read(2 * time.Second); !strings.HasPrefix(got, "SIP/2.0 200") || !strings.Contains(got, "z9hG4bK-inline-1") {
		t.Fatalf("inline request while the workers are busy: %q", got)
	}
	p.send(addr, fast)
	if got := p.read(2 * time.Second); !strings.Contains(got, "z9hG4bK-inline-1") || calls.Load() != 3 {
		t.Fatalf("retransmission of the inline request: %q, %d handled (want it repeated, not handled)", got, calls.Load())
	}
	p.send(addr, register(p, "z9hG4bK-slow-3", ";rport")) // the queue (2) full
	p.send(addr, register(p, "z9hG4bK-slow-4", ";rport"))
	time.Sleep(50 * time.Millisecond)
	shed := register(p, "z9hG4bK-inline-2", ";rport")
	p.send(addr, shed)
	if got := p.read(300 * time.Millisecond); got != "" {
		t.Fatalf("an inline request was answered while the queue was full: %q", got)
	}
	if overloads.Load() != 1 || calls.Load() != 3 {
		t.Fatalf("%d overloads, %d handled: want the inline request shed", overloads.Load(), calls.Load())
	}
	unblock.Do(func() { close(release) })
	for range 4 {
		if got := p.read(2 * time.Second); !strings.Contains(got, "z9hG4bK-slow-") {
			t.Fatalf("a queued request was not answered: %q", got)
		}
	}
	// The shed request was forgotten: its retransmission is handled, inline again.
	p.send(addr, shed)
	if got := p.read(2 * time.Second); !strings.Contains(got, "z9hG4bK-inline-2") || calls.Load() != 6 {
		t.Fatalf("retransmission of the shed request: %q, %d handled (want 6)", got, calls.Load())
	}
}

// held is a request Later kept, with what answers it.
type held struct {
	req  *sip.Request
	w    *bytes.Buffer
	done func(int)
}

// TestUDPLater: a request Later keeps is answered when done is called, from another
// goroutine; while it waits its retransmissions are absorbed, and after it they get the
// same bytes. At most 2×Workers wait: beyond that new requests are shed, and while more
// than Workers wait so are the inline ones.
func TestUDPLater(t *testing.T) {
	kept := make(chan held, 16)
	var laterCalls atomic.Int32
	later := func(req *sip.Request, w *bytes.Buffer, done func(int)) int {
		laterCalls.Add(1)
		b, _ := req.Via().Params.Get("branch")
		switch {
		case strings.Contains(b, "now"): // answered at once, as a Handler would
			return answer(202)(req, w)
		case strings.Contains(b, "early"): // done before Later returns
			done(answer(200)(req, w))
			return -1
		}
		kept <- held{req, w, done}
		return -1
	}
	inline := func(req *sip.Request) bool {
		b, _ := req.Via().Params.Get("branch")
		return strings.Contains(b, "inline")
	}
	overloads := new(atomic.Int32)
	_, addr := serveUDP(t, Options{Handler: answer(200), Workers: 2, Inline: inline, Later: later, OnRetransmission: countOverloads(overloads)})
	var waiting []held
	t.Cleanup(func() { // no request left waiting: the server's Wait would hang
		for _, h := range waiting {
			h.done(0)
		}
		for {
			select {
			case h := <-kept:
				h.done(0)
			default:
				return
			}
		}
	})
	take := func() held {
		t.Helper()
		select {
		case h := <-kept:
			waiting = append(waiting, h)
			return h
		case <-time.After(2 * time.Second):
			t.Fatal("Later never got the request")
		}
		return held{}
	}
	finish := func(h held, code int) {
		for i, w := range waiting {
			if w.req == h.req {
				waiting = append(waiting[:i], waiting[i+1:]...)
			}
		}
		if code != 0 {
			answer(code)(h.req, h.w)
		}
		go h.done(code) // from another goroutine, as the hook client does
	}
	quiet := 150 * time.Millisecond
	p := newPhone(t)

	first := register(p, "z9hG4bK-later-1", ";rport")
	p.send(addr, first)
	h := take()
	p.send(addr, first)
	if got := p.read(quiet); got != "" || laterCalls.Load() != 1 {
		t.Fatalf("retransmission while waiting: %q, Later ran %d times (want it absorbed)", got, laterCalls.Load())
	}
	finish(h, 200)
	answered := p.read(2 * time.Second)
	if !strings.HasPrefix(answered, "SIP/2.0 200") || !strings.Contains(answered, "z9hG4bK-later-1") {
		t.Fatalf("later answer: %q", answered)
	}
	p.send(addr, first)
	if got := p.read(2 * time.Second); got != answered || laterCalls.Load() != 1 {
		t.Fatalf("retransmission after the answer: %q, Later ran %d times (want the same bytes, not handled)", got, laterCalls.Load())
	}

	p.send(addr, register(p, "z9hG4bK-now-1", ";rport"))
	if got := p.read(2 * time.Second); !strings.HasPrefix(got, "SIP/2.0 202") {
		t.Fatalf("an answer Later gave at once: %q", got)
	}
	p.send(addr, register(p, "z9hG4bK-early-1", ";rport"))
	if got := p.read(2 * time.Second); !strings.HasPrefix(got, "SIP/2.0 200") || !strings.Contains(got, "z9hG4bK-early-1") {
		t.Fatalf("an answer done before Later returned: %q", got)
	}

	// done(0): nothing sent, and its retransmissions get nothing either.
	silent := register(p, "z9hG4bK-later-silent", ";rport")
	p.send(addr, silent)
	finish(take(), 0)
	time.Sleep(50 * time.Millisecond)
	p.send(addr, silent)
	if got := p.read(quiet); got != "" {
		t.Fatalf("a request answered with nothing: %q", got)
	}

	// Four wait (2×Workers): the fifth is shed, and so is an inline request.
	for i := range 4 {
		p.send(addr, register(p, "z9hG4bK-later-w"+strconv.Itoa(i), ";rport"))
		take()
	}
	shed := register(p, "z9hG4bK-later-shed", ";rport")
	p.send(addr, shed)
	p.send(addr, register(p, "z9hG4bK-inline-shed", ";rport"))
	if got := p.read(quiet); got != "" || overloads.Load() != 2 {
		t.Fatalf("with 4 waiting: %q answered, %d overloads (want both shed)", got, overloads.Load())
	}
	// Two done: two wait, not more than Workers, so inline requests are answered again.
	finish(waiting[0], 200)
	finish(waiting[0], 200)
	for range 2 {
		if got := p.read(2 * time.Second); !strings.Contains(got, "z9hG4bK-later-w") {
			t.Fatalf("a waiting request's answer: %q", got)
		}
	}
	p.send(addr, register(p, "z9hG4bK-inline-ok", ";rport"))
	if got := p.read(2 * time.Second); !strings.Contains(got, "z9hG4bK-inline-ok") {
		t.Fatalf("inline request with 2 waiting: %q", got)
	}
	// The shed request was forgotten: its retransmission reaches Later.
	p.send(addr, shed)
	finish(take(), 200)
	if got := p.read(2 * time.Second); !strings.Contains(got, "z9hG4bK-later-shed") {
		t.Fatalf("retransmission of the shed request: %q", got)
	}
}

// Attack: sipgo's parser files each URI or header parameter with a search of the ones
// before it, so one 64 KiB datagram of distinct parameters cost 150 ms of CPU to parse.
// Such a datagram is now dropped before any parser sees it; an ordinary request with many
// parameters still gets through.
func TestManyParametersAreDropped(t *testing.T) {
	h, calls := counted(answer(200))
	_, addr := udpServer(t, h)
	p := newPhone(t)
	params := func(n int) string {
		var b strings.Builder
		for i := range n {
			b.WriteString(";p" + strconv.Itoa(i))
		}
		return b.String()
	}
	p.send(addr, register(p, "z9hG4bK-flood", params(9000))) // about 60 KB
	p.send(addr, register(p, "z9hG4bK-many", params(200)))
	got := p.read(2 * time.Second)
	if !strings.HasPrefix(got, "SIP/2.0 200") || !strings.Contains(got, "z9hG4bK-many") {
		t.Fatalf("the request with 200 parameters: %q", got)
	}
	if extra := p.read(200 * time.Millisecond); extra != "" || calls.Load() != 1 {
		t.Fatalf("the flood got an answer or reached the handler (%d calls): %q", calls.Load(), extra)
	}
}

// Over TCP a message may not exceed maxStreamMessage: the same quadratic parse, bounded.
// sipgo logs a message it refuses whole; its digest must not reach the log.
func TestStreamMessageSizeIsBounded(t *testing.T) {
	h, calls := counted(answer(200))
	var logged testenv.LogBuffer
	s := New(Options{Handler: h, Workers: 4, Logger: slog.New(slog.NewTextHandler(&logged, nil))})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeTCP(ln)
	t.Cleanup(func() { ln.Close(); s.Close() })
	request := func(branch, padding string) string {
		return "REGISTER sip:pbx.test SIP/2.0\r\n" +
			"Via: SIP/2.0/TCP 127.0.0.1:5070;branch=" + branch + "\r\n" +
			"From: <sip:201@pbx.test>;tag=a1\r\nTo: <sip:201@pbx.test>\r\n" +
			"Call-ID: c-" + branch + "\r\nCSeq: 1 REGISTER\r\n" +
			"Contact: <sip:201@127.0.0.1:5070;transport=tcp>\r\n" +
			`Authorization: Digest username="201", realm="pbx.test", nonce="n-secret-nonce", uri="sip:pbx.test", response="0123456789abcdef0123456789abcdef"` + "\r\n" +
			"X-Padding: " + padding + "\r\nContent-Length: 0\r\n\r\n"
	}
	exchange := func(msg string) string {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write([]byte(msg)); err != nil {
			return ""
		}
		buf := make([]byte, 4096)
		n, _ := c.Read(buf)
		return string(buf[:n])
	}
	if got := exchange(request("z9hG4bK-small", strings.Repeat("x", 4000))); !strings.HasPrefix(got, "SIP/2.0 200") {
		t.Fatalf("a 4 KiB REGISTER over TCP: %q", got)
	}
	if got := exchange(request("z9hG4bK-big", strings.Repeat("x", maxStreamMessage))); got != "" {
		t.Fatalf("a REGISTER over %d bytes was answered: %q", maxStreamMessage, got)
	}
	if calls.Load() != 1 {
		t.Fatalf("the handler ran %d times, want 1", calls.Load())
	}
	for end := time.Now().Add(time.Second); !strings.Contains(logged.String(), "failed to parse") && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
	}
	if l := logged.String(); !strings.Contains(l, "failed to parse") || strings.Contains(l, "0123456789abcdef") || strings.Contains(l, "n-secret-nonce") {
		t.Fatalf("the refused message's log line is missing or holds its digest:\n%s", l)
	}
}
