package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/internal/sipdigest"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/config"
)

// testHook is the jambonz callback the tests run: it recomputes the digest from a password
// table, exactly as the gateway's sip/auth does, and can be told to misbehave.
type testHook struct {
	srv       *httptest.Server
	passwords map[string]string
	calls     atomic.Int32
	mu        sync.Mutex
	mode      string // "", "fail", "500", "hang", "garbage"
	expires   int    // when > 0, answered as expires
	last      map[string]any
	hang      chan struct{}
}

func newTestHook(t *testing.T) *testHook {
	h := &testHook{passwords: map[string]string{"201": "pw-201", "202": "pw-202", "203": "pw-203"}, hang: make(chan struct{})}
	h.srv = httptest.NewServer(http.HandlerFunc(h.serve))
	t.Cleanup(func() {
		close(h.hang)
		h.srv.Close()
	})
	return h
}

func (h *testHook) set(mode string) {
	h.mu.Lock()
	h.mode = mode
	h.mu.Unlock()
}

func (h *testHook) serve(w http.ResponseWriter, r *http.Request) {
	h.calls.Add(1)
	h.mu.Lock()
	mode, exp := h.mode, h.expires
	h.mu.Unlock()
	switch mode {
	case "hang":
		// Read the body first: only then does net/http notice the client going away.
		io.Copy(io.Discard, r.Body)
		select {
		case <-h.hang:
		case <-r.Context().Done():
		}
		return
	case "500":
		w.WriteHeader(500)
		return
	case "garbage":
		io.WriteString(w, "<html>")
		return
	}
	var body map[string]any
	json.NewDecoder(r.Body).Decode(&body)
	h.mu.Lock()
	h.last = body
	h.mu.Unlock()
	s := func(k string) string { v, _ := body[k].(string); return v }
	c := sipdigest.Credentials{Username: s("username"), Realm: s("realm"), Nonce: s("nonce"), URI: s("uri"),
		Response: s("response"), Algorithm: s("algorithm"), QOP: s("qop"), NC: s("nc"), CNonce: s("cnonce")}
	pw, known := h.passwords[c.Username]
	if !known {
		pw = "decoy"
	}
	ok := known && sipdigest.Equal(sipdigest.Response(c, s("method"), sipdigest.HA1(c.Algorithm, c.Username, c.Realm, pw)), c.Response)
	if mode == "fail" || !ok {
		io.WriteString(w, `{"status":"fail","msg":"invalid credentials"}`)
		return
	}
	ans := map[string]any{"status": "ok", "display_name": "User " + c.Username, "call_hook": "http://127.0.0.1/call"}
	if exp > 0 {
		ans["expires"] = exp
	}
	json.NewEncoder(w).Encode(ans)
}

// sidecar is a running registrar.
type sidecar struct {
	b      bound
	hook   *testHook
	cancel context.CancelFunc
	done   chan error
	cfg    *config.Config
}

const testRealm = "pbx.test"

