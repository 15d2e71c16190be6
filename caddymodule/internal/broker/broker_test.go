package broker

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// target is something that speaks Nchan's protocol: real Nchan, the embedded broker, or the
// broker following real Nchan. The same client-side checks run against all three.
type target struct {
	name   string
	base   string // …/pub/<ch> and …/sub/<ch>
	nchan  bool   // publisher answers come from real Nchan (the follower counts as a subscriber)
	linked bool   // the broker follows real Nchan
}

// channels the suite uses (the follower must know them in advance).
var suiteChannels = []string{"c-buffer", "c-wait", "c-es", "c-ws", "c-del", "c-timeout", "c-201", "c-old"}

func serveBroker(t *testing.T, b *Broker, n *Nchan) string {
	mux := http.NewServeMux()
	mux.HandleFunc("/pub/{ch}", func(w http.ResponseWriter, r *http.Request) {
		if n != nil {
			n.ServePublisher(w, r, r.PathValue("ch"))
			return
		}
		b.ServePublisher(w, r, r.PathValue("ch"))
	})
	mux.HandleFunc("/sub/{ch}", func(w http.ResponseWriter, r *http.Request) {
		b.ServeSubscriber(context.WithoutCancel(r.Context()), w, r, r.PathValue("ch"), nil)
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return srv.URL
}

func targets(t *testing.T, timeout time.Duration) []target {
	nc := testenv.StartNchan(t, fmt.Sprintf("%ds", int(timeout/time.Second)))
	upstream := testenv.StartNchan(t, fmt.Sprintf("%ds", int(timeout/time.Second))) // the linked broker's own Nchan
	embedded := New(Options{SubscriberTimeout: timeout})
	linkedB := New(Options{SubscriberTimeout: timeout})
	link, err := NewNchan(linkedB, upstream.URL, slog.New(slog.NewTextHandler(testLog{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	link.Follow(ctx, suiteChannels)
	return []target{
		{name: "nchan", base: nc.URL, nchan: true},
		{name: "embedded", base: serveBroker(t, embedded, nil)},
		{name: "linked", base: serveBroker(t, linkedB, link), nchan: true, linked: true},
	}
}

func publish(t *testing.T, tg target, ch, body string, hdr ...string) *http.Response {
	t.Helper()
	req, _ := http.NewRequest("POST", tg.base+"/pub/"+ch, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for _, h := range hdr {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	resp.Body = io.NopCloser(strings.NewReader(string(b)))
	return resp
}

func get(t *testing.T, url string, hdr ...string) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	for _, h := range hdr {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	c := &http.Client{Timeout: 10 * time.Second}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

// waitLinked gives the follower time to see a message published upstream.
func waitLinked(tg target) {
	if tg.linked {
		time.Sleep(150 * time.Millisecond)
	}
}

func TestClientsCannotTellThemApart(t *testing.T) {
	for _, tg := range targets(t, 2*time.Second) {
		t.Run(tg.name, func(t *testing.T) {
			t.Run("publish answers", func(t *testing.T) {
				resp := publish(t, tg, "c-buffer", `{"n":1}`)
				body, _ := io.ReadAll(resp.Body)
				if !tg.nchan && resp.StatusCode != 202 {
					t.Fatalf("publish without subscribers: %d", resp.StatusCode)
				}
				if resp.Header.Get("Content-Type") != "text/plain" || !strings.HasPrefix(string(body), "queued messages: 1\r\nlast requested: ") ||
					!strings.Contains(string(body), "\r\nlast message id: ") {
					t.Fatalf("publisher answer %q %q", resp.Header.Get("Content-Type"), body)
				}
				resp = publish(t, tg, "c-buffer", `{"n":2}`, "Accept: application/json")
				body, _ = io.ReadAll(resp.Body)
				if resp.Header.Get("Content-Type") != "text/json" || !strings.HasPrefix(string(body), `{"messages": 1, "requested": `) {
					t.Fatalf("JSON publisher answer %q %q", resp.Header.Get("Content-Type"), body)
				}
			})
			waitLinked(tg)
			var lastMod, etag string
			t.Run("a new subscriber gets the buffered snapshot at once", func(t *testing.T) {
				resp, body := get(t, tg.base+"/sub/c-buffer")
				if resp.StatusCode != 200 || body != `{"n":2}` || resp.Header.Get("Content-Type") != "application/json" ||
					resp.Header.Get("Vary") != "If-None-Match, If-Modified-Since" {
					t.Fatalf("%d %q %v", resp.StatusCode, body, resp.Header)
				}
				lastMod, etag = resp.Header.Get("Last-Modified"), resp.Header.Get("Etag")
				if _, err := http.ParseTime(lastMod); err != nil || etag == "" || strings.Contains(etag, `"`) {
					t.Fatalf("cursor headers %q %q", lastMod, etag)
				}
			})
			t.Run("the cursor waits for the next message", func(t *testing.T) {
				done := make(chan string, 1)
				go func() {
					resp, body := get(t, tg.base+"/sub/c-buffer", "If-Modified-Since: "+lastMod, "If-None-Match: "+etag)
					done <- fmt.Sprintf("%d %s %s/%s", resp.StatusCode, body, resp.Header.Get("Last-Modified"), resp.Header.Get("Etag"))
				}()
				select {
				case got := <-done:
					t.Fatalf("answered before a publish: %s", got)
				case <-time.After(300 * time.Millisecond):
				}
				resp := publish(t, tg, "c-buffer", `{"n":3}`)
				if !tg.nchan && resp.StatusCode != 201 {
					t.Fatalf("publish with a waiting subscriber: %d", resp.StatusCode)
				}
				got := <-done
				if !strings.HasPrefix(got, `200 {"n":3} `) || strings.HasSuffix(got, lastMod+"/"+etag) {
					t.Fatalf("next message: %s", got)
				}
			})
			t.Run("an old cursor gets the oldest buffered message", func(t *testing.T) {
				publish(t, tg, "c-old", "x1")
				waitLinked(tg)
				resp, body := get(t, tg.base+"/sub/c-old", "If-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT", "If-None-Match: 0")
				if resp.StatusCode != 200 || body != "x1" {
					t.Fatalf("%d %q", resp.StatusCode, body)
				}
			})
			t.Run("a long-poll times out with 408", func(t *testing.T) {
				start := time.Now()
				resp, _ := get(t, tg.base+"/sub/c-timeout", "If-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT", "If-None-Match: 0")
				if resp.StatusCode != 408 || time.Since(start) < time.Second {
					t.Fatalf("%d after %s", resp.StatusCode, time.Since(start))
				}
			})
			t.Run("EventSource frames, multi-line data and Last-Event-ID resume", func(t *testing.T) {
				publish(t, tg, "c-es", "line1\nline2")
				waitLinked(tg)
				ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
				defer cancel()
				req, _ := http.NewRequestWithContext(ctx, "GET", tg.base+"/sub/c-es", nil)
				req.Header.Set("Accept", "text/event-stream")
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				if resp.Header.Get("Content-Type") != "text/event-stream; charset=utf-8" {
					t.Fatalf("content type %q", resp.Header.Get("Content-Type"))
				}
				rd := bufio.NewReader(resp.Body)
				first := readEvent(t, rd)
				if first != ": hi\n" {
					t.Fatalf("first event %q", first)
				}
				ev := readEvent(t, rd)
				if !strings.HasPrefix(ev, "id: ") || !strings.HasSuffix(ev, "\ndata: line1\ndata: line2\n") {
					t.Fatalf("event %q", ev)
				}
				id := strings.TrimPrefix(strings.SplitN(ev, "\n", 2)[0], "id: ")
				publish(t, tg, "c-es", "next")
				if ev := readEvent(t, rd); !strings.HasSuffix(ev, "data: next\n") {
					t.Fatalf("second event %q", ev)
				}
				// Resume from the first id: only the newer message.
				req2, _ := http.NewRequestWithContext(ctx, "GET", tg.base+"/sub/c-es", nil)
				req2.Header.Set("Accept", "text/event-stream")
				req2.Header.Set("Last-Event-ID", id)
				resp2, err := http.DefaultClient.Do(req2)
				if err != nil {
					t.Fatal(err)
				}
				defer resp2.Body.Close()
				rd2 := bufio.NewReader(resp2.Body)
				readEvent(t, rd2)
				if ev := readEvent(t, rd2); !strings.HasSuffix(ev, "data: next\n") {
					t.Fatalf("resumed event %q", ev)
				}
			})
			t.Run("WebSocket delivers text frames", func(t *testing.T) {
				publish(t, tg, "c-ws", "hello-ws")
				waitLinked(tg)
				c := dialWS(t, tg.base+"/sub/c-ws")
				if got := c.read(t); got != "hello-ws" {
					t.Fatalf("first frame %q", got)
				}
				publish(t, tg, "c-ws", "second")
				if got := c.read(t); got != "second" {
					t.Fatalf("second frame %q", got)
				}
			})
			t.Run("DELETE gives waiting subscribers 410", func(t *testing.T) {
				publish(t, tg, "c-del", "x")
				waitLinked(tg)
				done := make(chan int, 1)
				go func() {
					resp, _ := get(t, tg.base+"/sub/c-del", "If-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT", "If-None-Match: 0")
					done <- resp.StatusCode
				}()
				time.Sleep(300 * time.Millisecond)
				req, _ := http.NewRequest("DELETE", tg.base+"/pub/c-del", nil)
				resp, err := http.DefaultClient.Do(req)
				if err != nil || resp.StatusCode != 200 {
					t.Fatalf("DELETE: %v %v", resp, err)
				}
				if st := <-done; st != 410 {
					t.Fatalf("waiting subscriber got %d", st)
				}
				if resp, body := get(t, tg.base+"/pub/c-del"); resp.StatusCode != 200 || !strings.HasPrefix(body, "queued messages: 0\r\n") {
					t.Fatalf("channel info after DELETE: %d %q", resp.StatusCode, body)
				}
			})
		})
	}
}

type testLog struct{ t *testing.T }

func (l testLog) Write(p []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func readEvent(t *testing.T, rd *bufio.Reader) string {
	t.Helper()
	var b strings.Builder
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("reading event: %v (so far %q)", err, b.String())
		}
		if line == "\n" {
			return b.String()
		}
		b.WriteString(line)
	}
}

// wsClient is a minimal RFC 6455 client for the tests.
type wsClient struct {
	conn net.Conn
	rd   *bufio.Reader
}

func dialWS(t *testing.T, url string) *wsClient {
	t.Helper()
	host := strings.TrimPrefix(url, "http://")
	path := host[strings.Index(host, "/"):]
	host = host[:strings.Index(host, "/")]
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var k [16]byte
	rand.Read(k[:])
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		path, host, base64.StdEncoding.EncodeToString(k[:]))
	rd := bufio.NewReader(conn)
	resp, err := http.ReadResponse(rd, nil)
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") == "" {
		t.Fatalf("websocket handshake: %v %v", resp, err)
	}
	return &wsClient{conn: conn, rd: rd}
}

// read returns the next text frame's payload ("" + fail on anything else).
func (c *wsClient) read(t *testing.T) string {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		var h [2]byte
		if _, err := io.ReadFull(c.rd, h[:]); err != nil {
			t.Fatalf("reading frame: %v", err)
		}
		l := int(h[1] & 0x7f)
		switch l {
		case 126:
			var e [2]byte
			io.ReadFull(c.rd, e[:])
			l = int(binary.BigEndian.Uint16(e[:]))
		case 127:
			var e [8]byte
			io.ReadFull(c.rd, e[:])
			l = int(binary.BigEndian.Uint64(e[:]))
		}
		p := make([]byte, l)
		io.ReadFull(c.rd, p)
		switch h[0] & 0x0f {
		case opText:
			return string(p)
		case opClose:
			return "<close>"
		}
	}
}

func TestCancelCutsStreamsAtOnce(t *testing.T) {
	b := New(Options{})
	b.Publish("ch", "text/plain", []byte("x"))
	ctx, cancel := context.WithCancel(context.Background())
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.ServeSubscriber(ctx, w, r, "ch", nil)
	}))
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	readEvent(t, rd)
	readEvent(t, rd)
	ws := dialWS(t, srv.URL+"/")
	ws.read(t)
	cancel() // the token expired, or the session was logged out
	done := make(chan error, 1)
	go func() { _, err := rd.ReadString('\n'); done <- err }()
	select {
	case err := <-done:
		if err != io.EOF {
			t.Fatalf("stream after cancel: %v", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("the EventSource stream stayed open after cancel")
	}
	if got := ws.read(t); got != "<close>" {
		t.Fatalf("websocket after cancel: %q", got)
	}
}

func TestNchanGoingAwayAndComingBack(t *testing.T) {
	nc := testenv.StartNchan(t, "")
	b := New(Options{})
	link, _ := NewNchan(b, nc.URL, slog.New(slog.NewTextHandler(testLog{t}, &slog.HandlerOptions{Level: slog.LevelDebug})))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	link.Follow(ctx, []string{"users-state"})
	base := serveBroker(t, b, link)
	tg := target{base: base, linked: true}
	publish(t, tg, "users-state", `{"v":1}`)
	waitLinked(tg)

	req, _ := http.NewRequest("GET", base+"/sub/users-state", nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	readEvent(t, rd)
	if ev := readEvent(t, rd); !strings.Contains(ev, `{"v":1}`) {
		t.Fatalf("first event %q", ev)
	}
	waiting := make(chan int, 1)
	go func() {
		r, _ := get(t, base+"/sub/users-state", "If-Modified-Since: Thu, 01 Jan 2099 00:00:00 GMT", "If-None-Match: 0")
		waiting <- r.StatusCode
	}()
	time.Sleep(200 * time.Millisecond)

	nc.Stop()
	// The stream closes cleanly (the client reconnects); the waiting long-poll gets 502.
	done := make(chan string, 1)
	go func() { b, _ := io.ReadAll(rd); done <- string(b) }()
	select {
	case rest := <-done:
		if !strings.Contains(rest, ":502:") {
			t.Fatalf("stream ended with %q", rest)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("stream hung after Nchan went away")
	}
	select {
	case st := <-waiting:
		if st != 502 {
			t.Fatalf("waiting long-poll got %d", st)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("long-poll hung after Nchan went away")
	}
	if r, _ := get(t, base+"/sub/users-state"); r.StatusCode != 502 {
		t.Fatalf("new subscriber while Nchan is down: %d", r.StatusCode)
	}
	if r := publish(t, tg, "users-state", "x"); r.StatusCode != 502 {
		t.Fatalf("publish while Nchan is down: %d", r.StatusCode)
	}

	nc.Start(t)
	deadline := time.Now().Add(10 * time.Second)
	for {
		r := publish(t, tg, "users-state", `{"v":2}`)
		if r.StatusCode == 201 || r.StatusCode == 202 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("publishing never recovered")
		}
		time.Sleep(100 * time.Millisecond)
	}
	for {
		r, body := get(t, base+"/sub/users-state")
		if r.StatusCode == 200 && body == `{"v":2}` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscribing never recovered: %d %q", r.StatusCode, body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func TestPublisherBadInput(t *testing.T) {
	b := New(Options{MaxMessageSize: 16})
	base := serveBroker(t, b, nil)
	tg := target{base: base}
	if r := publish(t, tg, "ch", strings.Repeat("x", 17)); r.StatusCode != 413 {
		t.Fatalf("oversized publish: %d", r.StatusCode)
	}
	req, _ := http.NewRequest("PATCH", base+"/pub/ch", nil)
	if r, _ := http.DefaultClient.Do(req); r.StatusCode != 405 {
		t.Fatalf("PATCH: %d", r.StatusCode)
	}
	if r, _ := get(t, base+"/pub/nothing"); r.StatusCode != 404 {
		t.Fatalf("info of a missing channel: %d", r.StatusCode)
	}
	publish(t, tg, "ch", "ok")
	// As Nchan: unreadable cursors are no cursor (the current message, at once)…
	for _, hdr := range [][]string{{"If-Modified-Since: yesterday"}, {"If-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT", "If-None-Match: banana"}, {"If-None-Match: 7"}} {
		if r, body := get(t, base+"/sub/ch", hdr...); r.StatusCode != 200 || body != "ok" {
			t.Fatalf("%v: %d %q", hdr, r.StatusCode, body)
		}
	}
	// … but a readable date without a tag is refused.
	if r, body := get(t, base+"/sub/ch", "If-Modified-Since: Thu, 01 Jan 2026 00:00:00 GMT"); r.StatusCode != 400 || body != "Message ID invalid" {
		t.Fatalf("date without tag: %d %q", r.StatusCode, body)
	}
	if r, body := get(t, base+"/sub/ch", "Accept: text/event-stream", "Last-Event-ID: garbage"); r.StatusCode != 200 && !strings.Contains(body, "hi") {
		t.Fatalf("bad Last-Event-ID: %d", r.StatusCode)
	}
	bad := New(Options{MaxChannels: 2})
	bad.Publish("a", "", nil)
	bad.Publish("b", "", nil)
	if _, _, err := bad.Publish("c", "", nil); err != ErrTooMany {
		t.Fatalf("third channel: %v", err)
	}
}

func TestNoGoroutineLeak(t *testing.T) {
	b := New(Options{SubscriberTimeout: time.Minute, SweepInterval: 100 * time.Millisecond})
	base := serveBroker(t, b, nil)
	before := runtime.NumGoroutine()
	for range 200 {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
		req, _ := http.NewRequestWithContext(ctx, "GET", base+"/sub/leak", nil)
		req.Header.Set("If-Modified-Since", "Thu, 01 Jan 2099 00:00:00 GMT")
		req.Header.Set("If-None-Match", "0")
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
		cancel()
	}
	http.DefaultClient.CloseIdleConnections()
	deadline := time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > before+5 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before+5 {
		t.Fatalf("%d goroutines after 200 abandoned long-polls, %d before", n, before)
	}
	// Parked long-polls whose clients left are found by the sweep.
	for b.Subscribers() != 0 && time.Now().Before(deadline.Add(5*time.Second)) {
		time.Sleep(50 * time.Millisecond)
	}
	if b.Subscribers() != 0 {
		t.Fatalf("%d subscribers still counted after their clients left", b.Subscribers())
	}
}
