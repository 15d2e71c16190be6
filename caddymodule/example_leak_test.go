package caddymodule

import (
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// Review finding: Caddy writes its error log (http.log.error.*) with a copy of the request
// taken before any handler runs, so softphone_guard removing the query token does not keep
// it out of that log. A guarded media link whose backend fails (a 502 from a dead media
// server) wrote ?authorization=<JWT> to stderr in full. The token must reach no file at all:
// not Caddy's log, not security.log.
func TestExampleFailedMediaRequestLogsNoQueryToken(t *testing.T) {
	dir := t.TempDir()
	dead := "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t))
	config := exampleWithBackend(t, "recordings-guard", "reverse_proxy "+dead)
	p := startExampleText(t, dir, config, "SOFTPHONE_MEDIA_AUTH=guard")
	access, _ := p.client().login("201", "b749601f329a635a19c4a87bc359be3d")

	for _, param := range queryTokenParams {
		t.Run("?"+param+"= to a dead backend is a 502", func(t *testing.T) {
			resp, err := http.Get(p.Base + "/pbxcore/softphone/recordings/x.wav?" + param + "=" + url.QueryEscape(access))
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusBadGateway {
				t.Fatalf("status %d, want 502", resp.StatusCode)
			}
		})
	}

	// Both logs are written after the answer (security.log within 200 ms): wait until every
	// request has its error line and its grant, so the check below is not vacuous.
	n := len(queryTokenParams)
	secLog := filepath.Join(dir, "data", "security.log")
	deadline := time.Now().Add(10 * time.Second)
	for {
		sec, _ := os.ReadFile(secLog)
		if strings.Count(p.log(), `"logger":"http.log.error`) >= n && strings.Count(string(sec), "[MEDIA_ACCESS_GRANTED]") >= n {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("want %d error log lines and %d grants in security.log; log:\n%s\nsecurity.log:\n%s", n, n, p.log(), sec)
		}
		time.Sleep(50 * time.Millisecond)
	}
	assertNoTokenInFiles(t, dir, access)
}

// Review finding: forward_auth does not rewrite the request it lets through, so with
// reverse_proxy in place of file_server (what the example says to do when the recordings sit
// on another server) the media server received ?authorization=<JWT> and logged it. The example
// removes the query token after the check; the check must still accept it.
// The bearer token in an Authorization header does not go upstream either, in either mode.
func TestExampleForwardAuthUpstreamGetsNoQueryToken(t *testing.T) {
	for _, mode := range []string{"forward_auth", "guard"} {
		t.Run(mode, func(t *testing.T) { testUpstreamGetsNoToken(t, mode) })
	}
}

func testUpstreamGetsNoToken(t *testing.T, mode string) {
	type asked struct{ uri, username, auth string }
	var mu sync.Mutex
	var seen []asked
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, asked{r.RequestURI, r.Header.Get("X-Softphone-Username"), r.Header.Get("Authorization")})
		mu.Unlock()
		io.WriteString(w, "media")
	}))
	t.Cleanup(upstream.Close)
	config := exampleWithBackend(t, "recordings-"+mode, "reverse_proxy "+upstream.Listener.Addr().String())
	p := startExampleText(t, t.TempDir(), config, "SOFTPHONE_MEDIA_AUTH="+mode)
	access, _ := p.client().login("201", "b749601f329a635a19c4a87bc359be3d")
	rec := p.Base + "/pbxcore/softphone/recordings/demo.wav"

	type tc struct {
		name    string
		query   string
		header  string
		status  int
		wantURI string // what the media server sees; "" = it is not asked
	}
	cases := []tc{
		{name: "header token passes, query kept", query: "?start=5", header: "Bearer " + access, status: 200, wantURI: "/demo.wav?start=5"},
		{name: "no token is refused before the media server", query: "?start=5", status: 401},
		{name: "bad query token is refused before the media server", query: "?authorization=garbage", status: 401},
	}
	for _, param := range queryTokenParams {
		cases = append(cases, tc{
			name:    "?" + param + "= passes the check and is removed before the media server",
			query:   "?" + param + "=" + url.QueryEscape(access) + "&start=5",
			status:  200,
			wantURI: "/demo.wav?start=5",
		})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			mu.Lock()
			seen = nil
			mu.Unlock()
			req, _ := http.NewRequest("GET", rec+c.query, nil)
			if c.header != "" {
				req.Header.Set("Authorization", c.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != c.status {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, c.status, body)
			}
			mu.Lock()
			defer mu.Unlock()
			if c.wantURI == "" {
				if len(seen) != 0 {
					t.Fatalf("the media server was asked for %s", seen[0].uri)
				}
				return
			}
			if len(seen) != 1 || string(body) != "media" {
				t.Fatalf("the media server was asked %d times, answer %q", len(seen), body)
			}
			if got := seen[0].uri; got != c.wantURI {
				t.Fatalf("the media server was asked for %s, want %s", got, c.wantURI)
			}
			if got := seen[0].username; got != "201" {
				t.Fatalf("X-Softphone-Username %q, want the checked user 201", got)
			}
			if got := seen[0].auth; got != "" {
				t.Fatalf("the media server got Authorization %q", got)
			}
		})
	}
}

// exampleWithBackend returns Caddyfile.example with the file_server of snippet replaced by
// backend: the edit the example asks of a user whose recordings sit on another server.
func exampleWithBackend(t *testing.T, snippet, backend string) string {
	t.Helper()
	b, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	src := string(b)
	start := strings.Index(src, "("+snippet+") {\n")
	if start < 0 {
		t.Fatalf("Caddyfile.example has no snippet %s", snippet)
	}
	end := start + strings.Index(src[start:], "\n}\n")
	lines := strings.Split(src[start:end], "\n")
	replaced := 0
	for i, line := range lines {
		if strings.TrimSpace(line) == "file_server" {
			lines[i] = strings.Replace(line, "file_server", backend, 1)
			replaced++
		}
	}
	if replaced != 1 {
		t.Fatalf("snippet %s has %d file_server lines, want 1", snippet, replaced)
	}
	return src[:start] + strings.Join(lines, "\n") + src[end:]
}

// startExampleText runs config, a variant of Caddyfile.example, placed by the same
// environment as startExampleProc (plus env), with data in dir.
func startExampleText(t *testing.T, dir, config string, env ...string) *gatewayProc {
	t.Helper()
	path := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	return startExampleConfig(t, dir, path, env...)
}

// assertNoTokenInFiles fails if any file under dir holds tok or its signature.
func assertNoTokenInFiles(t *testing.T, dir, tok string) {
	t.Helper()
	sig := tok[strings.LastIndex(tok, ".")+1:]
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, line := range strings.Split(string(b), "\n") {
			if strings.Contains(line, tok) || strings.Contains(line, sig) {
				t.Errorf("%s holds the token:\n%s", path, line)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
