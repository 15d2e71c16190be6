// Package registrar turns SIP requests into responses: REGISTER per RFC 3261 §10.3 with
// digest authentication decided by an HTTP hook, OPTIONS, and 405 for the rest. Handle is a
// plain function of the request and its observed source; the sipgo shell in main only moves
// messages.
package registrar

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/internal/sipdigest"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/authhook"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/digest"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

// Config holds the registrar's rules.
type Config struct {
	Realm string // digest realm; empty: the To host of each REGISTER
	// Domains served, lower case: a REGISTER whose To or Request-URI host is another gets
	// 404 (RFC 3261 §10.3 steps 1 and 5). Empty: any, so an authenticated user may create
	// bindings under any domain.
	Domains        []string
	DefaultExpires int // seconds, when the phone names none (3600)
	MinExpires     int // below this (and above 0): 423 (60)
	MaxExpires     int // granted expiry is clamped to this (7200)
	NATExpires     int // what a NATed phone is told, so it refreshes its pinhole (30)
	MaxContacts    int // bindings per AOR (10)
	// Digest algorithms offered, one WWW-Authenticate each, most preferred first
	// (default SHA-256, MD5 as RFC 8760 §2.4 asks). Phones that read only the first
	// challenge and know only MD5 (SIPp, older devices) need MD5 first.
	Algorithms []string
	RetryAfter int    // seconds in Retry-After of a 503 (5)
	ServerName string // Server header
}

// Source is where a request came from, as observed on the socket.
type Source struct {
	IP        string
	Port      int
	Transport string // udp, tcp, tls, ws, wss
}

// Addr is ip:port.
func (s Source) Addr() string {
	if strings.Contains(s.IP, ":") {
		return "[" + s.IP + "]:" + strconv.Itoa(s.Port)
	}
	return s.IP + ":" + strconv.Itoa(s.Port)
}

// Hook decides a digest (authhook.Client).
type Hook interface {
	Check(ctx context.Context, r authhook.Request) (authhook.Verdict, error)
}

// LaterHook is a Hook that can also hand its verdict to a function instead of a waiting
// caller (authhook.Client.CheckLater): then runs exactly once, from any goroutine.
type LaterHook interface {
	Hook
	CheckLater(r authhook.Request, then func(authhook.Verdict, error))
}

// Events hears about registration changes. It must not block: the presence publisher and the
// webhooks queue and return.
type Events interface {
	Registered(b location.Binding)
	Unregistered(b location.Binding)
	Expired(bs []location.Binding)
}

// Metrics counts outcomes; every method must be safe to call on a nil receiver's behalf
// (the registrar checks for nil).
type Metrics interface {
	Register(result string)
	Dropped(reason string)
}

// Registrar answers SIP requests.
type Registrar struct {
	cfg     Config
	store   location.Store
	defer_  location.Deferred // the store, when its writes can finish without a goroutine waiting
	nonces  *digest.Nonces
	hook    Hook
	events  Events
	metrics Metrics
	guard   *Guard
	log     *slog.Logger
	now     func() time.Time
}

// Options wire a Registrar.
type Options struct {
	Config  Config
	Store   location.Store
	Nonces  *digest.Nonces
	Hook    Hook
	Events  Events  // nil: none
	Metrics Metrics // nil: none
	Guard   *Guard  // nil: no rate limits or bans
	Logger  *slog.Logger
	Now     func() time.Time
}

