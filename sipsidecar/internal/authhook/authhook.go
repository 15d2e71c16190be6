// Package authhook asks an HTTP service whether a REGISTER's digest is right: the jambonz
// callback contract. The registrar never sees a password; the hook recomputes the response.
package authhook

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	neturl "net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/coalesce"
)

// Request is the callback body (jambonz contract plus the observed source).
type Request struct {
	Method        string `json:"method"`
	Expires       int    `json:"expires"`
	Scheme        string `json:"scheme"`
	Username      string `json:"username"`
	Realm         string `json:"realm"`
	Nonce         string `json:"nonce"`
	URI           string `json:"uri"`
	Response      string `json:"response"`
	QOP           string `json:"qop,omitempty"`
	NC            string `json:"nc,omitempty"`
	CNonce        string `json:"cnonce,omitempty"`
	Algorithm     string `json:"algorithm"`
	SourceAddress string `json:"source_address"`
	SourcePort    int    `json:"source_port"`
}

// Verdict is the hook's answer.
type Verdict struct {
	OK             bool
	Msg            string
	Expires        int // 0: not given
	CallHook       string
	CallStatusHook string
	DisplayName    string
}

type answer struct {
	Status         string `json:"status"`
	Msg            string `json:"msg"`
	Expires        *int   `json:"expires"`
	CallHook       string `json:"call_hook"`
	CallStatusHook string `json:"call_status_hook"`
	DisplayName    string `json:"display_name"`
}

// ErrUnavailable: the hook gave no verdict (non-200, timeout, unreachable, garbage, or too
// many callbacks already in flight). The registrar answers 503 and stores nothing.
var ErrUnavailable = errors.New("authhook: no verdict")

// maxAnswer bounds the hook's answer.
const maxAnswer = 16 << 10

// Client calls the hook. Safe for concurrent use.
type Client struct {
	url       string
	secret    []byte
	user      string
	password  string
	http      *http.Client
	slots     chan struct{}
	queueWait time.Duration
	timeout   time.Duration
	now       func() time.Time
	maxBatch  int
	batch     atomic.Int32 // callbacks per request the hook takes; <= 1: one at a time

	handOut func(deliver func())

	batches *coalesce.Queue[*pending] // callbacks waiting for a batch
	posts   atomic.Uint64             // HTTP requests sent
}

// Requests is the number of HTTP requests sent to the hook so far (one carries a batch).
func (c *Client) Requests() uint64 { return c.posts.Load() }

// BatchHeader is the answer header by which a hook says it takes a JSON array of callback
// bodies, up to the number it gives, and answers with an array of answers in order. Our
// gateway sends it; a jambonz hook does not, and gets one callback per request.
const BatchHeader = "Softphone-Auth-Batch"

// Options configure a Client.
type Options struct {
	URL         string
	Secret      string        // HMAC-SHA256 signing secret (Jambonz-Signature); empty: unsigned
	Username    string        // Basic auth, when set
	Password    string        //
	Timeout     time.Duration // per callback; default 2s
	Concurrency int           // callbacks in flight at most; default 128
	QueueWait   time.Duration // how long a callback may wait for a free slot; default 250ms
	// MaxBatch bounds the callbacks sent in one request once the hook offers batches
	// (BatchHeader); default 256, 1 never batches.
	MaxBatch int
	// BatchWait is how long a batch smaller than the hook takes waits for more callbacks,
	// from its oldest one; 0 sends it as soon as a request can go.
	BatchWait time.Duration
	// HandOut, when set, runs deliver, which hands one batch's verdicts to their CheckLater
	// callers one after the other: the sidecar holds its UDP answers back over it, so that
	// they leave together.
	HandOut func(deliver func())
	Now     func() time.Time
}

