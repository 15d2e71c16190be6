package presence

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

func TestBuildSnapshot(t *testing.T) {
	known := map[string]string{"201@pbx": "Alice", "202@pbx": "Bob", "203@a": "Carol", "203@b": "Carol B"}
	s := Build(known, []string{"201@pbx", "203@b"})
	want := `{"states":{"201":{"state":"Idle","name":"Alice"},"202":{"state":"Unavailable","name":"Bob"},"203":{"state":"Idle","name":"` // name of either 203 AOR
	if got := string(s.JSON()); !strings.HasPrefix(got, want) {
		t.Fatalf("snapshot %s", got)
	}
	if got := Build(nil, nil).JSON(); string(got) != `{"states":{}}` {
		t.Fatalf("empty snapshot %s", got)
	}
	// A live AOR missing from Known (a store that lost the name) is still Idle.
	if got := Build(nil, []string{"sip:204@pbx"}).States["204"].State; got != Idle {
		t.Fatalf("live unknown AOR is %q", got)
	}
}

type fakeSource struct {
	mu    sync.Mutex
	known map[string]string
	live  []string
	err   error
}

func (f *fakeSource) Known(context.Context) (map[string]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.known, f.err
}

func (f *fakeSource) AORs(context.Context, time.Time) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.live, f.err
}

func (f *fakeSource) set(live ...string) {
	f.mu.Lock()
	f.live = live
	f.mu.Unlock()
}

// recorder is an HTTP receiver that keeps every body.
type recorder struct {
	mu     sync.Mutex
	bodies []string
	hdrs   []http.Header
	status int
	block  chan struct{} // when set, requests hang until it is closed
	got    chan struct{}
}

func newRecorder() *recorder { return &recorder{status: 202, got: make(chan struct{}, 100)} }

func (rc *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if rc.block != nil {
		select {
		case <-rc.block:
		case <-r.Context().Done():
		}
		return
	}
	b, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	rc.bodies = append(rc.bodies, string(b))
	rc.hdrs = append(rc.hdrs, r.Header.Clone())
	rc.mu.Unlock()
	w.WriteHeader(rc.status)
	select {
	case rc.got <- struct{}{}:
	default:
	}
}

func (rc *recorder) count() int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return len(rc.bodies)
}

func (rc *recorder) last() string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.bodies[len(rc.bodies)-1]
}

func waitFor(t *testing.T, rc *recorder, n int) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for rc.count() < n {
		select {
		case <-rc.got:
		case <-time.After(10 * time.Millisecond):
		case <-deadline:
			t.Fatalf("got %d posts, want %d", rc.count(), n)
		}
	}
}

func TestPublisherCoalescesAndSkipsRepeats(t *testing.T) {
	rc := newRecorder()
	srv := httptest.NewServer(rc)
	defer srv.Close()
	src := &fakeSource{known: map[string]string{"201@pbx": "Alice"}}
	p := &Publisher{URL: srv.URL, Source: src, Coalesce: 50 * time.Millisecond, Every: time.Hour}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)

	waitFor(t, rc, 1) // the first snapshot goes out at once
	if rc.last() != `{"states":{"201":{"state":"Unavailable","name":"Alice"}}}` {
		t.Fatalf("first snapshot %s", rc.last())
	}
	if ct := rc.hdrs[0].Get("Content-Type"); ct != "application/json" {
		t.Fatalf("Content-Type %q", ct)
	}
	src.set("201@pbx")
	for range 20 {
		p.Changed() // a burst of changes within the window: one publish
	}
	waitFor(t, rc, 2)
	time.Sleep(150 * time.Millisecond)
	if n := rc.count(); n != 2 {
		t.Fatalf("burst gave %d posts, want 2 in all", n)
	}
	if !strings.Contains(rc.last(), `"state":"Idle"`) {
		t.Fatalf("after register: %s", rc.last())
	}
	p.Changed() // nothing changed: nothing sent
	time.Sleep(150 * time.Millisecond)
	if n := rc.count(); n != 2 {
		t.Fatalf("an unchanged snapshot was sent again (%d posts)", n)
	}
}

func TestPublisherRepublishesPeriodically(t *testing.T) {
	rc := newRecorder()
	srv := httptest.NewServer(rc)
	defer srv.Close()
	p := &Publisher{URL: srv.URL, Source: &fakeSource{}, Every: 30 * time.Millisecond}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	waitFor(t, rc, 3) // the same snapshot again and again, to re-seed a reloaded Nchan
}

