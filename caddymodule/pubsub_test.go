package caddymodule

import (
	"bufio"
	"bytes"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// pubsubSuite checks the gateway's pub/sub endpoints; it runs on the embedded broker and in
// front of a real Nchan, and must pass the same on both.
func pubsubSuite(t *testing.T, g *testGateway, linked bool) {
	access, refresh := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	settle := func() {
		if linked {
			time.Sleep(200 * time.Millisecond) // the upstream follower's hop
		}
	}
	pub := func(body string) reply {
		return g.do("POST", g.API+"/pub/users-state", body)
	}

	t.Run("subscriber without or with a bad token is refused", func(t *testing.T) {
		wantError(t, g.do("GET", g.API+"/sub/users-state", ""), 401, "Unauthorized")
		wantError(t, g.do("GET", g.API+"/sub/users-state?authorization=garbage", ""), 401, "Unauthorized")
		wantError(t, g.do("GET", g.API+"/sub/users-state?token="+refresh, ""), 403, "Invalid token type")
		wantError(t, g.do("GET", g.API+"/sub/secret-channel?token="+access, ""), 404, "Unknown channel")
		wantError(t, g.do("GET", g.API+"/sub/Users_State?token="+access, ""), 404, "Unknown channel")
		wantError(t, g.do("POST", g.API+"/sub/users-state?token="+access, ""), 405, "Method not allowed")
		wantError(t, g.do("POST", g.API+"/pub/not-allowed", "{}"), 404, "Unknown channel")
	})

	t.Run("long-poll: snapshot, cursor, next message", func(t *testing.T) {
		r := pub(`{"states":{"201":{"state":"Unavailable","name":"Alice"}}}`)
		if r.Status != 201 && r.Status != 202 {
			t.Fatalf("publish: %d %s", r.Status, r.Raw)
		}
		settle()
		first := g.do("GET", g.API+"/sub/users-state?authorization="+access, "")
		if first.Status != 200 || !strings.Contains(first.Raw, "Unavailable") || first.Header.Get("Etag") == "" {
			t.Fatalf("first: %d %s %v", first.Status, first.Raw, first.Header)
		}
		done := make(chan reply, 1)
		go func() {
			done <- g.do("GET", g.API+"/sub/users-state", "", bearer(access),
				"If-Modified-Since: "+first.Header.Get("Last-Modified"), "If-None-Match: "+first.Header.Get("Etag"))
		}()
		time.Sleep(300 * time.Millisecond)
		pub(`{"states":{"201":{"state":"Idle","name":"Alice"}}}`)
		select {
		case r := <-done:
			if r.Status != 200 || !strings.Contains(r.Raw, "Idle") {
				t.Fatalf("next: %d %s", r.Status, r.Raw)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the waiting subscriber got nothing")
		}
		settle()
		u := g.do("GET", g.API+"/users", "", bearer(access))
		if u.Status != 200 || !strings.Contains(u.Raw, `"statuses":[{"states":{"201":{"state":"Idle"`) || !strings.Contains(u.Raw, `"username":"201"`) {
			t.Fatalf("users: %d %s", u.Status, u.Raw)
		}
	})

	t.Run("WebSocket streams and is cut off at logout", func(t *testing.T) {
		a3, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
		conn, rd := dialWebSocket(t, g.API+"/sub/users-state?token="+a3)
		if f := readFrame(t, conn, rd); !strings.Contains(f, `"states"`) {
			t.Fatalf("first frame %q", f)
		}
		pub(`{"states":{"203":{"state":"Idle","name":"Carol"}}}`)
		if f := readFrame(t, conn, rd); !strings.Contains(f, `"203"`) {
			t.Fatalf("live frame %q", f)
		}
		g.do("POST", g.API+"/auth/logout", "", bearer(a3))
		if f := readFrame(t, conn, rd); f != "<close>" {
			t.Fatalf("after logout: %q", f)
		}
	})

	t.Run("EventSource is cut off at logout", func(t *testing.T) {
		a2, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
		rd, body := openStream(t, g.API+"/sub/users-state?access_token="+a2)
		defer body.Close()
		if l := readUntilBlank(t, rd); l != ": hi\n" {
			t.Fatalf("stream start %q", l)
		}
		if ev := readUntilBlank(t, rd); !strings.HasPrefix(ev, "id: ") || !strings.Contains(ev, "data: ") {
			t.Fatalf("snapshot event %q", ev)
		}
		pub(`{"states":{"202":{"state":"Idle","name":"Bob"}}}`)
		if ev := readUntilBlank(t, rd); !strings.Contains(ev, `"202"`) {
			t.Fatalf("live event %q", ev)
		}
		if r := g.do("POST", g.API+"/auth/logout", "", bearer(a2)); r.Status != 200 {
			t.Fatal(r.Raw)
		}
		ended := make(chan error, 1)
		go func() { _, err := io.ReadAll(rd); ended <- err }()
		select {
		case <-ended:
		case <-time.After(2 * time.Second):
			t.Fatal("the stream stayed open after logout")
		}
	})
}

func openStream(t *testing.T, url string) (*bufio.Reader, io.ReadCloser) {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != 200 {
		t.Fatalf("stream: %d", resp.StatusCode)
	}
	return bufio.NewReader(resp.Body), resp.Body
}

func readUntilBlank(t *testing.T, rd *bufio.Reader) string {
	t.Helper()
	var b strings.Builder
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			t.Fatalf("reading stream: %v (so far %q)", err, b.String())
		}
		if line == "\n" {
			return b.String()
		}
		b.WriteString(line)
	}
}

