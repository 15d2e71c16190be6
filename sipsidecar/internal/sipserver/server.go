// Package sipserver moves SIP requests from the sockets to a handler and its answers back,
// with the server side of RFC 3261's non-INVITE transactions done cheaply.
//
// A registrar answers every request with one final response and keeps no dialog, so a
// full transaction machine per request (sipgo's: a goroutine, a state machine and timers
// that live 32 s) is mostly cost. Over UDP this package reads and writes many datagrams to
// a system call (recvmmsg, sendmmsg: outbox.go), with a fixed set of workers, parses the
// plain requests phones send itself (parse.go) and the rest with sipgo's parser, into
// sipgo's message types, and keeps only what RFC 3261 §17.2.2 needs: a retransmitted
// request whose transaction is still being handled is absorbed, and one whose transaction
// completed gets the same response bytes again for Timer J (32 s). TCP and WebSocket go
// through sipgo's transport layer (connection handling, stream framing); they are reliable,
// so a completed transaction has nothing to remember (Timer J is 0).
package sipserver

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"
	"golang.org/x/net/ipv4"
)

// Handler writes its answer to req into w, a whole SIP message, and returns its status code;
// 0 means it wrote nothing and nothing is sent.
type Handler func(req *sip.Request, w *bytes.Buffer) int

// Options configure a Server.
type Options struct {
	Handler Handler
	// Workers is how many requests are handled at once per UDP listener (as many again may
	// wait) and over the stream transports (each waits for the store and the auth hook in
	// turn). Default 1024.
	Workers int
	// CacheBytes bounds the memory of remembered UDP answers. Default 128 MiB.
	CacheBytes int
	Logger     *slog.Logger
	// OnRetransmission hears of every UDP request answered without the handler:
	// "absorbed" (a retransmission still being handled, or answered with nothing),
	// "repeated" (the same answer sent again) or "overload" (a new request dropped because
	// Workers are busy). May be nil.
	OnRetransmission func(kind string)
	Now              func() time.Time
	// Inline, when set and true for a new UDP request, has the reader that parsed it handle
	// it too, sparing a hand-off to a worker: for requests whose handling never waits (a
	// challenge from an in-memory store). May be nil.
	Inline func(req *sip.Request) bool
	// Later, when set, has the reader also handle the new UDP requests Inline does not
	// pick, through Later instead of Handler and without a worker. Later answers as Handler
	// does, or returns a negative code, keeps w, and calls done exactly once when the answer
	// is in w, with its status code (0: none), from any goroutine and perhaps before it
	// returns. At most 2×Workers requests wait for such answers: beyond that new requests
	// are shed, and while more than Workers wait so are those Inline picks. May be nil.
	Later func(req *sip.Request, w *bytes.Buffer, done func(code int)) int
}

// Server serves SIP over UDP, TCP and WebSocket.
type Server struct {
	handler Handler
	workers int
	log     *slog.Logger
	onRetx  func(string)
	inline  func(*sip.Request) bool
	later   func(*sip.Request, *bytes.Buffer, func(int)) int
	waiting atomic.Int64 // UDP requests waiting for a later answer
	now     func() time.Time
	parser  *sip.Parser
	tx      *txCache

	boxMu sync.Mutex
	boxes atomic.Pointer[[]*outbox] // one per UDP socket served

	tp      *sip.TransportLayer // TCP and WebSocket
	streams chan struct{}       // stream requests being handled
	running sync.WaitGroup      // handlers under way
}

