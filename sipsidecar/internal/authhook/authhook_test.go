package authhook

import (
	"context"
	"crypto/hmac"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var req = Request{Method: "REGISTER", Expires: 3600, Scheme: "digest", Username: "201", Realm: "pbx",
	Nonce: "n", URI: "sip:pbx", Response: "r", QOP: "auth", NC: "00000001", CNonce: "c", Algorithm: "MD5",
	SourceAddress: "203.0.113.7", SourcePort: 5060}

func hook(t *testing.T, h http.HandlerFunc) *httptest.Server {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func client(t *testing.T, o Options) *Client {
	t.Helper()
	c, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestVerdicts(t *testing.T) {
	cases := []struct {
		name    string
		status  int
		body    string
		want    Verdict
		unavail bool
	}{
		{"ok with extras", 200, `{"status":"ok","expires":600,"call_hook":"http://x/call","call_status_hook":"http://x/st","display_name":"Alice"}`,
			Verdict{OK: true, Expires: 600, CallHook: "http://x/call", CallStatusHook: "http://x/st", DisplayName: "Alice"}, false},
		{"bare ok", 200, `{"status":"ok"}`, Verdict{OK: true}, false},
		{"fail", 200, `{"status":"fail","msg":"bad password"}`, Verdict{Msg: "bad password"}, false},
		{"500", 500, `{"status":"ok"}`, Verdict{}, true},
		{"401 from the hook", 401, ``, Verdict{}, true},
		{"garbage", 200, `<html>`, Verdict{}, true},
		{"two objects", 200, `{"status":"ok"}{"status":"ok"}`, Verdict{}, true},
		{"unknown status", 200, `{"status":"maybe"}`, Verdict{}, true},
		{"negative expires", 200, `{"status":"ok","expires":-5}`, Verdict{}, true},
		{"wrong type", 200, `{"status":1}`, Verdict{}, true},
		{"oversized", 200, `{"status":"ok","msg":"` + strings.Repeat("x", maxAnswer) + `"}`, Verdict{}, true},
		{"redirect is not followed", 302, ``, Verdict{}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			srv := hook(t, func(w http.ResponseWriter, r *http.Request) {
				if c.status == 302 {
					w.Header().Set("Location", "http://127.0.0.1:1/")
				}
				w.WriteHeader(c.status)
				io.WriteString(w, c.body)
			})
			v, err := client(t, Options{URL: srv.URL}).Check(context.Background(), req)
			if c.unavail {
				if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("err %v, want ErrUnavailable", err)
				}
				return
			}
			if err != nil || v != c.want {
				t.Fatalf("verdict %+v %v, want %+v", v, err, c.want)
			}
		})
	}
}

func TestBodyBasicAuthAndSignature(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	var got []byte
	var hdr http.Header
	srv := hook(t, func(w http.ResponseWriter, r *http.Request) {
		got, _ = io.ReadAll(r.Body)
		hdr = r.Header.Clone()
		io.WriteString(w, `{"status":"ok"}`)
	})
	c := client(t, Options{URL: srv.URL, Secret: "s3cret", Username: "hookuser", Password: "hookpw", Now: func() time.Time { return now }})
	if _, err := c.Check(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	json.Unmarshal(got, &m)
	for _, k := range []string{"method", "expires", "scheme", "username", "realm", "nonce", "uri", "response", "qop", "nc", "cnonce", "algorithm", "source_address", "source_port"} {
		if _, ok := m[k]; !ok {
			t.Errorf("body lacks %s: %s", k, got)
		}
	}
	if u, p, ok := (&http.Request{Header: hdr}).BasicAuth(); !ok || u != "hookuser" || p != "hookpw" {
		t.Errorf("basic auth %q %q %v", u, p, ok)
	}
	sig := hdr.Get("Jambonz-Signature")
	if want := Sign([]byte("s3cret"), got, now); !hmac.Equal([]byte(sig), []byte(want)) || !strings.HasPrefix(sig, "t=1900000000,v1=") {
		t.Errorf("signature %q, want %q", sig, want)
	}
}

func TestHungHookTimesOutFast(t *testing.T) {
	release := make(chan struct{})
	srv := hook(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	defer close(release)
	start := time.Now()
	_, err := client(t, Options{URL: srv.URL, Timeout: 200 * time.Millisecond}).Check(context.Background(), req)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err %v", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Fatalf("hung hook took %s", d)
	}
}

func TestDeadHook(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	_, err := client(t, Options{URL: "http://" + addr + "/hook?key=secret-in-url"}).Check(context.Background(), req)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("err %v", err)
	}
	if strings.Contains(err.Error(), "secret-in-url") {
		t.Fatalf("error text carries the URL query: %v", err)
	}
}

// A REGISTER flood must not become an unbounded HTTP flood: past the limit, Check fails at
// once instead of queueing.
func TestConcurrencyIsBounded(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	inHook, peak := 0, 0
	srv := hook(t, func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		inHook++
		peak = max(peak, inHook)
		mu.Unlock()
		<-release
		mu.Lock()
		inHook--
		mu.Unlock()
		io.WriteString(w, `{"status":"ok"}`)
	})
	c := client(t, Options{URL: srv.URL, Concurrency: 3, Timeout: 5 * time.Second, QueueWait: 20 * time.Millisecond})
	var wg sync.WaitGroup
	results := make(chan error, 20)
	for range 3 {
		wg.Go(func() { _, err := c.Check(context.Background(), req); results <- err })
	}
	deadline := time.Now().Add(3 * time.Second)
	for c.InFlight() < 3 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	start := time.Now()
	for range 10 {
		if _, err := c.Check(context.Background(), req); !errors.Is(err, ErrUnavailable) {
			t.Errorf("over the limit: %v", err)
		}
	}
	if d := time.Since(start); d > 10*40*time.Millisecond {
		t.Errorf("refusals took %s: they waited past the queue limit", d)
	}
	close(release)
	wg.Wait()
	close(results)
	for err := range results {
		if err != nil {
			t.Errorf("admitted callback: %v", err)
		}
	}
	if peak > 3 {
		t.Fatalf("%d callbacks reached the hook at once, limit 3", peak)
	}
}