func TestPubSubEmbedded(t *testing.T) {
	g := startGateway(t, "", "softphone_api")
	pubsubSuite(t, g, false)
}

func TestPubSubThroughNchan(t *testing.T) {
	nc := testenv.StartNchan(t, "")
	g := startGateway(t, "pubsub {\n nchan_url "+nc.URL+"\n}", "softphone_api")
	pubsubSuite(t, g, true)
}

// A stream ends when its token expires, even without a logout.
func TestStreamEndsWhenTokenExpires(t *testing.T) {
	g := startGateway(t, "access_ttl 2s\nleeway 1s", "softphone_api")
	access, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	rd, body := openStream(t, g.API+"/sub/users-state?token="+access)
	defer body.Close()
	readUntilBlank(t, rd)
	start := time.Now()
	io.ReadAll(rd)
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("stream lived %s past a 2s token", d)
	}
}

// Issue 4: publishing is for loopback peers only. The gateway listens on every interface
// and is reached through this machine's non-loopback address.
func TestPublisherFromAnotherAddressIsRefused(t *testing.T) {
	ip := nonLoopbackIP(t)
	g := startGatewayOn(t, "", "", "softphone_api")
	remote := "http://" + net.JoinHostPort(ip, strconv.Itoa(g.Port)) + DefaultPrefix
	r := g.do("POST", remote+"/pub/users-state", `{"states":{}}`, "X-Forwarded-For: 127.0.0.1")
	wantError(t, r, 403, "Forbidden")
	wantError(t, g.do("POST", remote+"/sip/auth", `{}`), 403, "Forbidden")
	wantError(t, g.do("POST", remote+"/admin/logout-all", `{"username":"201"}`), 403, "Forbidden")
	if r := g.do("POST", g.API+"/pub/users-state", `{"states":{}}`); r.Status != 202 && r.Status != 201 {
		t.Fatalf("loopback publish: %d", r.Status)
	}
}

func nonLoopbackIP(t *testing.T) string {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && !ipn.IP.IsLoopback() && ipn.IP.To4() != nil {
			return ipn.IP.String()
		}
	}
	t.Skip("this machine has no non-loopback IPv4 address; TestLoopbackPeer covers the check")
	return ""
}

// A token in the query never reaches a log line.
func TestQueryTokenNotLogged(t *testing.T) {
	p := startExampleProc(t, t.TempDir())
	g := p.client()
	access, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	g.do("POST", g.API+"/pub/users-state", `{"states":{}}`)
	g.do("GET", g.API+"/sub/users-state?authorization="+access, "")
	g.do("GET", g.API+"/sub/users-state?token=forged."+access[10:], "")
	g.do("GET", g.Base+"/pbxcore/softphone/recordings/demo.wav?access_token="+access, "")
	time.Sleep(200 * time.Millisecond)
	logs := p.log()
	if !strings.Contains(logs, "/sub/users-state") {
		t.Fatalf("the subscribe requests were not logged at all:\n%s", logs)
	}
	if strings.Contains(logs, access[20:60]) {
		t.Fatal("a token reached the log")
	}
	sec, _ := os.ReadFile(filepath.Join(p.env[2][len("SOFTPHONE_DATA_DIR="):], "security.log"))
	if !strings.Contains(string(sec), "[NCHAN_SUB_ACCESS_DENIED]") || strings.Contains(string(sec), access[20:60]) {
		t.Fatalf("security.log: %s", sec)
	}
}

