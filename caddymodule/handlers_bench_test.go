package caddymodule

import (
	"bytes"
	"crypto/rand"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// benchSite is bench/run.sh's gateway (part 1): Caddy's own respond route, an unprotected
// file, the file behind softphone_guard and behind forward_auth → check-media-access (over
// loopback and with the in-process softphone transport), and the API. {FILES} is the folder with rec.wav.
const benchSite = `
	handle /respond {
		respond "ok" 200
	}
	handle_path /file/* {
		root * {FILES}
		file_server
	}
	handle_path /guard/* {
		softphone_guard
		root * {FILES}
		file_server
	}
	handle_path /fa/* {
		forward_auth 127.0.0.1:{PORT} {
			uri /pbxcore/api/module-softphone-backend/v1/check-media-access
			copy_headers X-Softphone-User-Id X-Softphone-Username X-Softphone-Role
		}
		root * {FILES}
		file_server
	}
	handle_path /fal/* {
		forward_auth localhost {
			uri /pbxcore/api/module-softphone-backend/v1/check-media-access
			copy_headers X-Softphone-User-Id X-Softphone-Username X-Softphone-Role
			transport softphone
		}
		root * {FILES}
		file_server
	}
	softphone_api
`

// benchRoutes are bench/run.sh's part-1 rows; each check-media-access row compares with
// respond, each protected file with the unprotected one.
func benchRoutes(access string) []struct {
	name, path string
	header     []string
} {
	auth := "Authorization: Bearer " + access
	return []struct {
		name, path string
		header     []string
	}{
		{"respond", "/respond", nil},
		{"check-media-access", DefaultPrefix + "/check-media-access", []string{auth}},
		// What forward_auth sends: the original request's headers and query, the forwarded
		// method and URI, and reverse_proxy's X-Forwarded-*.
		{"check-media-access-subrequest", DefaultPrefix + "/check-media-access", []string{auth,
			"X-Forwarded-Method: GET", "X-Forwarded-Uri: /fa/rec.wav", "X-Forwarded-For: 127.0.0.1",
			"X-Forwarded-Proto: http", "X-Forwarded-Host: 127.0.0.1", "User-Agent: wrk", "Accept-Encoding: identity"}},
		{"file", "/file/rec.wav", nil},
		{"guard", "/guard/rec.wav", []string{auth}},
		{"forward_auth", "/fa/rec.wav", []string{auth}},
		{"forward_auth-transport-softphone", "/fal/rec.wav", []string{auth}},
	}
}

func startBenchGateway(b *testing.B) (*testGateway, string) {
	files := b.TempDir()
	rec := make([]byte, 4096)
	rand.Read(rec)
	if err := os.WriteFile(filepath.Join(files, "rec.wav"), rec, 0o600); err != nil {
		b.Fatal(err)
	}
	g := startGateway(b, "", strings.ReplaceAll(benchSite, "{FILES}", files))
	access, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	return g, access
}

// BenchmarkHandlerChain drives the provisioned server's handler chain in-process (Caddy's
// Server.ServeHTTP: routing, replacer, our handlers, the file server) with no network and a
// writer that discards: what each route costs inside Caddy. forward_auth's subrequest goes
// over loopback to the same server, as in production.
func BenchmarkHandlerChain(b *testing.B) {
	g, access := startBenchGateway(b)
	srv := activeServer(b)
	for _, rt := range benchRoutes(access) {
		b.Run(rt.name, func(b *testing.B) {
			base := httptest.NewRequest("GET", g.Base+rt.path, nil)
			base.RemoteAddr = "127.0.0.1:40000"
			for _, h := range rt.header {
				k, v, _ := strings.Cut(h, ": ")
				base.Header.Add(k, v)
			}
			w := &discardWriter{}
			hdr := http.Header{}
			var r http.Request
			var u = *base.URL
			serve := func() {
				r = *base
				u = *base.URL
				r.URL = &u
				clear(hdr)
				maps.Copy(hdr, base.Header)
				r.Header = hdr
				w.h = http.Header{} // net/http gives every request a new map too
				w.status = 0
				srv.ServeHTTP(w, &r)
			}
			serve()
			if w.status != http.StatusOK {
				b.Fatalf("%s: status %d", rt.path, w.status)
			}
			b.ReportAllocs()
			cpu := cpuTime()
			for b.Loop() {
				serve()
			}
			reportCPU(b, cpu)
		})
	}
}

// discardWriter is a ResponseWriter that keeps the status and drops the body. It takes
// deadlines as net/http's does (Caddy sets one per write).
type discardWriter struct {
	h      http.Header
	status int
}

func (w *discardWriter) Header() http.Header { return w.h }

func (w *discardWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *discardWriter) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return len(p), nil
}

func (w *discardWriter) SetReadDeadline(time.Time) error  { return nil }
func (w *discardWriter) SetWriteDeadline(time.Time) error { return nil }

// BenchmarkLoopback sends each route's request over one keep-alive loopback connection and
// reads the answer: the handler chain plus net/http's request parsing and response writing,
// which bench/run.sh's wrk rows also pay. Like wrk, the client only finds the end of each
// answer (it does not parse headers), so its own cost stays small and the same for every row.
func BenchmarkLoopback(b *testing.B) {
	g, access := startBenchGateway(b)
	for _, rt := range benchRoutes(access) {
		b.Run(rt.name, func(b *testing.B) {
			conn, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(g.Port))
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			req := "GET " + rt.path + " HTTP/1.1\r\nHost: 127.0.0.1:" + strconv.Itoa(g.Port) + "\r\n"
			for _, h := range rt.header {
				req += h + "\r\n"
			}
			req = req + "\r\n"
			buf := make([]byte, 64<<10)
			roundTrip := func() {
				if _, err := io.WriteString(conn, req); err != nil {
					b.Fatal(err)
				}
				n, end := 0, -1
				for end < 0 || n < end {
					m, err := conn.Read(buf[n:])
					if err != nil {
						b.Fatal(err)
					}
					n += m
					if end < 0 {
						end = answerEnd(buf[:n])
					}
				}
				if n != end || !bytes.HasPrefix(buf, []byte("HTTP/1.1 200 ")) {
					b.Fatalf("%s: answer %q", rt.path, buf[:min(n, 200)])
				}
			}
			roundTrip()
			cpu := cpuTime()
			for b.Loop() {
				roundTrip()
			}
			reportCPU(b, cpu)
		})
	}
}

// answerEnd is where an HTTP/1.1 answer with a Content-Length ends, -1 while its head is
// incomplete.
func answerEnd(b []byte) int {
	head := bytes.Index(b, []byte("\r\n\r\n"))
	if head < 0 {
		return -1
	}
	_, v, ok := bytes.Cut(b[:head], []byte("\r\nContent-Length: "))
	if !ok {
		return head + 4
	}
	v, _, _ = bytes.Cut(v, []byte("\r\n"))
	n, _ := strconv.Atoi(string(v))
	return head + 4 + n
}

// cpuTime is the CPU time the process has used. The bench machine's two cores are shared
// (bench/README.md), so wall time per operation wanders with whatever else runs; CPU time
// per operation (server and client here) is what a saturated gateway's rate depends on.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports the CPU time per operation since start.
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// activeServer is the running config's HTTP server (the test gateways have one), to drive
// its handler chain without a network.
func activeServer(tb testing.TB) http.Handler {
	tb.Helper()
	httpApp, err := caddy.ActiveContext().App("http")
	if err != nil {
		tb.Fatal(err)
	}
	var srv http.Handler
	for _, s := range httpApp.(*caddyhttp.App).Servers {
		srv = s
	}
	return srv
}