// New returns a Server.
func New(o Options) *Server {
	if o.Workers <= 0 {
		o.Workers = 1024
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.OnRetransmission == nil {
		o.OnRetransmission = func(string) {}
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	s := &Server{
		handler: o.Handler, workers: o.Workers, log: o.Logger, onRetx: o.OnRetransmission, inline: o.Inline, later: o.Later, now: o.Now,
		parser: sip.NewParser(), tx: newTxCache(o.CacheBytes), streams: make(chan struct{}, o.Workers),
	}
	streamParser := sip.NewParser()
	streamParser.MaxMessageLength = maxStreamMessage
	s.tp = sip.NewTransportLayer(net.DefaultResolver, streamParser, nil, sip.WithTransportLayerLogger(slog.New(redacting{o.Logger.Handler()})))
	s.tp.OnMessage(s.onStreamMessage)
	return s
}

// ServeUDP reads requests from pc until it is closed: a few readers read up to readBatch
// datagrams at a time, send the answers they give together, parse datagrams and
// answer retransmissions, answer the new requests Inline picks themselves, hand the others
// to Later when it is set, and else to one of Workers workers, with as many again waiting. Beyond that a
// request is dropped (the phone retransmits), so a flood cannot pile up work, and readers
// never wait for the store or the hook, so the socket is drained while requests wait for
// their verdicts.
func (s *Server) ServeUDP(pc *net.UDPConn) error {
	// A burst of answers from a batch of verdicts brings a burst of requests back: room
	// for a few thousand datagrams (the kernel caps it at net.core.rmem_max).
	pc.SetReadBuffer(udpReadBuffer)
	box := newOutbox(newBatchConn(pc), s.log)
	s.addOutbox(box)
	// Long-lived workers rather than a goroutine per request: a new goroutine grows its
	// stack through the registrar, the store and the hook client again every time (6% of
	// the CPU at 14,000 REGISTERs/s).
	jobs := make(chan udpJob, s.workers) // as many may wait as are being handled
	var workers sync.WaitGroup
	nworkers := s.workers
	if s.later != nil {
		nworkers = 0 // every request goes to Inline or Later
	}
	for range nworkers {
		workers.Go(func() {
			for j := range jobs {
				s.udpRequest(box, j.req, j.from, j.key)
				s.running.Done()
			}
		})
	}
	var wg sync.WaitGroup
	readers := max(2, runtime.GOMAXPROCS(0))
	errs := make(chan error, readers)
	for range readers {
		wg.Go(func() { errs <- s.readUDP(box, jobs) })
	}
	wg.Wait()
	close(jobs)
	workers.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

const (
	maxDatagram   = 65507 // the largest UDP payload
	udpReadBuffer = 4 << 20
	// maxParams bounds the URI and header parameters (';' and '&') of a request, and
	// maxStreamMessage the size of one over TCP or WebSocket: sipgo's parser takes time
	// quadratic in the parameters of one list. A REGISTER has about ten.
	maxParams        = 256
	maxStreamMessage = 8 << 10
)

var semicolon, ampersand = []byte{';'}, []byte{'&'}

// udpJob is a new UDP request on its way to a worker.
type udpJob struct {
	req  *sip.Request
	from netip.AddrPort
	key  string
}

// readUDP reads up to readBatch datagrams at a time from box's socket and handles them,
// holding box back meanwhile so that their answers leave together.
func (s *Server) readUDP(box *outbox, jobs chan<- udpJob) error {
	var msgs [readBatch]ipv4.Message
	buf := make([]byte, readBatch*(maxDatagram+1))
	for i := range msgs {
		msgs[i].Buffers = [][]byte{buf[i*(maxDatagram+1) : (i+1)*(maxDatagram+1)]}
	}
	for {
		n, err := box.bc.ReadBatch(msgs[:], 0)
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return err
		}
		box.hold()
		for i := range n {
			m := &msgs[i]
			from, ok := m.Addr.(*net.UDPAddr)
			if !ok {
				continue
			}
			ip, ok := netip.AddrFromSlice(from.IP)
			if !ok {
				continue
			}
			s.datagram(box, jobs, m.Buffers[0][:m.N], ip.Unmap().WithZone(from.Zone), uint16(from.Port))
		}
		box.release()
	}
}

// datagram reads one UDP datagram and starts its handling.
func (s *Server) datagram(box *outbox, jobs chan<- udpJob, data []byte, ip netip.Addr, port uint16) {
	if len(bytes.Trim(data, "\r\n\x00 \t")) == 0 {
		return // keep-alive (RFC 5626 §3.5.1 CRLF, or padding)
	}
	if bytes.Count(data, semicolon)+bytes.Count(data, ampersand) > maxParams {
		// sipgo files every parameter with a search of those before it: 11,000 of them in one
		// datagram took 145-190 ms to parse (TestManyParametersAreDropped). No phone sends this.
		s.log.Debug("datagram with too many parameters", "source", netip.AddrPortFrom(ip, port).String(), "bytes", len(data))
		return // as an unparsable one
	}
	req := parseRequest(data) // the plain shape, cheaply; anything else through sipgo
	if req == nil {
		msg, err := s.parser.ParseSIP(data)
		if err != nil {
			// Never the datagram itself: it may carry a digest response.
			s.log.Debug("unparsable datagram", "source", netip.AddrPortFrom(ip, port).String(), "bytes", len(data), "err", err)
			return
		}
		r, ok := msg.(*sip.Request)
		if !ok {
			return // a registrar sends no requests, so it expects no responses
		}
		req = r
	}
	if req.IsAck() {
		return // it answers nothing it would need an ACK for
	}
	from := netip.AddrPortFrom(ip, port)
	source := from.String()
	req.SetTransport("UDP")
	req.SetSource(source)

	key := transactionKey(req, source)
	if key != "" {
		switch v, answer := s.tx.begin(key, s.now()); v {
		case absorbed:
			s.onRetx("absorbed")
			return
		case repeat:
			s.onRetx("repeated")
			box.send(answer, nil, responseAddr(req, from))
			return
		}
	}
	if s.inline != nil && s.inline(req) {
		// Under overload new work is shed first: while half the queue waits (or more than
		// Workers wait for later answers), the requests behind it finish what phones started
		// (credentials after a challenge) instead of the reader answering more challenges
		// whose answers would only join the queue.
		if len(jobs) > cap(jobs)/2 || s.waiting.Load() > int64(s.workers) {
			s.shed(key)
			return
		}
		s.running.Add(1)
		s.udpRequest(box, req, from, key)
		s.running.Done()
		return
	}
	if s.later != nil {
		if s.waiting.Load() >= 2*int64(s.workers) {
			s.shed(key)
			return
		}
		s.running.Add(1)
		s.waiting.Add(1)
		s.udpLater(box, req, from, key)
		return
	}
	s.running.Add(1)
	select {
	case jobs <- udpJob{req: req, from: from, key: key}:
	default:
		s.running.Done()
		s.shed(key)
	}
}

// shed drops a new request unanswered (the phone retransmits) and counts it as overload.
func (s *Server) shed(key string) {
	if key != "" {
		s.tx.abandon(key)
	}
	s.onRetx("overload")
}

var buffers = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// udpRequest handles a new request and sends (and remembers) its answer.
func (s *Server) udpRequest(box *outbox, req *sip.Request, from netip.AddrPort, key string) {
	out := buffers.Get().(*bytes.Buffer)
	out.Reset()
	s.sendUDP(box, req, from, key, out, s.handler(req, out))
}

// udpLater hands a new request to Later; its answer is sent when it comes.
func (s *Server) udpLater(box *outbox, req *sip.Request, from netip.AddrPort, key string) {
	out := buffers.Get().(*bytes.Buffer)
	out.Reset()
	l := &laterUDP{s: s, box: box, req: req, from: from, key: key, out: out}
	if code := s.later(req, out, l.done); code >= 0 {
		l.done(code)
	}
}

// laterUDP is a request waiting for its answer from Later.
type laterUDP struct {
	s    *Server
	box  *outbox
	req  *sip.Request
	from netip.AddrPort
	key  string
	out  *bytes.Buffer
}

func (l *laterUDP) done(code int) {
	// No longer waiting once its answer is in hand, before that answer leaves: the phone
	// that gets it (or another goroutine that sends it along with its own) may send the
	// next request before this goroutine goes on, and that one must not be shed for it.
	l.s.waiting.Add(-1)
	l.s.sendUDP(l.box, l.req, l.from, l.key, l.out, code)
	l.s.running.Done()
}

// sendUDP sends (and remembers) the answer with code in out; 0 sends nothing. out is the
// outbox's from here: back to the pool once sent.
func (s *Server) sendUDP(box *outbox, req *sip.Request, from netip.AddrPort, key string, out *bytes.Buffer, code int) {
	if code == 0 {
		if key != "" {
			s.tx.finish(key, nil, s.now())
		}
		buffers.Put(out)
		return
	}
	if out.Len() > maxDatagram {
		s.log.Warn("answer larger than a datagram, not sent", "status", code, "bytes", out.Len())
		if key != "" {
			s.tx.abandon(key)
		}
		buffers.Put(out)
		return
	}
	// Remembered before it is sent: a retransmission that crosses the answer on the wire
	// then gets it again instead of being absorbed.
	if key != "" {
		if remember(code) {
			s.tx.finish(key, out.Bytes(), s.now())
		} else {
			s.tx.abandon(key)
		}
	}
	box.send(out.Bytes(), out, responseAddr(req, from))
}

func (s *Server) addOutbox(box *outbox) {
	s.boxMu.Lock()
	defer s.boxMu.Unlock()
	var boxes []*outbox
	if p := s.boxes.Load(); p != nil {
		boxes = append(boxes, *p...)
	}
	boxes = append(boxes, box)
	s.boxes.Store(&boxes)
}

// Held is UDP answers held back by HoldAnswers.
type Held struct{ boxes []*outbox }

// HoldAnswers holds back the UDP answers sent from now on (by any goroutine) until Release,
// so that they leave in as few system calls as possible: the goroutine that hands out a
// batch of hook verdicts, whose done calls each send one answer, holds them over the
// hand-out. Every Release sends all that waits, whoever else holds.
func (s *Server) HoldAnswers() Held {
	p := s.boxes.Load()
	if p == nil {
		return Held{}
	}
	for _, b := range *p {
		b.hold()
	}
	return Held{boxes: *p}
}

// Release ends the hold and sends what it held.
func (h Held) Release() {
	for _, b := range h.boxes {
		b.release()
	}
}

// remember says whether a final answer is kept for retransmissions. A challenge and a 503
// are answered afresh: handling the request again has no effect and gives the phone a
// fresh nonce or another try. Everything else may have changed state or counted a failure,
// so a retransmission must see the same answer instead of being handled twice.
func remember(code int) bool {
	return code >= 200 && code != 401 && code != 407 && code != 503
}

// transactionKey identifies a request's server transaction (RFC 3261 §17.2.3): the top
// Via's branch and sent-by, and the method; plus the source address, so a datagram from
// elsewhere never gets another phone's answer. A branch without the RFC 3261 magic cookie
// gives "": such a request is handled on its own every time.
func transactionKey(req *sip.Request, source string) string {
	via := req.Via()
	if via == nil {
		return ""
	}
	branch, _ := via.Params.Get("branch")
	if !strings.HasPrefix(branch, sip.RFC3261BranchMagicCookie) || len(branch) > 256 {
		return ""
	}
	var buf [512]byte // on the stack: only the key itself is allocated
	b := append(buf[:0], req.Method...)
	b = append(b, ' ')
	b = append(b, branch...)
	b = append(b, ' ')
	b = append(b, via.Host...)
	b = append(b, ':')
	b = strconv.AppendInt(b, int64(via.Port), 10)
	b = append(b, ' ')
	b = append(b, source...)
	return string(b)
}

// responseAddr is where a UDP answer goes (RFC 3261 §18.2.2 with RFC 3581): the source
// address, and the source port when the phone asked for rport, else its Via port.
func responseAddr(req *sip.Request, from netip.AddrPort) netip.AddrPort {
	via := req.Via()
	if via == nil || via.Params.Has("rport") {
		return from
	}
	port := via.Port
	if port <= 0 || port > 65535 {
		port = 5060
	}
	return netip.AddrPortFrom(from.Addr(), uint16(port))
}

// ServeTCP serves SIP over TCP on ln until it is closed. A connection that sends a message
// with more than maxParams parameters is closed before it is parsed (see guardListener).
func (s *Server) ServeTCP(ln net.Listener) error { return s.tp.ServeTCP(guardListener{Listener: ln}) }

// ServeWS serves SIP over WebSocket (RFC 7118) on ln until it is closed, with the same bound
// as ServeTCP.
func (s *Server) ServeWS(ln net.Listener) error {
	return s.tp.ServeWS(guardListener{Listener: ln, ws: true})
}

// onStreamMessage runs in a connection's read loop. Requests are handled beside it while
// fewer than Workers are under way, and in it beyond that, so a flood on one connection
// slows that connection's reading instead of piling up goroutines.
func (s *Server) onStreamMessage(msg sip.Message) {
	req, ok := msg.(*sip.Request)
	if !ok || req.IsAck() {
		return
	}
	s.running.Add(1)
	select {
	case s.streams <- struct{}{}:
		go func() {
			defer func() { <-s.streams }()
			s.stream(req)
		}()
	default:
		s.stream(req)
	}
}

func (s *Server) stream(req *sip.Request) {
	defer s.running.Done()
	out := buffers.Get().(*bytes.Buffer)
	defer buffers.Put(out)
	out.Reset()
	if s.handler(req, out) == 0 {
		return
	}
	if err := s.writeStream(req, out.Bytes()); err != nil {
		s.log.Debug("sending answer", "transport", req.Transport(), "err", err)
	}
}

// writeStream sends an answer back on the connection its request came in on (RFC 3261
// §18.2.2), as sipgo's TransportLayer.WriteMsg does for a Response: its TCP, TLS, WS and
// WSS connections frame what they are given in Write.
func (s *Server) writeStream(req *sip.Request, answer []byte) error {
	conn, err := s.tp.GetConnection(req.Transport(), req.Source())
	if err != nil {
		return err
	}
	defer conn.TryClose()
	w, ok := conn.(io.Writer)
	if !ok {
		return fmt.Errorf("%s connection %T cannot write", req.Transport(), conn)
	}
	_, err = w.Write(answer)
	return err
}

// Wait returns when no handler is running (after the listeners are closed).
func (s *Server) Wait() { s.running.Wait() }

// Close closes the stream connections.
func (s *Server) Close() error { return s.tp.Close() }

// CacheStats reports the remembered UDP answers, the transactions in flight and the bytes
// the answers take.
func (s *Server) CacheStats() (answers, inflight, bytes int) { return s.tx.stats() }