// startSidecar runs the sidecar on free loopback ports; mod may change the config. hook may
// be nil when mod sets the hook URL.
func startSidecar(t *testing.T, hook *testHook, mod func(*config.Config)) *sidecar {
	t.Helper()
	hookURL := "http://127.0.0.1:1/unused"
	if hook != nil {
		hookURL = hook.srv.URL
	}
	cfg, err := config.Load(func(string) string { return "" }, []string{
		"-listen", "udp:127.0.0.1:0,tcp:127.0.0.1:0,ws:127.0.0.1:0",
		"-http-addr", "127.0.0.1:0",
		"-auth-hook-url", hookURL,
		"-auth-hook-timeout", "300ms",
		"-nonce-secret", "test-nonce-secret-0123456789",
	})
	if err != nil {
		t.Fatal(err)
	}
	if mod != nil {
		mod(cfg)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &sidecar{hook: hook, cancel: cancel, done: make(chan error, 1), cfg: cfg}
	ready := make(chan bound, 1)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(&testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	}
	go func() { s.done <- run(ctx, cfg, log, ready) }()
	select {
	case s.b = <-ready:
	case err := <-s.done:
		t.Fatalf("sidecar did not start: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("sidecar did not start")
	}
	t.Cleanup(s.stop)
	return s
}

type testWriter struct{ t *testing.T }

func (w *testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

func (s *sidecar) stop() {
	if s.cancel == nil {
		return
	}
	s.cancel()
	select {
	case <-s.done:
	case <-time.After(10 * time.Second):
	}
	s.cancel = nil
}

// locations reads GET /locations/{aor} from the ops endpoint.
func (s *sidecar) locations(t *testing.T, aor string) []map[string]any {
	t.Helper()
	resp, err := http.Get("http://" + s.b.HTTP + "/locations/" + aor)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		Bindings []map[string]any `json:"bindings"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	return body.Bindings
}

// phone is a SIP client over one transport.
type phone struct {
	t         *testing.T
	client    *sipgo.Client
	transport string // UDP, TCP, WS
	dest      string // registrar host:port
	callID    string
	cseq      uint32
	user      string
	contact   string
	ua        string
}

func newPhone(t *testing.T, s *sidecar, transport, user string, opts ...sipgo.ClientOption) *phone {
	t.Helper()
	ua, err := sipgo.NewUA(sipgo.WithUserAgent("test-phone"))
	if err != nil {
		t.Fatal(err)
	}
	c, err := sipgo.NewClient(ua, append([]sipgo.ClientOption{sipgo.WithClientHostname("127.0.0.1")}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close(); ua.Close() })
	network := strings.ToLower(transport)
	return &phone{t: t, client: c, transport: transport, dest: s.b.SIP[network],
		callID: fmt.Sprintf("call-%s-%d@test", user, time.Now().UnixNano()), cseq: 1, user: user,
		contact: "sip:" + user + "@127.0.0.1:5999;transport=" + network, ua: "test-phone/1.0"}
}

// request builds a REGISTER; contacts are raw Contact values ("" for none), extra headers
// are "Name: value".
func (p *phone) request(contacts []string, extra ...string) *sip.Request {
	req := sip.NewRequest(sip.REGISTER, sip.Uri{Scheme: "sip", Host: testRealm})
	req.SetDestination(p.dest)
	req.SetTransport(p.transport)
	to := sip.Uri{Scheme: "sip", User: p.user, Host: testRealm}
	req.AppendHeader(&sip.ToHeader{Address: to, Params: sip.NewParams()})
	from := &sip.FromHeader{Address: to, Params: sip.NewParams()}
	from.Params.Add("tag", fmt.Sprintf("t%d", time.Now().UnixNano()))
	req.AppendHeader(from)
	cid := sip.CallIDHeader(p.callID)
	req.AppendHeader(&cid)
	req.AppendHeader(&sip.CSeqHeader{SeqNo: p.cseq, MethodName: sip.REGISTER})
	p.cseq++
	for _, c := range contacts {
		if c != "" {
			req.AppendHeader(sip.NewHeader("Contact", c))
		}
	}
	req.AppendHeader(sip.NewHeader("User-Agent", p.ua))
	for _, h := range extra {
		k, v, _ := strings.Cut(h, ": ")
		req.AppendHeader(sip.NewHeader(k, v))
	}
	return req
}

// reparse turns a request built from generic headers into what the server will see
// (typed Contact headers), by a round trip through sipgo's parser.
func reparse(t *testing.T, req *sip.Request) *sip.Request {
	t.Helper()
	msg, err := sip.NewParser().ParseSIP([]byte(req.String()))
	if err != nil {
		t.Fatalf("parsing %s: %v", req, err)
	}
	out := msg.(*sip.Request)
	out.SetDestination(req.Destination())
	out.SetTransport(req.Transport())
	return out
}

func (p *phone) send(req *sip.Request) *sip.Response {
	p.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	res, err := p.client.Do(ctx, reparse(p.t, req))
	if err != nil {
		p.t.Fatalf("%s REGISTER: %v", p.transport, err)
	}
	return res
}

// authorize answers challenge res for req with the given secret and algorithm, nc and
// returns the Authorization value.
func authorize(t *testing.T, res *sip.Response, user, secret, alg string, nc int) string {
	t.Helper()
	var ch string
	for _, h := range res.GetHeaders("WWW-Authenticate") {
		if strings.Contains(h.Value(), "algorithm="+alg+",") {
			ch = h.Value()
		}
	}
	if ch == "" {
		t.Fatalf("no %s challenge in %s", alg, res)
	}
	params, err := sipdigest.Parse(strings.Replace(ch, "Digest ", "Digest username=\"x\", uri=\"x\", response=\"x\", nc=00000001, cnonce=\"x\", ", 1))
	if err != nil {
		t.Fatalf("parsing challenge %q: %v", ch, err)
	}
	c := sipdigest.Credentials{Username: user, Realm: params.Realm, Nonce: params.Nonce, URI: "sip:" + testRealm,
		Algorithm: alg, QOP: "auth", NC: fmt.Sprintf("%08x", nc), CNonce: fmt.Sprintf("cn%d", time.Now().UnixNano())}
	c.Response = sipdigest.Response(c, "REGISTER", sipdigest.HA1(alg, user, c.Realm, secret))
	return fmt.Sprintf(`Digest username="%s", realm="%s", nonce="%s", uri="%s", response="%s", algorithm=%s, qop=auth, nc=%s, cnonce="%s"`,
		c.Username, c.Realm, c.Nonce, c.URI, c.Response, alg, c.NC, c.CNonce)
}

// register does the whole challenge/answer dance and returns the final response.
func (p *phone) register(secret, alg string, contacts []string, extra ...string) *sip.Response {
	p.t.Helper()
	res := p.send(p.request(contacts, extra...))
	if res.StatusCode != 401 {
		return res
	}
	auth := authorize(p.t, res, p.user, secret, alg, 1)
	return p.send(p.request(contacts, append(extra, "Authorization: "+auth)...))
}
