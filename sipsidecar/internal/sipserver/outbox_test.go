package sipserver

import (
	"bytes"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// testOutbox is an outbox on a loopback socket of network ("udp4", "udp6" or "udp" for a
// dual-stack wildcard socket).
func testOutbox(t *testing.T, network, addr string) *outbox {
	t.Helper()
	pc, err := net.ListenUDP(network, mustUDPAddr(t, addr))
	if err != nil {
		t.Skipf("no %s socket on %s here: %v", network, addr, err)
	}
	t.Cleanup(func() { pc.Close() })
	return newOutbox(newBatchConn(pc), slog.New(slog.NewTextHandler(io.Discard, nil)))
}

func mustUDPAddr(t *testing.T, s string) *net.UDPAddr {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

// receiver is a loopback socket that reads what an outbox sends.
func receiver(t *testing.T, addr string) (*phone, netip.AddrPort) {
	t.Helper()
	c, err := net.ListenUDP("udp", mustUDPAddr(t, addr))
	if err != nil {
		t.Skipf("no UDP socket on %s here: %v", addr, err)
	}
	c.SetReadBuffer(4 << 20)
	t.Cleanup(func() { c.Close() })
	return &phone{t: t, conn: c}, c.LocalAddr().(*net.UDPAddr).AddrPort()
}

func TestOutbox(t *testing.T) {
	t.Run("an answer on a quiet socket goes at once, in one call", func(t *testing.T) {
		o := testOutbox(t, "udp4", "127.0.0.1:0")
		p, to := receiver(t, "127.0.0.1:0")
		o.send([]byte("one"), nil, to)
		if o.calls.Load() != 1 {
			t.Fatalf("%d calls after a send, want 1", o.calls.Load())
		}
		if got := p.read(2 * time.Second); got != "one" {
			t.Fatalf("received %q", got)
		}
	})

	t.Run("held answers wait for the release and leave in one call, in order", func(t *testing.T) {
		o := testOutbox(t, "udp4", "127.0.0.1:0")
		p, to := receiver(t, "127.0.0.1:0")
		o.hold()
		for i := range 10 {
			buf := buffers.Get().(*bytes.Buffer)
			buf.Reset()
			buf.WriteString("answer-" + strconv.Itoa(i))
			o.send(buf.Bytes(), buf, to)
		}
		if o.calls.Load() != 0 || len(o.queue) != 10 {
			t.Fatalf("while held: %d calls, %d queued; want 0 and 10", o.calls.Load(), len(o.queue))
		}
		o.release()
		if o.calls.Load() != 1 || len(o.queue) != 0 {
			t.Fatalf("after the release: %d calls, %d queued; want 1 and 0", o.calls.Load(), len(o.queue))
		}
		for i := range 10 {
			if got := p.read(2 * time.Second); got != "answer-"+strconv.Itoa(i) {
				t.Fatalf("datagram %d: %q", i, got)
			}
		}
	})

	t.Run("any holder's release sends what waits, while another still holds", func(t *testing.T) {
		o := testOutbox(t, "udp4", "127.0.0.1:0")
		p, to := receiver(t, "127.0.0.1:0")
		o.hold()
		o.hold()
		o.send([]byte("x"), nil, to)
		o.release()
		if got := p.read(2 * time.Second); got != "x" {
			t.Fatalf("after one of two releases: %q, want the held answer", got)
		}
		o.send([]byte("y"), nil, to) // still held by the other
		if len(o.queue) != 1 {
			t.Fatalf("%d queued under the remaining hold, want 1", len(o.queue))
		}
		o.release()
		if got := p.read(2 * time.Second); got != "y" {
			t.Fatalf("after the last release: %q", got)
		}
	})

	t.Run("a datagram the kernel refuses is dropped, the rest still go", func(t *testing.T) {
		o := testOutbox(t, "udp4", "127.0.0.1:0")
		p, to := receiver(t, "127.0.0.1:0")
		o.hold()
		o.send([]byte("first"), nil, to)
		// An IPv6 destination from an IPv4 socket: sendmmsg fails on it.
		o.send([]byte("refused"), nil, netip.MustParseAddrPort("[2001:db8::1]:5060"))
		o.send([]byte("last"), nil, to)
		o.release()
		for _, want := range []string{"first", "last"} {
			if got := p.read(2 * time.Second); got != want {
				t.Fatalf("received %q, want %q", got, want)
			}
		}
		if got := p.read(100 * time.Millisecond); got != "" {
			t.Fatalf("unexpected %q", got)
		}
	})

	t.Run("more answers than one call carries all go", func(t *testing.T) {
		o := testOutbox(t, "udp4", "127.0.0.1:0")
		p, to := receiver(t, "127.0.0.1:0")
		n := 3*sendBatch + 5
		o.hold()
		for i := range n {
			o.send([]byte(strconv.Itoa(i)), nil, to)
		}
		o.release()
		if c := o.calls.Load(); c != 4 {
			t.Fatalf("%d calls for %d datagrams, want 4", c, n)
		}
		for i := range n {
			if got := p.read(2 * time.Second); got != strconv.Itoa(i) {
				t.Fatalf("datagram %d: %q", i, got)
			}
		}
	})

	t.Run("a dual-stack socket answers IPv4 and IPv6 phones", func(t *testing.T) {
		o := testOutbox(t, "udp", "[::]:0")
		p4, to4 := receiver(t, "127.0.0.1:0")
		p6, to6 := receiver(t, "[::1]:0")
		o.hold()
		o.send([]byte("v4"), nil, to4)
		o.send([]byte("v6"), nil, to6)
		o.release()
		if got := p4.read(2 * time.Second); got != "v4" {
			t.Fatalf("IPv4 phone got %q", got)
		}
		if got := p6.read(2 * time.Second); got != "v6" {
			t.Fatalf("IPv6 phone got %q", got)
		}
	})

	t.Run("concurrent senders and holders lose nothing", func(t *testing.T) {
		o := testOutbox(t, "udp4", "127.0.0.1:0")
		p, to := receiver(t, "127.0.0.1:0")
		const senders, each = 8, 250
		got := make(chan map[string]bool, 1)
		go func() {
			seen := map[string]bool{}
			buf := make([]byte, 64)
			for len(seen) < senders*each {
				p.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
				n, _, err := p.conn.ReadFromUDP(buf)
				if err != nil {
					break
				}
				seen[string(buf[:n])] = true
			}
			got <- seen
		}()
		var wg sync.WaitGroup
		for s := range senders {
			wg.Go(func() {
				for i := range each {
					if i%10 == 0 { // some send under a hold of their own
						o.hold()
						o.send([]byte(strconv.Itoa(s)+"-"+strconv.Itoa(i)), nil, to)
						o.release()
						continue
					}
					o.send([]byte(strconv.Itoa(s)+"-"+strconv.Itoa(i)), nil, to)
					if i%50 == 0 {
						time.Sleep(time.Millisecond) // let the receiver keep up
					}
				}
			})
		}
		wg.Wait()
		seen := <-got
		if len(seen) != senders*each {
			var missing []string
			for s := range senders {
				for i := range each {
					if k := strconv.Itoa(s) + "-" + strconv.Itoa(i); !seen[k] {
						missing = append(missing, k)
					}
				}
			}
			t.Fatalf("%d of %d datagrams arrived; missing %s", len(seen), senders*each, strings.Join(missing[:min(10, len(missing))], " "))
		}
		if len(o.queue) != 0 || o.busy || o.held != 0 {
			t.Fatalf("left behind: %d queued, busy %v, held %d", len(o.queue), o.busy, o.held)
		}
	})
}

// TestUDPReadsAndAnswersInBatches: requests that wait in the socket are read together and
// their answers leave together, in far fewer system calls than datagrams.
func TestUDPReadsAndAnswersInBatches(t *testing.T) {
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().(*net.UDPAddr)
	p := newPhone(t)
	p.conn.SetReadBuffer(4 << 20)
	const n = 40
	for i := range n { // all queued before the server reads
		p.send(addr, register(p, "z9hG4bK-batch-"+strconv.Itoa(i), ";rport"))
	}
	h, calls := counted(answer(200))
	s := New(Options{Handler: h, Workers: 4, Inline: func(*sip.Request) bool { return true }})
	done := make(chan error, 1)
	go func() { done <- s.ServeUDP(pc) }()
	t.Cleanup(func() {
		pc.Close()
		<-done
		s.Wait()
		s.Close()
	})
	got := map[string]bool{}
	for range n {
		a := p.read(2 * time.Second)
		i := strings.Index(a, "z9hG4bK-batch-")
		if !strings.HasPrefix(a, "SIP/2.0 200") || i < 0 {
			t.Fatalf("answer %d: %q", len(got), a)
		}
		got[strings.Fields(a[i:])[0]] = true
	}
	if len(got) != n || calls.Load() != n {
		t.Fatalf("%d distinct answers, handler ran %d times; want %d", len(got), calls.Load(), n)
	}
	box := (*s.boxes.Load())[0]
	if c := box.calls.Load(); c > n/4 {
		t.Fatalf("%d sendmmsg calls for %d queued requests: the answers were not sent together", c, n)
	}
}

// TestHoldAnswers: answers that Later's done sends while the server is held go out at the
// release (the hook client's hand-out of a batch of verdicts).
func TestHoldAnswers(t *testing.T) {
	kept := make(chan held, 8)
	later := func(req *sip.Request, w *bytes.Buffer, done func(int)) int {
		kept <- held{req, w, done}
		return -1
	}
	s, addr := serveUDP(t, Options{Handler: answer(200), Workers: 8, Later: later})
	p := newPhone(t)
	var hs []held
	for i := range 5 {
		p.send(addr, register(p, "z9hG4bK-held-"+strconv.Itoa(i), ";rport"))
		select {
		case h := <-kept:
			hs = append(hs, h)
		case <-time.After(2 * time.Second):
			t.Fatal("Later never got the request")
		}
	}
	box := (*s.boxes.Load())[0]
	hold := s.HoldAnswers()
	for _, h := range hs {
		h.done(answer(200)(h.req, h.w))
	}
	box.mu.Lock()
	queued := len(box.queue)
	box.mu.Unlock()
	if queued != 5 {
		t.Fatalf("%d answers queued while held, want 5", queued)
	}
	before := box.calls.Load()
	hold.Release()
	if c := box.calls.Load() - before; c != 1 {
		t.Fatalf("%d calls at the release, want 1", c)
	}
	for i := range 5 {
		if a := p.read(2 * time.Second); !strings.Contains(a, "z9hG4bK-held-"+strconv.Itoa(i)) {
			t.Fatalf("answer %d: %q", i, a)
		}
	}
}