// New returns a client.
func New(o Options) (*Client, error) {
	u, err := neturl.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("auth hook URL %q is not an http(s) URL", o.URL)
	}
	if o.Timeout <= 0 {
		o.Timeout = 2 * time.Second
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 128
	}
	if o.QueueWait <= 0 {
		o.QueueWait = 250 * time.Millisecond
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.MaxBatch <= 0 {
		o.MaxBatch = 256
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = o.Concurrency
	tr.ResponseHeaderTimeout = o.Timeout
	c := &Client{
		url:       o.URL,
		secret:    []byte(o.Secret),
		user:      o.Username,
		password:  o.Password,
		http:      &http.Client{Timeout: o.Timeout, Transport: tr, CheckRedirect: noRedirects},
		slots:     make(chan struct{}, o.Concurrency),
		queueWait: o.QueueWait,
		timeout:   o.Timeout,
		now:       o.Now,
		maxBatch:  o.MaxBatch,
		handOut:   o.HandOut,
	}
	c.batches = &coalesce.Queue[*pending]{
		Send:      c.sendBatch,
		Limit:     func() int { return min(int(c.batch.Load()), c.maxBatch) },
		Senders:   batchSenders,
		Wait:      o.BatchWait,
		MaxQueued: o.Concurrency * o.MaxBatch,
	}
	return c, nil
}

func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

// InFlight is the number of callbacks under way.
func (c *Client) InFlight() int { return len(c.slots) }

// Sign returns the Jambonz-Signature value for body at t.
func Sign(secret []byte, body []byte, t time.Time) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return "t=" + ts + ",v1=" + hex.EncodeToString(m.Sum(nil))
}

// Check asks the hook. A fail verdict is a Verdict with OK false and a nil error; every way
// of getting no verdict is an error wrapping ErrUnavailable. When the configured number of
// callbacks is already in flight it waits at most QueueWait for a slot (a burst is smoothed,
// a flood is refused), so the hook never sees more than that number at once.
//
// Once the hook has said it takes batches (the BatchHeader on an answer), callbacks that
// arrive while others are on the wire travel together in one request: a JSON array of
// bodies, answered by an array of answers in the same order. Then at most batchSenders
// requests are in flight, and at most Concurrency×MaxBatch callbacks wait for one.
func (c *Client) Check(ctx context.Context, r Request) (Verdict, error) {
	if c.batch.Load() > 1 {
		// At most batchSenders requests are on the wire: the queue is the bound.
		return c.viaBatch(ctx, encodeRequest(nil, r))
	}
	select {
	case c.slots <- struct{}{}:
	default:
		t := time.NewTimer(c.queueWait)
		select {
		case c.slots <- struct{}{}:
			t.Stop()
		case <-t.C:
			return Verdict{}, fmt.Errorf("%w: %d callbacks already in flight", ErrUnavailable, cap(c.slots))
		case <-ctx.Done():
			t.Stop()
			return Verdict{}, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
		}
	}
	defer func() { <-c.slots }()
	raw, err := c.post(ctx, encodeRequest(nil, r))
	if err != nil {
		return Verdict{}, err
	}
	return decodeVerdict(raw)
}