func TestBadURL(t *testing.T) {
	for _, u := range []string{"", "ftp://x", "not a url", "http://"} {
		if _, err := New(Options{URL: u}); err == nil {
			t.Errorf("New(%q) accepted", u)
		}
	}
}

// batchHook answers single callbacks and arrays, verdict by username ("ok-…" passes), and
// offers batches when offer is set. It counts requests and the largest batch.
type batchHook struct {
	offer    string
	mu       sync.Mutex
	requests int
	arrays   int
	largest  int
	answer   func(n int) string // overrides the batch answer when set
	hold     chan struct{}      // when set, the first request waits on it
	held     bool
	holdAll  bool // every request waits on hold, not only the first
}

func (b *batchHook) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	b.mu.Lock()
	b.requests++
	wait := b.hold != nil && (!b.held || b.holdAll)
	b.held = b.held || wait
	b.mu.Unlock()
	if wait {
		<-b.hold
	}
	if b.offer != "" {
		w.Header().Set(BatchHeader, b.offer)
	}
	verdict := func(raw json.RawMessage) string {
		var q Request
		json.Unmarshal(raw, &q)
		if strings.HasPrefix(q.Username, "ok-") {
			return `{"status":"ok","display_name":"` + q.Username + `"}`
		}
		return `{"status":"fail","msg":"` + q.Username + `"}`
	}
	if len(body) > 0 && body[0] == '[' {
		var items []json.RawMessage
		json.Unmarshal(body, &items)
		b.mu.Lock()
		b.arrays++
		b.largest = max(b.largest, len(items))
		answer := b.answer
		b.mu.Unlock()
		if answer != nil {
			io.WriteString(w, answer(len(items)))
			return
		}
		out := make([]string, len(items))
		for i, it := range items {
			out[i] = verdict(it)
		}
		io.WriteString(w, "["+strings.Join(out, ",")+"]")
		return
	}
	io.WriteString(w, verdict(body))
}

// holdNext makes the next request wait on hold (every request, with all) until the test
// closes the returned channel.
func (b *batchHook) holdNext(all bool) chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hold, b.held, b.holdAll = make(chan struct{}), false, all
	return b.hold
}

func named(name string) Request { r := req; r.Username = name; return r }

