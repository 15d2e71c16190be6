package caddymodule

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// testGateway is one in-process Caddy running a Caddyfile with our modules. Caddy's config is
// process-global, so gateways in this package run one at a time.
type testGateway struct {
	t       testing.TB
	Base    string // http://127.0.0.1:port
	API     string // Base + DefaultPrefix
	DataDir string
	Port    int
}

var gatewayMu sync.Mutex

// testUsers is the users file every gateway test starts with.
const testUsers = `[
 {"id":1,"username":"201","password":"b749601f329a635a19c4a87bc359be3d","display_name":"Alice","role":"user"},
 {"id":2,"username":"202","password":"secret-202","display_name":"Bob","role":"user"},
 {"id":3,"username":"203","ha1":"58333c4c6fb95590d6317eb99f65698b","display_name":"Carol","role":"admin"},
 {"id":4,"username":"204","password":"secret-204","display_name":"Dave","enabled":false}
]`

// startGateway writes the users file and runs a Caddyfile whose `{{global}}` and `{{site}}`
// blocks are filled with the given snippets; "{PORT}" in site becomes the gateway's port.
func startGateway(t testing.TB, global, site string) *testGateway {
	t.Helper()
	return startGatewayOn(t, "127.0.0.1", global, site)
}

// startGatewayOn is startGateway listening on host ("" = every interface).
func startGatewayOn(t testing.TB, host, global, site string) *testGateway {
	t.Helper()
	gatewayMu.Lock()
	t.Cleanup(gatewayMu.Unlock)

	dir := t.TempDir()
	usersFile := filepath.Join(dir, "users.json")
	if err := os.WriteFile(usersFile, []byte(testUsers), 0o600); err != nil {
		t.Fatal(err)
	}
	g := &testGateway{t: t, DataDir: filepath.Join(dir, "data"), Port: testenv.FreePort(t)}
	g.Base = "http://127.0.0.1:" + strconv.Itoa(g.Port)
	g.API = g.Base + DefaultPrefix
	cfg := fmt.Sprintf(`{
	admin off
	auto_https off
	persist_config off
	storage file_system %s
	softphone {
		data_dir %s
		users file %s
		%s
	}
}
http://%s:%d {
	%s
}
`, filepath.Join(dir, "caddy"), g.DataDir, usersFile, global, host, g.Port, strings.ReplaceAll(site, "{PORT}", strconv.Itoa(g.Port)))
	g.load(cfg)
	t.Cleanup(func() {
		if err := caddy.Stop(); err != nil {
			t.Logf("stopping caddy: %v", err)
		}
	})
	return g
}

func (g *testGateway) load(caddyfile string) {
	g.t.Helper()
	cfgJSON, warnings, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(caddyfile), map[string]any{"filename": "Caddyfile"})
	if err != nil {
		g.t.Fatalf("adapting Caddyfile: %v\n%s", err, caddyfile)
	}
	for _, w := range warnings {
		g.t.Logf("caddyfile warning: %s", w.String())
	}
	if err := caddy.Load(cfgJSON, true); err != nil {
		g.t.Fatalf("loading config: %v", err)
	}
	testenv.WaitTCP(g.t, "127.0.0.1:"+strconv.Itoa(g.Port), 5*time.Second)
}

// reply is a decoded answer.
type reply struct {
	Status int
	Header http.Header
	Body   map[string]any
	Raw    string
}

func (r reply) str(key string) string {
	s, _ := r.Body[key].(string)
	return s
}

// do sends a request; headers are "Name: value" strings.
func (g *testGateway) do(method, url, body string, headers ...string) reply {
	g.t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		g.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	for _, h := range headers {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Add(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		g.t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	r := reply{Status: resp.StatusCode, Header: resp.Header, Raw: string(raw)}
	if bytes.HasPrefix(bytes.TrimSpace(raw), []byte("{")) {
		if err := json.Unmarshal(raw, &r.Body); err != nil {
			g.t.Fatalf("%s %s: answer is not JSON: %v: %s", method, url, err, raw)
		}
	}
	return r
}

// login logs 201 in and returns its tokens.
func (g *testGateway) login(user, password string) (access, refresh string) {
	g.t.Helper()
	r := g.do("POST", g.API+"/auth/login", fmt.Sprintf(`{"username":%q,"password":%q}`, user, password))
	if r.Status != 200 {
		g.t.Fatalf("login %s: %d %s", user, r.Status, r.Raw)
	}
	return r.str("access_token"), r.str("refresh_token")
}

// signingKey is the gateway's token key, as secret.key holds it (trimmed), to forge tokens with.
func (g *testGateway) signingKey() []byte {
	g.t.Helper()
	key, err := os.ReadFile(filepath.Join(g.DataDir, "secret.key"))
	if err != nil {
		g.t.Fatal(err)
	}
	return []byte(strings.TrimSpace(string(key)))
}

func bearer(tok string) string { return "Authorization: Bearer " + tok }

// wantError checks status, the contract's envelope and its exact message.
func wantError(t *testing.T, r reply, status int, msg string) {
	t.Helper()
	if r.Status != status {
		t.Fatalf("status %d, want %d: %s", r.Status, status, r.Raw)
	}
	if r.Body["success"] != false || r.str("error") != msg {
		t.Fatalf("body %s, want success=false error=%q", r.Raw, msg)
	}
	if _, ok := r.Body["timestamp"].(float64); !ok {
		t.Fatalf("error body without a numeric timestamp: %s", r.Raw)
	}
}
