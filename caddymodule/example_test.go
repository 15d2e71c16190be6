package caddymodule

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"testing"
)

// Issue 4: Caddyfile.example protects the recordings path two ways a user can choose
// between; both serve the file with a token and refuse it without, and the token never
// reaches a log line.
func TestExampleRecordings(t *testing.T) {
	want, err := os.ReadFile("../examples/recordings/demo.wav")
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []string{"guard", "forward_auth"} {
		t.Run(mode, func(t *testing.T) {
			p := startExampleProc(t, t.TempDir(), "SOFTPHONE_MEDIA_AUTH="+mode)
			g := p.client()
			access, refresh := g.login("201", "b749601f329a635a19c4a87bc359be3d")
			rec := g.Base + "/pbxcore/softphone/recordings/demo.wav"

			get := func(u string, hdr ...string) (int, []byte) {
				req, _ := http.NewRequest("GET", u, nil)
				for _, h := range hdr {
					k, v, _ := strings.Cut(h, ": ")
					req.Header.Set(k, v)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				defer resp.Body.Close()
				b, _ := io.ReadAll(resp.Body)
				return resp.StatusCode, b
			}
			if st, _ := get(rec); st != 401 {
				t.Fatalf("no token: %d", st)
			}
			if st, _ := get(rec + "?authorization=garbage"); st != 401 {
				t.Fatalf("bad token: %d", st)
			}
			if st, _ := get(rec + "?token=" + refresh); st != 403 {
				t.Fatalf("refresh token: %d", st)
			}
			if st, body := get(rec, bearer(access)); st != 200 || string(body) != string(want) {
				t.Fatalf("header token: %d, %d bytes", st, len(body))
			}
			for _, param := range []string{"authorization", "token", "access_token"} {
				if st, body := get(rec + "?" + param + "=" + url.QueryEscape(access)); st != 200 || string(body) != string(want) {
					t.Fatalf("?%s=: %d, %d bytes", param, st, len(body))
				}
			}
			for _, evil := range []string{"/pbxcore/softphone/recordings/../../../etc/passwd", "/pbxcore/softphone/recordings/..%2f..%2f..%2fetc/passwd"} {
				if _, body := get(g.Base + evil + "?token=" + access); strings.Contains(string(body), "root:") {
					t.Fatalf("path traversal %s served /etc/passwd", evil)
				}
			}
			logs := p.log()
			if !strings.Contains(logs, "/pbxcore/softphone/recordings/demo.wav") {
				t.Fatalf("the access log did not record the requests:\n%s", logs)
			}
			if strings.Contains(logs, access) || strings.Contains(logs, refresh) || strings.Contains(logs, access[len(access)-20:]) {
				t.Fatal("a token reached the log")
			}
		})
	}
}