func dialWebSocket(t *testing.T, url string) (net.Conn, *bufio.Reader) {
	t.Helper()
	rest := strings.TrimPrefix(url, "http://")
	host, path, _ := strings.Cut(rest, "/")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	io.WriteString(conn, "GET /"+path+" HTTP/1.1\r\nHost: "+host+"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
	rd := bufio.NewReader(conn)
	resp, err := http.ReadResponse(rd, nil)
	// RFC 6455 §1.3's sample key and its accept value.
	if err != nil || resp.StatusCode != 101 || resp.Header.Get("Sec-WebSocket-Accept") != "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return conn, rd
}

// readFrame returns a text frame's payload, or "<close>".
func readFrame(t *testing.T, conn net.Conn, rd *bufio.Reader) string {
	t.Helper()
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var h [2]byte
	if _, err := io.ReadFull(rd, h[:]); err != nil {
		t.Fatalf("frame: %v", err)
	}
	n := int(h[1] & 0x7f)
	if n == 126 {
		var e [2]byte
		io.ReadFull(rd, e[:])
		n = int(e[0])<<8 | int(e[1])
	}
	p := make([]byte, n)
	io.ReadFull(rd, p)
	if h[0]&0x0f == 0x8 {
		return "<close>"
	}
	return string(p)
}

// Issue 6: a parked subscriber keeps its socket and a few small structs, not the request it
// came in on. Its context used to derive from the request's, which kept the request, Caddy's
// replacer and vars and net/http's connection with its buffers alive while it waited: some
// 15 KiB per phone on the gateway, and 10k phones per gateway is the target.
func TestParkedSubscribersHoldLittleMemory(t *testing.T) {
	g := startGateway(t, "", "softphone_api")
	access, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	// heap is the live heap: the least of a few readings, each after two collections (the
	// second empties sync.Pool's victim cache), so that whatever else the process does for a
	// moment does not count.
	heap := func() int64 {
		least := int64(math.MaxInt64)
		for range 3 {
			runtime.GC()
			runtime.GC()
			var ms runtime.MemStats
			runtime.ReadMemStats(&ms)
			least = min(least, int64(ms.HeapAlloc))
			time.Sleep(20 * time.Millisecond)
		}
		return least
	}
	inSubscribe := func() bool {
		buf := make([]byte, 4<<20)
		return bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("caddymodule.(*API).subscribe("))
	}
	for _, tc := range []struct{ name, header string }{
		{"long-poll", ""},
		{"EventSource", "Accept: text/event-stream\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			addr := "127.0.0.1:" + strconv.Itoa(g.Port)
			accepted := metrics.subscriptions.WithLabelValues("ok")
			want := testutil.ToFloat64(accepted)
			park := func(n int) {
				for range n {
					conn, err := net.Dial("tcp", addr)
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { conn.Close() })
					io.WriteString(conn, "GET "+DefaultPrefix+"/sub/users-state?token="+access+" HTTP/1.1\r\nHost: "+addr+"\r\n"+tc.header+"\r\n")
				}
				// A parked subscriber has no goroutine: wait until every request has reached
				// the handler and every handler has returned.
				deadline := time.Now().Add(10 * time.Second)
				for testutil.ToFloat64(accepted) < want+float64(n) || inSubscribe() {
					if time.Now().After(deadline) {
						t.Fatalf("%v of %d subscribers accepted, handlers still running: %v", testutil.ToFloat64(accepted)-want, n, inSubscribe())
					}
					time.Sleep(10 * time.Millisecond)
				}
				want += float64(n)
			}
			park(20) // what the first subscribers set up once (pools, maps) is not theirs to carry
			const n = 200
			before := heap()
			park(n)
			per := (heap() - before) / n
			t.Logf("%d bytes of heap per parked subscriber", per)
			if per > 6<<10 {
				t.Fatalf("%d bytes of heap per parked subscriber, want at most 6 KiB", per)
			}
		})
	}
}