func TestPublisherReportsFailures(t *testing.T) {
	rc := newRecorder()
	rc.status = 500
	srv := httptest.NewServer(rc)
	defer srv.Close()
	var fails, oks atomic.Int32
	src := &fakeSource{}
	p := &Publisher{URL: srv.URL, Source: src, Coalesce: 10 * time.Millisecond, Every: time.Hour,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
		OnPublish: func(ok bool) {
			if ok {
				oks.Add(1)
			} else {
				fails.Add(1)
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)
	waitFor(t, rc, 1)
	time.Sleep(20 * time.Millisecond)
	if fails.Load() != 1 || oks.Load() != 0 {
		t.Fatalf("fails %d oks %d", fails.Load(), oks.Load())
	}
	// A failed snapshot is not remembered as sent: the next change retries it.
	rc.mu.Lock()
	rc.status = 201
	rc.mu.Unlock()
	p.Changed()
	waitFor(t, rc, 2)
	time.Sleep(20 * time.Millisecond)
	if oks.Load() != 1 {
		t.Fatalf("retry not sent: oks %d", oks.Load())
	}
	// A store error publishes nothing.
	src.mu.Lock()
	src.err = location.ErrUnavailable
	src.mu.Unlock()
	p.Changed()
	time.Sleep(50 * time.Millisecond)
	if rc.count() != 2 || fails.Load() != 2 {
		t.Fatalf("store error: posts %d fails %d", rc.count(), fails.Load())
	}
}

func TestWebhooksDeliverWithHeaders(t *testing.T) {
	rc := newRecorder()
	srv := httptest.NewServer(rc)
	defer srv.Close()
	now := time.Unix(1_800_000_000, 0)
	w := &Webhooks{URLs: []string{srv.URL + "/events"}, Headers: map[string]string{"X-API-Key": "k"}, Now: func() time.Time { return now }}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	b := location.Binding{AOR: "201@pbx.example.com", Source: "203.0.113.7:5060", Transport: "udp",
		UserAgent: "Phone/1.0", ExpiresAt: now.Add(3600 * time.Second)}
	w.Send(Event{Event: "registered", Location: ptr(FromBinding(b, now))})
	waitFor(t, rc, 1)
	want := `{"event":"registered","location":{"aor":"sip:201@pbx.example.com","expires":3600,"destination":"203.0.113.7:5060","transport":"UDP","user_agent":"Phone/1.0","supports_webrtc":false},"timestamp":1800000000}`
	if rc.last() != want {
		t.Fatalf("body\n got %s\nwant %s", rc.last(), want)
	}
	if rc.hdrs[0].Get("X-API-Key") != "k" || rc.hdrs[0].Get("Content-Type") != "application/json" {
		t.Fatalf("headers %v", rc.hdrs[0])
	}
	w.Send(Event{Event: "offline", Locations: []Location{FromBinding(b, now), FromBinding(b, now)}})
	waitFor(t, rc, 2)
	var e Event
	if err := json.Unmarshal([]byte(rc.last()), &e); err != nil || e.Event != "offline" || len(e.Locations) != 2 || e.Location != nil {
		t.Fatalf("offline event %s (%v)", rc.last(), err)
	}
}

func ptr[T any](v T) *T { return &v }

func TestSlowWebhookNeverBlocksAndFullQueueDrops(t *testing.T) {
	rc := newRecorder()
	rc.block = make(chan struct{}) // a receiver that never answers
	srv := httptest.NewServer(rc)
	defer srv.Close()
	defer close(rc.block)
	var dropped atomic.Int32
	var logs testenv.LogBuffer
	w := &Webhooks{URLs: []string{srv.URL + "/hook?key=s3cr3t"}, Queue: 4, Workers: 1, Timeout: 50 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
		OnResult: func(r string) {
			if r == "dropped" {
				dropped.Add(1)
			}
		}}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.Run(ctx)
	start := time.Now()
	for range 100 {
		w.Send(Event{Event: "registered"})
	}
	if d := time.Since(start); d > 50*time.Millisecond {
		t.Fatalf("100 sends took %s: Send blocked", d)
	}
	if dropped.Load() < 90 {
		t.Fatalf("dropped %d of 100 with a queue of 4", dropped.Load())
	}
	time.Sleep(150 * time.Millisecond) // let a timeout be logged
	if !strings.Contains(logs.String(), "webhook not delivered") {
		t.Fatalf("no delivery failure logged: %s", logs.String())
	}
	if strings.Contains(logs.String(), "s3cr3t") {
		t.Fatalf("webhook URL query reached the log: %s", logs.String())
	}
}