func TestBatches(t *testing.T) {
	t.Run("once offered, callbacks under way together share a request and keep their verdicts", func(t *testing.T) {
		b := &batchHook{offer: "8", hold: make(chan struct{})}
		srv := hook(t, b.serve)
		c := client(t, Options{URL: srv.URL})
		// The first (single) callback learns the offer.
		first := make(chan error, 1)
		go func() { _, err := c.Check(context.Background(), named("ok-first")); first <- err }()
		time.Sleep(50 * time.Millisecond)
		close(b.hold)
		if err := <-first; err != nil {
			t.Fatal(err)
		}
		hold := b.holdNext(false) // hold the first batch so the rest queue up
		const n = 40
		var wg sync.WaitGroup
		errs := make(chan string, n)
		for i := range n {
			name := "ok-" + strconv.Itoa(i)
			if i%3 == 0 {
				name = "bad-" + strconv.Itoa(i)
			}
			wg.Go(func() {
				v, err := c.Check(context.Background(), named(name))
				switch {
				case err != nil:
					errs <- name + ": " + err.Error()
				case v.OK != strings.HasPrefix(name, "ok-"):
					errs <- name + ": wrong verdict"
				case v.OK && v.DisplayName != name, !v.OK && v.Msg != name:
					errs <- name + ": got another callback's answer"
				}
			})
		}
		time.Sleep(100 * time.Millisecond)
		close(hold)
		wg.Wait()
		close(errs)
		for e := range errs {
			t.Error(e)
		}
		b.mu.Lock()
		defer b.mu.Unlock()
		if b.arrays == 0 || b.largest < 2 || b.largest > 8 || b.requests >= n {
			t.Fatalf("%d requests, %d arrays, largest %d: want batches of 2..8", b.requests, b.arrays, b.largest)
		}
		if got := c.Requests(); got != uint64(b.requests) {
			t.Fatalf("client counted %d requests, the hook saw %d", got, b.requests)
		}
	})

	t.Run("a hook that offers nothing never gets an array", func(t *testing.T) {
		b := &batchHook{}
		c := client(t, Options{URL: hook(t, b.serve).URL})
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() { c.Check(context.Background(), named("ok-"+strconv.Itoa(i))) })
		}
		wg.Wait()
		if b.arrays != 0 {
			t.Fatalf("%d arrays sent to a hook that never offered them", b.arrays)
		}
	})

	t.Run("MaxBatch 1 never batches", func(t *testing.T) {
		b := &batchHook{offer: "64"}
		c := client(t, Options{URL: hook(t, b.serve).URL, MaxBatch: 1})
		for i := range 5 {
			c.Check(context.Background(), named("ok-"+strconv.Itoa(i)))
		}
		if b.arrays != 0 {
			t.Fatalf("%d arrays with MaxBatch 1", b.arrays)
		}
	})

	for name, ans := range map[string]func(int) string{
		"too few answers": func(n int) string {
			return "[" + strings.TrimSuffix(strings.Repeat(`{"status":"ok"},`, n-1), ",") + "]"
		},
		"too many answers": func(n int) string { return "[" + strings.Repeat(`{"status":"ok"},`, n) + `{"status":"ok"}]` },
		"not an array":     func(int) string { return `{"status":"ok"}` },
		"garbage":          func(int) string { return `<html>` },
	} {
		t.Run("no verdict from a bad batch answer: "+name, func(t *testing.T) {
			b := &batchHook{offer: "8"}
			c := client(t, Options{URL: hook(t, b.serve).URL})
			if _, err := c.Check(context.Background(), named("ok-learn")); err != nil {
				t.Fatal(err)
			}
			b.mu.Lock()
			b.answer = ans
			b.mu.Unlock()
			for i := range 3 {
				if v, err := c.Check(context.Background(), named("ok-"+strconv.Itoa(i))); !errors.Is(err, ErrUnavailable) || v.OK {
					t.Fatalf("verdict %+v, err %v: want ErrUnavailable", v, err)
				}
			}
		})
	}

	t.Run("a batch is signed over its own body", func(t *testing.T) {
		var bodies, sigs []string
		var mu sync.Mutex
		srv := hook(t, func(w http.ResponseWriter, r *http.Request) {
			body, _ := io.ReadAll(r.Body)
			mu.Lock()
			bodies, sigs = append(bodies, string(body)), append(sigs, r.Header.Get("Jambonz-Signature"))
			mu.Unlock()
			w.Header().Set(BatchHeader, "4")
			if body[0] == '[' {
				io.WriteString(w, `[{"status":"ok"}]`)
				return
			}
			io.WriteString(w, `{"status":"ok"}`)
		})
		now := time.Unix(1_700_000_000, 0)
		c := client(t, Options{URL: srv.URL, Secret: "s3cret", Now: func() time.Time { return now }})
		c.Check(context.Background(), req)
		if _, err := c.Check(context.Background(), req); err != nil {
			t.Fatal(err)
		}
		if len(bodies) != 2 || bodies[1][0] != '[' || sigs[1] != Sign([]byte("s3cret"), []byte(bodies[1]), now) {
			t.Fatalf("bodies %q, signatures %q", bodies, sigs)
		}
	})
}