// New returns a Registrar with defaults filled in.
func New(o Options) *Registrar {
	c := o.Config
	if c.DefaultExpires <= 0 {
		c.DefaultExpires = 3600
	}
	if c.MinExpires <= 0 {
		c.MinExpires = 60
	}
	if c.MaxExpires <= 0 {
		c.MaxExpires = 7200
	}
	if c.NATExpires <= 0 {
		c.NATExpires = 30
	}
	if c.MaxContacts <= 0 {
		c.MaxContacts = 10
	}
	if len(c.Algorithms) == 0 {
		c.Algorithms = []string{sipdigest.SHA256, sipdigest.MD5}
	}
	if c.RetryAfter <= 0 {
		c.RetryAfter = 5
	}
	if c.ServerName == "" {
		c.ServerName = "softphone-gateway sipsidecar"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	d, _ := o.Store.(location.Deferred)
	return &Registrar{cfg: c, store: o.Store, defer_: d, nonces: o.Nonces, hook: o.Hook, events: o.Events,
		metrics: o.Metrics, guard: o.Guard, log: o.Logger, now: o.Now}
}

// allowed is the Allow header of every answer.
const allowed = "REGISTER, OPTIONS"

// Handle answers req into w and returns the status code it wrote; 0 means it wrote
// nothing and nothing is to be sent (ACK, a scanner, a flood).
func (r *Registrar) Handle(ctx context.Context, req *sip.Request, src Source, w *bytes.Buffer) int {
	return r.finish(w, req, r.handle(ctx, req, src, nil))
}

// Waiting is what HandleLater returns for a request it answers later.
const Waiting = -1

// HandleLater is Handle for a caller that need not wait for the auth hook. A REGISTER
// whose verdict comes from the hook (a LaterHook) returns Waiting at once: its answer is
// written into w later and done gets its status code (or 0), exactly once, from the
// goroutine that finished it, which may be before HandleLater returns. With a store that
// never waits (memory), that is the goroutine that heard the verdict, which also runs the
// store update. With a Deferred store (Redis) the verdict's goroutine only starts the
// update, and the goroutine that reads the store's answer finishes the REGISTER; an auth
// failure is then reported to the guard (whose Bans wait too) on a goroutine of its own.
// Everything else is answered as Handle does, and done is not called: with a store or Bans
// that wait, callers give HandleLater only a REGISTER with credentials from a source whose
// ban state is remembered (KnowsSource).
func (r *Registrar) HandleLater(ctx context.Context, req *sip.Request, src Source, w *bytes.Buffer, done func(code int)) int {
	a := r.handle(ctx, req, src, &later{w: w, done: done})
	if a == waiting {
		return Waiting
	}
	return r.finish(w, req, a)
}

// later is where an answer decided after the hook's verdict goes.
type later struct {
	w    *bytes.Buffer
	done func(code int)
}

// waiting is register's answer when the hook's verdict will bring the real one.
var waiting = &answer{}

// finish writes a into w and returns its code; nil writes nothing and returns 0.
func (r *Registrar) finish(w *bytes.Buffer, req *sip.Request, a *answer) int {
	if a == nil {
		return 0
	}
	r.write(w, req, a)
	return a.code
}

func (r *Registrar) handle(ctx context.Context, req *sip.Request, src Source, lt *later) *answer {
	if req.IsAck() {
		return nil
	}
	if !routable(req) {
		r.drop("unroutable") // nowhere to send an answer
		return nil
	}
	if reason := r.guard.admit(ctx, req, src, r.now()); reason != "" {
		r.drop(reason)
		return nil
	}
	if !strings.EqualFold(req.SipVersion, "SIP/2.0") {
		r.count("bad_request")
		return r.reply(505, "Version Not Supported")
	}
	if tags := required(req); tags != "" {
		// RFC 3261 §8.2.2.3 (§10.3 step 2 for a registrar): an extension the request
		// requires and this one does not support (it supports none, Path among them) fails
		// the request, so that a proxy relying on it learns it was not applied.
		r.count("bad_extension")
		return r.reply(420, "Bad Extension").add("Unsupported", tags)
	}
	switch req.Method {
	case sip.REGISTER:
		return r.register(ctx, req, src, lt)
	case sip.OPTIONS:
		r.count("options")
		return r.reply(200, "OK").add("Accept", "application/sdp")
	}
	r.count("not_allowed")
	return r.reply(405, "Method Not Allowed")
}

// required is the option tags of req's Require headers, comma-separated, "" for none: at
// most 256 bytes of them (each cut to 128), which are written back in Unsupported.
func required(req *sip.Request) string {
	var buf [2]sip.Header
	var b strings.Builder
	for _, h := range headers(req, "require", buf[:0]) {
		for t := range strings.SplitSeq(h.Value(), ",") {
			if t = headerSafe(t); t == "" {
				continue
			}
			if b.Len() > 0 {
				if b.Len()+2+len(t) > 256 {
					return b.String()
				}
				b.WriteString(", ")
			}
			b.WriteString(t)
		}
	}
	return b.String()
}

// AsksHook says whether Handle may call the hook for req: a REGISTER with credentials.
// Everything else is answered from the guard, the nonces and the store alone.
func AsksHook(req *sip.Request) bool {
	return req.Method == sip.REGISTER && header(req, "authorization") != nil
}

// Immediate says whether Handle would answer req from this process alone, with neither
// the hook nor a round trip to a shared store or ban list (Redis): so that the reader that
// parsed it may answer it without a hand-off to a worker, in the same batch of datagrams as
// the others it read. With Redis that is an OPTIONS, a bad REGISTER, and the challenge of a
// REGISTER without credentials whose AOR this sidecar knows and that is no NAT refresh,
// from a source whose ban state it remembers. It is a forecast: what it looked at may
// change before Handle runs (another goroutine's write, a remembered ban state running
// out), and then Handle waits for that one round trip.
func (r *Registrar) Immediate(req *sip.Request, src Source) bool {
	if AsksHook(req) || !r.guard.knows(src.IP, r.now()) {
		return false
	}
	if req.Method != sip.REGISTER {
		return true
	}
	rq, bad := r.parse(req)
	if bad != nil || !mayRefresh(rq) {
		return true // answered, or challenged, from the request alone
	}
	existing, known := r.store.Recall(rq.aor, r.now())
	return known && !refreshes(existing, rq, src)
}

// KnowsSource says whether the guard decides on src without asking its Bans (always, with
// bans in memory).
func (r *Registrar) KnowsSource(src Source) bool { return r.guard.knows(src.IP, r.now()) }

// routable says whether an answer to req can be written and routed: it has a Via, and every
// Via names its protocol, version, transport and host (RFC 3261 §18.2.2 sends the answer by
// them). sipgo's parser lets empty ones through.
func routable(req *sip.Request) bool {
	found := false
	for _, h := range req.Headers() {
		if via, ok := h.(*sip.ViaHeader); ok {
			if via.ProtocolName == "" || via.ProtocolVersion == "" || via.Transport == "" || via.Host == "" {
				return false
			}
			found = true
		}
	}
	return found
}

func (r *Registrar) drop(reason string) {
	if r.metrics != nil {
		r.metrics.Dropped(reason)
	}
}

func (r *Registrar) count(result string) {
	if r.metrics != nil {
		r.metrics.Register(result)
	}
}

// tags hands out To tags: 64 random bits each (RFC 3261 §19.3 asks for at least 32),
// hex-encoded, from a buffer crypto/rand refills.
var tags struct {
	sync.Mutex
	buf [1024]byte
	off int
}

// writeTag writes a fresh tag.
func writeTag(w *bytes.Buffer) {
	var b [8]byte
	tags.Lock()
	if tags.off == 0 || tags.off+len(b) > len(tags.buf) {
		rand.Read(tags.buf[:]) // never fails (crypto/rand panics rather than return short)
		tags.off = 0
	}
	copy(b[:], tags.buf[tags.off:tags.off+len(b)])
	clear(tags.buf[tags.off : tags.off+len(b)]) // a tag is handed out once
	tags.off += len(b)
	tags.Unlock()
	w.Write(hex.AppendEncode(w.AvailableBuffer(), b[:]))
}

// unavailable is a 503 with Retry-After: the phone tries again later, nothing was stored.
func (r *Registrar) unavailable() *answer {
	return r.reply(503, "Service Unavailable").add("Retry-After", strconv.Itoa(r.cfg.RetryAfter))
}

// RunExpiry removes expired bindings every interval until ctx ends and reports them.
func (r *Registrar) RunExpiry(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for range 100 { // bounded: at most 100 batches per tick
				gone, err := r.store.Expire(ctx, r.now(), 500)
				if err != nil {
					r.log.Warn("expiring bindings", "err", err)
					break
				}
				if len(gone) > 0 && r.events != nil {
					r.events.Expired(gone)
				}
				if len(gone) < 500 {
					break
				}
			}
		}
	}
}