// post sends one callback request and returns the answer's body.
func (c *Client) post(ctx context.Context, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if len(c.secret) > 0 {
		req.Header.Set("Jambonz-Signature", Sign(c.secret, body, c.now()))
	}
	if c.user != "" {
		req.SetBasicAuth(c.user, c.password)
	}
	c.posts.Add(1)
	resp, err := c.http.Do(req)
	if err != nil {
		var ue *neturl.Error
		if errors.As(err, &ue) { // its text repeats the URL; keep the cause only
			err = ue.Err
		}
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	defer resp.Body.Close()
	limit := int64(maxAnswer)
	if body[0] == '[' {
		limit *= int64(c.maxBatch)
	}
	raw, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("%w: reading answer: %v", ErrUnavailable, err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%w: status %d", ErrUnavailable, resp.StatusCode)
	}
	if int64(len(raw)) > limit {
		return nil, fmt.Errorf("%w: answer larger than %d bytes", ErrUnavailable, limit)
	}
	c.learn(resp.Header.Get(BatchHeader))
	return raw, nil
}

// learn takes the batch size the hook offers, bounded by MaxBatch.
func (c *Client) learn(v string) {
	if v == "" || c.maxBatch <= 1 {
		return
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 2 {
		return
	}
	n = min(n, c.maxBatch)
	if int(c.batch.Load()) != n {
		c.batch.Store(int32(n))
	}
}

// verdict judges a decoded answer (a wrong type in it already failed the decoding).
func (a *answer) verdict() (Verdict, error) {
	if a.Expires == nil {
		return a.judge(0, false)
	}
	return a.judge(*a.Expires, true)
}

// judge is verdict with expires given apart, a.Expires ignored (the hand decoder leaves it
// nil: an int it pointed to would escape to the heap with the verdict's strings).
func (a *answer) judge(expires int, given bool) (Verdict, error) {
	switch a.Status {
	case "ok":
		v := Verdict{OK: true, CallHook: a.CallHook, CallStatusHook: a.CallStatusHook, DisplayName: a.DisplayName}
		if given {
			if expires < 0 {
				return Verdict{}, fmt.Errorf("%w: negative expires", ErrUnavailable)
			}
			v.Expires = expires
		}
		return v, nil
	case "fail":
		return Verdict{OK: false, Msg: a.Msg}, nil
	}
	return Verdict{}, fmt.Errorf("%w: unknown status %q", ErrUnavailable, a.Status)
}

// pending is one callback waiting for its batch: a caller of Check waits on done, one of
// CheckLater gave then.
type pending struct {
	body []byte
	done chan outcome // buffered: the sender never waits for a caller that gave up
	then func(Verdict, error)
}

// pendings recycles the callbacks that got their verdict (two allocations per REGISTER).
var pendings = sync.Pool{New: func() any { return &pending{done: make(chan outcome, 1)} }}

type outcome struct {
	v   Verdict
	err error
}

// batchSenders is how many batch requests may be on the wire at once. Few senders make
// batches large under load (the point: one HTTP exchange for many callbacks) while a lone
// callback still leaves in a batch of one, after BatchWait at most.
const batchSenders = 2

// CheckLater is Check for a caller that does not wait: then gets the verdict, or the error,
// exactly once. Once the hook takes batches it runs on the goroutine that received the
// batch's answer, after the hook's HTTP exchange and before the next one from that goroutine,
// so it must not block; before that (and with a hook that never batches) on a goroutine of
// its own. With too many callbacks queued it runs at once, on the caller's goroutine.
func (c *Client) CheckLater(r Request, then func(Verdict, error)) {
	if c.batch.Load() <= 1 {
		go func() { then(c.Check(context.Background(), r)) }()
		return
	}
	p := pendings.Get().(*pending)
	p.body, p.then = encodeRequest(nil, r), then
	if !c.batches.Add(p) {
		p.body, p.then = nil, nil
		pendings.Put(p)
		then(Verdict{}, fmt.Errorf("%w: %d callbacks already queued", ErrUnavailable, c.batches.MaxQueued))
	}
}

// viaBatch queues body for the next batch and waits for its verdict.
func (c *Client) viaBatch(ctx context.Context, body []byte) (Verdict, error) {
	p := pendings.Get().(*pending)
	p.body = body
	if !c.batches.Add(p) {
		p.body = nil
		pendings.Put(p)
		return Verdict{}, fmt.Errorf("%w: %d callbacks already queued", ErrUnavailable, c.batches.MaxQueued)
	}
	select {
	case o := <-p.done:
		// The sender sends once, as the last thing it does with p: p is free again.
		p.body = nil
		pendings.Put(p)
		return o.v, o.err
	case <-ctx.Done():
		// The sender still has p and will send to it: it is left to the collector.
		return Verdict{}, fmt.Errorf("%w: %v", ErrUnavailable, ctx.Err())
	}
}

// maxBatchBody bounds the body of one batch request, below the 256 KiB our gateway reads
// for an array. A callback body is at most a few KiB (the Authorization header is bounded
// at 4 KiB), but a batch of them can pass that limit: a phone that pads its digest
// (a long cnonce) would otherwise get every other REGISTER in its batch a 503.
const maxBatchBody = 192 << 10

// sendBatch posts batch in as few requests as fit maxBatchBody, one after the other.
func (c *Client) sendBatch(batch []*pending) {
	for len(batch) > 0 {
		n, size := 0, 2
		for n < len(batch) && (n == 0 || size+len(batch[n].body)+1 <= maxBatchBody) {
			size += len(batch[n].body) + 1
			n++
		}
		c.sendPart(batch[:n], size)
		batch = batch[n:]
	}
}

// sendPart posts one batch request of size bytes and hands out its verdicts.
func (c *Client) sendPart(batch []*pending, size int) {
	body := make([]byte, 0, size)
	body = append(body, '[')
	for i, p := range batch {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, p.body...)
	}
	body = append(body, ']')
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	raw, err := c.post(ctx, body)
	var outs []outcome
	if err == nil {
		outs = make([]outcome, len(batch))
		err = decodeAnswers(raw, outs)
	}
	deliver := func() {
		for i, p := range batch {
			o := outcome{err: err}
			if err == nil {
				o = outs[i]
			}
			if then := p.then; then != nil {
				p.body, p.then = nil, nil
				pendings.Put(p)
				then(o.v, o.err)
				continue
			}
			p.done <- o
		}
	}
	if c.handOut != nil {
		c.handOut(deliver)
		return
	}
	deliver()
}