// later collects CheckLater's verdicts by name and fails a test that gets one twice.
type later struct {
	mu   sync.Mutex
	got  map[string]outcome
	seen chan struct{}
}

func newLater() *later { return &later{got: map[string]outcome{}, seen: make(chan struct{}, 1000)} }

func (l *later) check(t *testing.T, c *Client, name string) { l.checkRequest(t, c, named(name)) }

// checkRequest is check for a request of the test's own, by its username.
func (l *later) checkRequest(t *testing.T, c *Client, r Request) {
	c.CheckLater(r, func(v Verdict, err error) {
		l.mu.Lock()
		if _, twice := l.got[r.Username]; twice {
			t.Errorf("%s: verdict handed over twice", r.Username)
		}
		l.got[r.Username] = outcome{v, err}
		l.mu.Unlock()
		l.seen <- struct{}{}
	})
}

// wait returns the outcomes once n have come, failing the test after a few seconds.
func (l *later) wait(t *testing.T, n int) map[string]outcome {
	t.Helper()
	for i := range n {
		select {
		case <-l.seen:
		case <-time.After(5 * time.Second):
			t.Fatalf("%d of %d verdicts came", i, n)
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.got
}

func TestCheckLater(t *testing.T) {
	t.Run("a hook that never batches: each verdict handed over once", func(t *testing.T) {
		b := &batchHook{}
		c := client(t, Options{URL: hook(t, b.serve).URL})
		l := newLater()
		for i := range 10 {
			l.check(t, c, "ok-"+strconv.Itoa(i))
		}
		l.check(t, c, "bad-x")
		got := l.wait(t, 11)
		for name, o := range got {
			if o.err != nil || o.v.OK != strings.HasPrefix(name, "ok-") || (o.v.OK && o.v.DisplayName != name) {
				t.Errorf("%s: %+v %v", name, o.v, o.err)
			}
		}
		if b.arrays != 0 {
			t.Fatalf("%d arrays to a hook that never offered them", b.arrays)
		}
	})

	t.Run("in batches beside waiting callers, every caller gets its own verdict", func(t *testing.T) {
		b := &batchHook{offer: "8"}
		c := client(t, Options{URL: hook(t, b.serve).URL})
		if _, err := c.Check(context.Background(), named("ok-learn")); err != nil {
			t.Fatal(err)
		}
		hold := b.holdNext(false) // the first batch waits, the rest queue up
		l := newLater()
		var wg sync.WaitGroup
		for i := range 30 {
			name := "ok-" + strconv.Itoa(i)
			if i%4 == 0 {
				name = "bad-" + strconv.Itoa(i)
			}
			if i%3 == 0 {
				wg.Go(func() {
					if v, err := c.Check(context.Background(), named(name)); err != nil || v.OK != strings.HasPrefix(name, "ok-") {
						t.Errorf("waiting %s: %+v %v", name, v, err)
					}
				})
				continue
			}
			l.check(t, c, name)
		}
		time.Sleep(100 * time.Millisecond)
		close(hold)
		wg.Wait()
		got := l.wait(t, 20)
		for name, o := range got {
			switch {
			case o.err != nil:
				t.Errorf("%s: %v", name, o.err)
			case o.v.OK != strings.HasPrefix(name, "ok-"):
				t.Errorf("%s: wrong verdict", name)
			case o.v.OK && o.v.DisplayName != name, !o.v.OK && o.v.Msg != name:
				t.Errorf("%s: got another callback's answer %+v", name, o.v)
			}
		}
		if b.arrays == 0 || b.largest < 2 {
			t.Fatalf("%d arrays, largest %d: the callbacks never shared a batch", b.arrays, b.largest)
		}
	})

	t.Run("HandOut wraps the hand-out of each batch's verdicts", func(t *testing.T) {
		b := &batchHook{offer: "8"}
		var mu sync.Mutex
		inside, outside, handOuts := 0, 0, 0
		handing := 0 // hand-outs under way (two senders may overlap)
		c := client(t, Options{URL: hook(t, b.serve).URL, HandOut: func(deliver func()) {
			mu.Lock()
			handOuts++
			handing++
			mu.Unlock()
			deliver()
			mu.Lock()
			handing--
			mu.Unlock()
		}})
		if _, err := c.Check(context.Background(), named("ok-learn")); err != nil {
			t.Fatal(err)
		}
		hold := b.holdNext(false) // the first batch waits, the rest queue behind it
		l := newLater()
		for i := range 12 {
			name := "ok-" + strconv.Itoa(i)
			c.CheckLater(named(name), func(v Verdict, err error) {
				mu.Lock()
				if handing > 0 {
					inside++
				} else {
					outside++
				}
				mu.Unlock()
				if err != nil || !v.OK || v.DisplayName != name {
					t.Errorf("%s: %+v %v", name, v, err)
				}
				l.seen <- struct{}{}
			})
		}
		time.Sleep(50 * time.Millisecond)
		close(hold)
		l.wait(t, 12)
		mu.Lock()
		defer mu.Unlock()
		if inside != 12 || outside != 0 || handOuts < 2 || handOuts >= 12 {
			t.Fatalf("%d verdicts inside HandOut, %d outside, %d hand-outs; want all 12 inside, in fewer hand-outs than verdicts", inside, outside, handOuts)
		}
	})

	t.Run("a bad batch answer hands every caller an error", func(t *testing.T) {
		b := &batchHook{offer: "8"}
		c := client(t, Options{URL: hook(t, b.serve).URL})
		if _, err := c.Check(context.Background(), named("ok-learn")); err != nil {
			t.Fatal(err)
		}
		b.mu.Lock()
		b.answer = func(int) string { return `[]` }
		b.mu.Unlock()
		l := newLater()
		for i := range 3 {
			l.check(t, c, "ok-"+strconv.Itoa(i))
		}
		for name, o := range l.wait(t, 3) {
			if !errors.Is(o.err, ErrUnavailable) || o.v.OK {
				t.Errorf("%s: %+v %v, want ErrUnavailable", name, o.v, o.err)
			}
		}
	})

	t.Run("beyond the queue's bound the caller hears at once", func(t *testing.T) {
		b := &batchHook{offer: "2"}
		c := client(t, Options{URL: hook(t, b.serve).URL, Concurrency: 1, MaxBatch: 2}) // 2 may queue
		if _, err := c.Check(context.Background(), named("ok-learn")); err != nil {
			t.Fatal(err)
		}
		hold := b.holdNext(true)
		l := newLater()
		// One batch of one on the wire, a second sender's batch of two, two queued behind
		// them: the sixth is refused.
		for i := range 6 {
			l.check(t, c, "ok-"+strconv.Itoa(i))
			time.Sleep(20 * time.Millisecond)
		}
		select {
		case <-l.seen:
		case <-time.After(2 * time.Second):
			t.Fatal("the refused callback heard nothing while the hook was held")
		}
		l.mu.Lock()
		refused := 0
		for name, o := range l.got {
			if !errors.Is(o.err, ErrUnavailable) {
				t.Errorf("%s answered while the hook was held: %+v %v", name, o.v, o.err)
			}
			refused++
		}
		l.mu.Unlock()
		close(hold)
		l.wait(t, 6-refused)
		if refused != 1 {
			t.Fatalf("%d refused, want 1", refused)
		}
	})
}

// TestBatchBodyBound: callbacks padded to a few KiB each (a long cnonce) leave in several
// requests that each fit maxBatchBody, and every caller still gets its own verdict.
func TestBatchBodyBound(t *testing.T) {
	b := &batchHook{offer: "256"}
	var mu sync.Mutex
	var sizes []int
	srv := hook(t, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		sizes = append(sizes, len(body))
		mu.Unlock()
		r.Body = io.NopCloser(strings.NewReader(string(body)))
		b.serve(w, r)
	})
	c := client(t, Options{URL: srv.URL})
	if _, err := c.Check(context.Background(), named("ok-learn")); err != nil {
		t.Fatal(err)
	}
	hold := b.holdNext(false) // the first batch waits: the rest queue up
	l := newLater()
	const n = 120
	for i := range n {
		r := named("ok-" + strconv.Itoa(i))
		r.CNonce = strings.Repeat("c", 3000)
		l.checkRequest(t, c, r)
	}
	time.Sleep(100 * time.Millisecond)
	close(hold)
	for name, o := range l.wait(t, n) {
		if o.err != nil || !o.v.OK || o.v.DisplayName != name {
			t.Errorf("%s: %+v %v", name, o.v, o.err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	total := 0
	for _, s := range sizes[1:] {
		if s > 256<<10 { // what our gateway reads of an array
			t.Errorf("a batch of %d bytes, over the gateway's 256 KiB", s)
		}
		total += s
	}
	if total < n*3000 || len(sizes) < 3 {
		t.Fatalf("%d requests carrying %d bytes: want the %d padded callbacks split over several", len(sizes)-1, total, n)
	}
}
