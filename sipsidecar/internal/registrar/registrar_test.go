package registrar

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/internal/sipdigest"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/authhook"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/digest"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

// hookFunc is the unit tests' hook; the integration tests in package main use a real HTTP one.
type hookFunc func(authhook.Request) (authhook.Verdict, error)

func (f hookFunc) Check(_ context.Context, r authhook.Request) (authhook.Verdict, error) { return f(r) }

// passwordHook accepts the digest of user 201 / "pw" (any realm).
var passwordHook = hookFunc(func(r authhook.Request) (authhook.Verdict, error) {
	c := sipdigest.Credentials{Username: r.Username, Realm: r.Realm, Nonce: r.Nonce, URI: r.URI, Algorithm: r.Algorithm, QOP: r.QOP, NC: r.NC, CNonce: r.CNonce}
	if r.Username == "201" && sipdigest.Equal(sipdigest.Response(c, r.Method, sipdigest.HA1(r.Algorithm, r.Username, r.Realm, "pw")), r.Response) {
		return authhook.Verdict{OK: true}, nil
	}
	return authhook.Verdict{Msg: "nope"}, nil
})

// handle runs Handle and reads its answer back with sipgo's parser (nil: none written).
func handle(t testing.TB, r *Registrar, req *sip.Request, src Source) *sip.Response {
	t.Helper()
	var w bytes.Buffer
	code := r.Handle(context.Background(), req, src, &w)
	if code == 0 {
		if w.Len() != 0 {
			t.Fatalf("Handle returned 0 but wrote %q", w.String())
		}
		return nil
	}
	res := parseAnswer(t, w.Bytes())
	if res.StatusCode != code {
		t.Fatalf("Handle returned %d but wrote %d", code, res.StatusCode)
	}
	return res
}

func parseAnswer(t testing.TB, b []byte) *sip.Response {
	t.Helper()
	m, err := sip.NewParser().ParseSIP(b)
	if err != nil {
		t.Fatalf("the answer does not parse: %v\n%s", err, b)
	}
	res, ok := m.(*sip.Response)
	if !ok {
		t.Fatalf("the answer is not a response:\n%s", b)
	}
	if !bytes.HasSuffix(b, []byte("\r\n\r\n")) || len(res.Body()) != 0 {
		t.Fatalf("the answer does not end at its empty body:\n%q", b)
	}
	return res
}

var t0 = time.Unix(1_900_000_000, 0)

func newTestRegistrar(hook Hook, guard *Guard) (*Registrar, location.Store, *digest.Nonces) {
	store := location.NewMemory()
	nonces := digest.NewNonces([]byte("unit-test-secret"), 5*time.Minute, func() time.Time { return t0 })
	return New(Options{Store: store, Nonces: nonces, Hook: hook, Guard: guard,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return t0 }}), store, nonces
}

// msg parses a REGISTER written with \n line ends; {AUTH} is replaced by auth (or removed).
func msg(t testing.TB, raw, auth string) *sip.Request {
	t.Helper()
	if auth == "" {
		raw = strings.ReplaceAll(raw, "{AUTH}\n", "")
	} else {
		raw = strings.ReplaceAll(raw, "{AUTH}", "Authorization: "+auth)
	}
	raw = strings.ReplaceAll(strings.TrimLeft(raw, "\n"), "\n", "\r\n")
	m, err := sip.NewParser().ParseSIP([]byte(raw))
	if err != nil {
		t.Fatalf("parsing test message: %v\n%s", err, raw)
	}
	return m.(*sip.Request)
}

const base = `
REGISTER sip:pbx SIP/2.0
Via: SIP/2.0/TCP 127.0.0.1:5070;branch=z9hG4bK-1
From: <sip:201@pbx>;tag=a
To: <sip:201@pbx>
Call-ID: c1
CSeq: 2 REGISTER
{CONTACT}
{AUTH}
Content-Length: 0

`

func reg(contact string) string { return strings.Replace(base, "{CONTACT}", contact, 1) }

var src = Source{IP: "127.0.0.1", Port: 5070, Transport: "tcp"}

// goodAuth answers a fresh nonce for user@pbx.
func goodAuth(n *digest.Nonces, user, realm, alg, secret string, nc int) string {
	return authFor(n, user+"@pbx", user, realm, alg, secret, nc)
}

// authFor answers a fresh nonce made for the AOR scope.
func authFor(n *digest.Nonces, scope, user, realm, alg, secret string, nc int) string {
	c := sipdigest.Credentials{Username: user, Realm: realm, Nonce: n.MakeFor(scope), URI: "sip:pbx", Algorithm: alg, QOP: "auth", NC: fmt.Sprintf("%08x", nc), CNonce: "cn"}
	c.Response = sipdigest.Response(c, "REGISTER", sipdigest.HA1(alg, user, realm, secret))
	return fmt.Sprintf(`Digest username="%s", realm="%s", nonce="%s", uri="sip:pbx", response="%s", algorithm=%s, qop=auth, nc=%s, cnonce="cn"`,
		user, realm, c.Nonce, c.Response, alg, c.NC)
}

func TestRegisterAnswers(t *testing.T) {
	r, _, n := newTestRegistrar(passwordHook, nil)
	ok := goodAuth(n, "201", "pbx", "MD5", "pw", 1)
	cases := []struct {
		name   string
		raw    string
		auth   string
		status int
	}{
		{"no credentials: challenge", reg("Contact: <sip:201@127.0.0.1:5070>"), "", 401},
		{"good credentials", reg("Contact: <sip:201@127.0.0.1:5070>"), ok, 200},
		{"wrong secret", reg("Contact: <sip:201@127.0.0.1:5070>"), goodAuth(n, "201", "pbx", "MD5", "bad", 1), 403},
		{"SHA-256", reg("Contact: <sip:201@127.0.0.1:5070>"), goodAuth(n, "201", "pbx", "SHA-256", "pw", 1), 200},
		{"auth user is not the To user", reg("Contact: <sip:201@127.0.0.1:5070>"), goodAuth(n, "202", "pbx", "MD5", "pw", 1), 403},
		{"another realm: challenge for ours", reg("Contact: <sip:201@127.0.0.1:5070>"), goodAuth(n, "201", "elsewhere", "MD5", "pw", 1), 401},
		{"forged nonce", reg("Contact: <sip:201@127.0.0.1:5070>"), strings.Replace(ok, `nonce="`, `nonce="x`, 1), 401},
		{"unsupported algorithm", reg("Contact: <sip:201@127.0.0.1:5070>"), strings.Replace(ok, "algorithm=MD5", "algorithm=SHA-512", 1), 401},
		{"no qop", reg("Contact: <sip:201@127.0.0.1:5070>"), strings.Replace(strings.Replace(ok, ", qop=auth", "", 1), `, nc=00000001, cnonce="cn"`, "", 1), 401},
		{"malformed Authorization", reg("Contact: <sip:201@127.0.0.1:5070>"), `Digest username="201", realm="pbx`, 400},
		{"bad nc", reg("Contact: <sip:201@127.0.0.1:5070>"), strings.Replace(goodAuth(n, "201", "pbx", "MD5", "pw", 1), "nc=00000001", "nc=1", 1), 400},
		{"Basic credentials: challenge", reg("Contact: <sip:201@127.0.0.1:5070>"), "Basic MjAxOnB3", 401},
		{"expires below the minimum", reg("Contact: <sip:201@127.0.0.1:5070>;expires=5"), "", 423},
		{"non-numeric expires", reg("Contact: <sip:201@127.0.0.1:5070>;expires=soon"), "", 400},
		{"negative Expires header", reg("Contact: <sip:201@127.0.0.1:5070>\nExpires: -1"), "", 400},
		{"huge expires is clamped, not refused", reg("Contact: <sip:201@127.0.0.1:5070>;expires=99999999999999"), goodAuth(n, "201", "pbx", "MD5", "pw", 1), 200},
		{"* with Expires 30", reg("Contact: *\nExpires: 30"), "", 400},
		{"* without Expires", reg("Contact: *"), "", 400},
		{"* and another contact", reg("Contact: *\nContact: <sip:201@h>\nExpires: 0"), "", 400},
		{"a tel: contact", reg("Contact: <tel:+15551234567>"), "", 400},
		{"an oversized contact", reg("Contact: <sip:201@h;x=" + strings.Repeat("a", 600) + ">"), "", 400},
		// Attack: a Contact whose URI, written back between < and > in every answer,
		// would end the bracket and smuggle parameters into other answers' Contact lines.
		{"a contact URI with a quote", reg(`Contact: <sip:201@h;x="a>b">`), "", 400},
		{"To with an over-long user", strings.Replace(reg("Contact: <sip:201@h>"), "To: <sip:201@pbx>", "To: <sip:"+strings.Repeat("9", 70)+"@pbx>", 1), "", 400},
		{"To without a user", strings.Replace(reg("Contact: <sip:201@h>"), "To: <sip:201@pbx>", `To: <sip:pbx>`, 1), "", 400},
		{"CSeq method mismatch", strings.Replace(reg("Contact: <sip:201@h>"), "CSeq: 2 REGISTER", "CSeq: 2 INVITE", 1), "", 400},
	}
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			raw := strings.Replace(c.raw, "Call-ID: c1", "Call-ID: c1-"+strconv.Itoa(i), 1) // each a REGISTER of its own
			res := handle(t, r, msg(t, raw, c.auth), src)
			if res == nil || res.StatusCode != c.status {
				t.Fatalf("got %v, want %d", res, c.status)
			}
		})
	}
}

// A Require'd extension (none is supported: Path, GRUU, outbound…) fails the request with
// 420 and names the tags in Unsupported, before the hook or the store: a proxy that relies
// on Path must not believe it was applied (RFC 3261 §8.2.2.3, §10.3 step 2).
func TestRequireIsRefused(t *testing.T) {
	calls := 0
	hook := hookFunc(func(r authhook.Request) (authhook.Verdict, error) { calls++; return passwordHook(r) })
	r, store, n := newTestRegistrar(hook, nil)
	raw := reg("Contact: <sip:201@127.0.0.1:5070>\nRequire: path\nRequire: gruu,  outbound\nPath: <sip:edge.example;lr>")
	res := handle(t, r, msg(t, raw, goodAuth(n, "201", "pbx", "MD5", "pw", 1)), src)
	if res == nil || res.StatusCode != 420 {
		t.Fatalf("got %v, want 420", res)
	}
	if h := res.GetHeader("Unsupported"); h == nil || h.Value() != "path, gruu, outbound" {
		t.Fatalf("Unsupported: %v", h)
	}
	if calls != 0 {
		t.Fatalf("the hook was called %d times", calls)
	}
	if b, _ := store.Lookup(context.Background(), "201@pbx", t0); len(b) != 0 {
		t.Fatalf("stored %v", b)
	}
	// An OPTIONS that requires an extension fails the same way; an empty Require is none.
	opts := strings.Replace(strings.Replace(reg(""), "REGISTER sip:pbx", "OPTIONS sip:pbx", 1), "CSeq: 2 REGISTER", "CSeq: 2 OPTIONS", 1)
	if res := handle(t, r, msg(t, opts+"", ""), src); res == nil || res.StatusCode != 200 {
		t.Fatalf("OPTIONS: %v", res)
	}
	if res := handle(t, r, msg(t, strings.Replace(opts, "Call-ID:", "Require: 100rel\nCall-ID:", 1), ""), src); res == nil || res.StatusCode != 420 {
		t.Fatalf("OPTIONS with Require: %v", res)
	}
	// Many tags: the answer names the first 256 bytes of them.
	long := reg("Contact: <sip:201@h>\nRequire: " + strings.Repeat("x-some-extension, ", 100))
	res = handle(t, r, msg(t, long, ""), src)
	if h := res.GetHeader("Unsupported"); res.StatusCode != 420 || h == nil || len(h.Value()) > 256 || !strings.HasPrefix(h.Value(), "x-some-extension, x-some") {
		t.Fatalf("many tags: %v %v", res.StatusCode, h)
	}
}

// With Domains set, a REGISTER for another domain (in To or the Request-URI) gets 404 before
// the hook: one authenticated user cannot create bindings under any domain he likes (found
// in review: five domains, five AORs, kept for ever in the known list).
func TestOtherDomainsAreNotServed(t *testing.T) {
	calls := 0
	hook := hookFunc(func(r authhook.Request) (authhook.Verdict, error) { calls++; return passwordHook(r) })
	store := location.NewMemory()
	nonces := digest.NewNonces([]byte("unit-test-secret"), 5*time.Minute, func() time.Time { return t0 })
	r := New(Options{Store: store, Nonces: nonces, Hook: hook, Now: func() time.Time { return t0 },
		Config: Config{Realm: "pbx", Domains: []string{"pbx", "10.0.0.5"}}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ok := reg("Contact: <sip:201@127.0.0.1:5070>")
	for name, c := range map[string]struct {
		raw    string
		status int
	}{
		"another To domain":          {strings.Replace(ok, "To: <sip:201@pbx>", "To: <sip:201@evil.example>", 1), 404},
		"another Request-URI domain": {strings.Replace(ok, "REGISTER sip:pbx SIP/2.0", "REGISTER sip:evil.example SIP/2.0", 1), 404},
		"a served domain, any case":  {strings.Replace(ok, "To: <sip:201@pbx>", "To: <sip:201@PBX>", 1), 200},
		"a served address":           {strings.Replace(strings.Replace(ok, "To: <sip:201@pbx>", "To: <sip:201@10.0.0.5>", 1), "REGISTER sip:pbx SIP/2.0", "REGISTER sip:10.0.0.5:5060 SIP/2.0", 1), 200},
	} {
		t.Run(name, func(t *testing.T) {
			before := calls
			aor := "201@" + strings.ToLower(strings.SplitN(strings.SplitN(c.raw, "To: <sip:201@", 2)[1], ">", 2)[0])
			res := handle(t, r, msg(t, c.raw, authFor(nonces, aor, "201", "pbx", "MD5", "pw", 1)), src)
			if res == nil || res.StatusCode != c.status {
				t.Fatalf("got %v, want %d", res, c.status)
			}
			if c.status == 404 {
				if calls != before {
					t.Fatal("the hook was asked")
				}
				known, _ := store.Known(context.Background())
				for aor := range known {
					if strings.Contains(aor, "evil") {
						t.Fatalf("stored %v", known)
					}
				}
			}
		})
	}
}

func TestReplayNeverReachesTheHook(t *testing.T) {
	calls := 0
	hook := hookFunc(func(r authhook.Request) (authhook.Verdict, error) { calls++; return passwordHook(r) })
	r, store, n := newTestRegistrar(hook, nil)
	auth := goodAuth(n, "201", "pbx", "MD5", "pw", 1)
	if res := handle(t, r, msg(t, reg("Contact: <sip:201@127.0.0.1:5070>"), auth), src); res.StatusCode != 200 {
		t.Fatalf("first: %d", res.StatusCode)
	}
	res := handle(t, r, msg(t, reg("Contact: <sip:201@203.0.113.66:5060>"), auth), src)
	if res.StatusCode != 401 || calls != 1 {
		t.Fatalf("replay: %d after %d hook calls", res.StatusCode, calls)
	}
	bs, _ := store.Lookup(context.Background(), "201@pbx", t0)
	if len(bs) != 1 || strings.Contains(bs[0].Contact, "203.0.113.66") {
		t.Fatalf("replay changed the bindings: %v", bs)
	}
}

// forgetful is a store shared with another sidecar that took a count: Replayed cannot
// tell, so only the store's write refuses the count.
type forgetful struct{ location.Store }

func (forgetful) Replayed(location.Count) bool { return false }

func TestReplayThisSidecarCannotTellIsRefusedByTheStore(t *testing.T) {
	calls := 0
	hook := hookFunc(func(r authhook.Request) (authhook.Verdict, error) { calls++; return passwordHook(r) })
	store := forgetful{location.NewMemory()}
	nonces := digest.NewNonces([]byte("unit-test-secret"), 5*time.Minute, func() time.Time { return t0 })
	r := New(Options{Store: store, Nonces: nonces, Hook: hook,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return t0 }})
	auth := goodAuth(nonces, "201", "pbx", "MD5", "pw", 1)
	if res := handle(t, r, msg(t, reg("Contact: <sip:201@127.0.0.1:5070>"), auth), src); res.StatusCode != 200 {
		t.Fatalf("first: %d", res.StatusCode)
	}
	res := handle(t, r, msg(t, reg("Contact: <sip:201@203.0.113.66:5060>"), auth), src)
	if res.StatusCode != 401 || res.GetHeader("WWW-Authenticate") == nil {
		t.Fatalf("replay: %v, want a fresh challenge", res)
	}
	if calls != 2 {
		t.Fatalf("%d hook calls: the replay should have reached the hook here", calls)
	}
	bs, _ := store.Lookup(context.Background(), "201@pbx", t0)
	if len(bs) != 1 || strings.Contains(bs[0].Contact, "203.0.113.66") {
		t.Fatalf("replay changed the bindings: %v", bs)
	}
}

// A nonce belongs to the AOR it was made for: the same user's nonce of another AOR (another
// domain under one realm) is refused before the hook, so a count taken on one AOR can never
// be replayed on another.
func TestNonceOfAnotherAORIsRefused(t *testing.T) {
	calls := 0
	hook := hookFunc(func(r authhook.Request) (authhook.Verdict, error) { calls++; return passwordHook(r) })
	r, store, n := newTestRegistrar(hook, nil)
	for _, scope := range []string{"201@other", "202@pbx", ""} {
		res := handle(t, r, msg(t, reg("Contact: <sip:201@203.0.113.66:5060>"), authFor(n, scope, "201", "pbx", "MD5", "pw", 1)), src)
		ch := res.GetHeader("WWW-Authenticate")
		if res.StatusCode != 401 || ch == nil || strings.Contains(ch.Value(), "stale") {
			t.Fatalf("nonce of %q: %v, want a fresh challenge without stale", scope, res)
		}
	}
	if bs, _ := store.Lookup(context.Background(), "201@pbx", t0); calls != 0 || len(bs) != 0 {
		t.Fatalf("%d hook calls, bindings %v", calls, bs)
	}
	// The challenge's own nonce is 201@pbx's.
	res := handle(t, r, msg(t, reg("Contact: <sip:201@h>"), ""), src)
	nonce := res.GetHeader("WWW-Authenticate").Value()
	nonce = nonce[strings.Index(nonce, `nonce="`)+7:]
	nonce = nonce[:strings.IndexByte(nonce, '"')]
	if _, err := n.Inspect(nonce, "201@pbx"); err != nil {
		t.Fatalf("the challenge's nonce is not 201@pbx's: %v", err)
	}
}

// staleWindow is a store whose AOR has taken counts of newer nonces (Redis's window).
type staleWindow struct{ location.Store }

func (staleWindow) UpdateCounted(context.Context, string, time.Time, location.Count, func([]location.Binding) ([]location.Binding, error)) ([]location.Binding, error) {
	return nil, location.ErrStaleNonce
}

// A count the store no longer tells new from replayed gets a fresh nonce with stale=true:
// the phone retries at once, and its address is not counted as failing.
func TestStaleCountIsAFreshNonceNotAFailure(t *testing.T) {
	nonces := digest.NewNonces([]byte("unit-test-secret"), 5*time.Minute, func() time.Time { return t0 })
	bans := &failureBans{Bans: location.NewMemoryBans(func() time.Time { return t0 })}
	r := New(Options{Store: staleWindow{location.NewMemory()}, Nonces: nonces, Hook: passwordHook, Guard: &Guard{Bans: bans},
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return t0 }})
	res := handle(t, r, msg(t, reg("Contact: <sip:201@h>"), goodAuth(nonces, "201", "pbx", "MD5", "pw", 1)), src)
	if ch := res.GetHeader("WWW-Authenticate"); res.StatusCode != 401 || ch == nil || !strings.Contains(ch.Value(), "stale=true") {
		t.Fatalf("stale count: %v", res)
	}
	if n := bans.fails.Load(); n != 0 {
		t.Fatalf("%d failures counted for a stale count", n)
	}
}

func TestStaleNonce(t *testing.T) {
	r, _, _ := newTestRegistrar(passwordHook, nil)
	old := digest.NewNonces([]byte("unit-test-secret"), 5*time.Minute, func() time.Time { return t0.Add(-time.Hour) })
	res := handle(t, r, msg(t, reg("Contact: <sip:201@h>"), goodAuth(old, "201", "pbx", "MD5", "pw", 1)), src)
	if res.StatusCode != 401 || !strings.Contains(res.GetHeader("WWW-Authenticate").Value(), "stale=true") {
		t.Fatalf("stale: %v", res)
	}
}

func TestGuard(t *testing.T) {
	t.Run("scanners are dropped silently", func(t *testing.T) {
		r, _, _ := newTestRegistrar(passwordHook, &Guard{})
		for _, ua := range []string{"friendly-scanner", "sipvicious 0.3", "SIPCLI/v1.8"} {
			if res := handle(t, r, msg(t, reg("Contact: <sip:201@h>\nUser-Agent: "+ua), ""), src); res != nil {
				t.Errorf("%s answered %d", ua, res.StatusCode)
			}
		}
	})
	t.Run("a flood from one address is cut, another address goes on", func(t *testing.T) {
		r, _, _ := newTestRegistrar(passwordHook, &Guard{Rate: 1, Burst: 5})
		answered := 0
		for range 50 {
			if handle(t, r, msg(t, reg("Contact: <sip:201@h>"), ""), src) != nil {
				answered++
			}
		}
		if answered != 5 {
			t.Fatalf("answered %d of 50 at burst 5", answered)
		}
		other := Source{IP: "127.0.0.2", Port: 5070, Transport: "tcp"}
		if handle(t, r, msg(t, reg("Contact: <sip:201@h>"), ""), other) == nil {
			t.Fatal("an honest second address was cut off too")
		}
	})
	// Attack: UDP source addresses can be forged, and each new one used to cost a bucket
	// kept for a minute: a flood of forged sources grew memory without bound.
	t.Run("forged source addresses cannot grow the guard without bound", func(t *testing.T) {
		g := &Guard{Rate: 10, Burst: 20, MaxSources: 100} // a bucket refills in 2 s
		g.init()
		if !g.take("10.0.0.1", t0) {
			t.Fatal("a phone was refused")
		}
		admitted := 0
		for i := range 1000 {
			if g.take(fmt.Sprintf("198.51.%d.%d", i/256, i%256), t0) {
				admitted++
			}
			g.remember(fmt.Sprintf("198.51.%d.%d", i/256, i%256), false, t0.Add(time.Second))
		}
		if len(g.buckets) > 100 || len(g.bans) > 100 || admitted != 99 {
			t.Fatalf("%d buckets, %d remembered answers, %d of 1000 new sources admitted; want at most 100, 100, and 99", len(g.buckets), len(g.bans), admitted)
		}
		if !g.take("10.0.0.1", t0.Add(time.Millisecond)) {
			t.Fatal("a known phone was refused during the flood")
		}
		if g.take("10.0.0.2", t0.Add(time.Second)) {
			t.Fatal("a new source was admitted before any bucket had refilled")
		}
		// Two seconds on, the flood's buckets are full again: swept, and a new phone gets in.
		if !g.take("10.0.0.2", t0.Add(2*time.Second)) {
			t.Fatal("a new phone was refused after the flood's buckets refilled")
		}
		if len(g.buckets) != 2 {
			t.Fatalf("%d buckets after the sweep, want the two phones'", len(g.buckets))
		}
	})
	t.Run("repeated auth failures ban the address", func(t *testing.T) {
		calls := 0
		hook := hookFunc(func(r authhook.Request) (authhook.Verdict, error) { calls++; return passwordHook(r) })
		r, _, n := newTestRegistrar(hook, &Guard{MaxFailures: 3, Rate: 1000, Burst: 1000})
		for i := range 3 {
			res := handle(t, r, msg(t, reg("Contact: <sip:201@h>"), goodAuth(n, "201", "pbx", "MD5", "guess", 1)), src)
			if res == nil || res.StatusCode != 403 {
				t.Fatalf("guess %d: %v", i, res)
			}
		}
		// Banned: even the right password gets no answer, and the hook is not called.
		if res := handle(t, r, msg(t, reg("Contact: <sip:201@h>"), goodAuth(n, "201", "pbx", "MD5", "pw", 1)), src); res != nil {
			t.Fatalf("banned source answered %d", res.StatusCode)
		}
		if calls != 3 {
			t.Fatalf("hook called %d times", calls)
		}
	})
}

func TestHookUnavailableStoresNothing(t *testing.T) {
	r, store, n := newTestRegistrar(hookFunc(func(authhook.Request) (authhook.Verdict, error) {
		return authhook.Verdict{}, authhook.ErrUnavailable
	}), nil)
	res := handle(t, r, msg(t, reg("Contact: <sip:201@h>"), goodAuth(n, "201", "pbx", "MD5", "pw", 1)), src)
	if res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("%v", res)
	}
	if bs, _ := store.Lookup(context.Background(), "201@pbx", t0); len(bs) != 0 {
		t.Fatal("stored without a verdict")
	}
}

// FuzzRegister feeds whole SIP messages to the REGISTER path with a hook that accepts
// everything: nothing may panic, and whatever is stored must be a well-formed binding.
func FuzzRegister(f *testing.F) {
	seeds := []string{
		reg("Contact: <sip:201@127.0.0.1:5070>"),
		reg("Contact: *\nExpires: 0"),
		reg("Contact: <sip:201@h>;expires=0, <sip:201@i>;expires=3600;+sip.instance=\"<urn:uuid:1>\""),
		reg("Contact: \"A\" <sip:201@[::1]:5070;transport=ws>;q=0.5\nExpires: 99999999999"),
		"OPTIONS sip:pbx SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK-2\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>\nCall-ID: x\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
	}
	for _, s := range seeds {
		f.Add(strings.ReplaceAll(strings.ReplaceAll(strings.TrimLeft(s, "\n"), "{AUTH}\n", ""), "\n", "\r\n"))
	}
	accept := hookFunc(func(authhook.Request) (authhook.Verdict, error) { return authhook.Verdict{OK: true}, nil })
	f.Fuzz(func(t *testing.T, raw string) {
		m, err := sip.NewParser().ParseSIP([]byte(raw))
		if err != nil {
			return
		}
		req, ok := m.(*sip.Request)
		if !ok {
			return
		}
		r, store, n := newTestRegistrar(accept, nil)
		// Add valid credentials for the To user, so the fuzzer reaches the binding code.
		if to := req.To(); to != nil && to.Address.User != "" && to.Address.Host != "" {
			req.AppendHeader(sip.NewHeader("Authorization", goodAuth(n, to.Address.User, strings.ToLower(to.Address.Host), "MD5", "pw", 1)))
		}
		var w bytes.Buffer
		code := r.Handle(context.Background(), req, src, &w)
		_, reparse := sip.NewParser().ParseSIP([]byte(req.String()))
		if code != 0 && reparse == nil {
			// The answer copies headers as sipgo prints them, which it does not always
			// read back (From: <sip:0:>); when it reads back the request, it reads back
			// the answer whole.
			res := parseAnswer(t, w.Bytes())
			if res.StatusCode != code {
				t.Fatalf("wrote %d, returned %d", res.StatusCode, code)
			}
		} else if code == 0 && w.Len() != 0 {
			t.Fatalf("returned 0 but wrote %q", w.String())
		}
		aors, _ := store.AORs(context.Background(), t0)
		for _, aor := range aors {
			bs, _ := store.Lookup(context.Background(), aor, t0)
			for _, b := range bs {
				var u sip.Uri
				if err := sip.ParseUri(b.Contact, &u); err != nil || b.Contact == "" {
					t.Fatalf("stored an unparsable contact %q", b.Contact)
				}
				if d := b.ExpiresAt.Sub(t0); d <= 0 || d > 7200*time.Second {
					t.Fatalf("stored expiry %s outside (0, max]", d)
				}
				if len(bs) > 10 {
					t.Fatalf("stored %d bindings, cap 10", len(bs))
				}
			}
		}
	})
}

func TestHeaderLookupIgnoresCase(t *testing.T) {
	raw := "REGISTER sip:pbx SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5070;branch=z9hG4bK1\r\n" +
		"From: <sip:201@pbx>;tag=1\r\nTo: <sip:201@pbx>\r\nCall-ID: c1\r\nCSeq: 1 REGISTER\r\n" +
		"EXPIRES: 120\r\nuser-agent: phone\r\nAuthorization: Digest a\r\nAUTHORIZATION: Digest b\r\nContent-Length: 0\r\n\r\n"
	msg, err := sip.NewParser().ParseSIP([]byte(raw))
	if err != nil {
		t.Fatal(err)
	}
	req := msg.(*sip.Request)
	if h := header(req, "expires"); h == nil || h.Value() != "120" {
		t.Fatalf("expires: %v", h)
	}
	if h := header(req, "User-Agent"); h == nil || h.Value() != "phone" {
		t.Fatalf("user-agent: %v", h)
	}
	if hs := headers(req, "authorization", nil); len(hs) != 2 || hs[0].Value() != "Digest a" || hs[1].Value() != "Digest b" {
		t.Fatalf("authorization: %v", hs)
	}
	if header(req, "retry-after") != nil || headers(req, "retry-after", nil) != nil {
		t.Fatal("found a header that is not there")
	}
}

// countingBans is a Bans whose answers the test sets, counting the questions.
type countingBans struct {
	location.Bans
	asked  atomic.Int32
	banned atomic.Bool
}

func (b *countingBans) Banned(context.Context, string) (bool, error) {
	b.asked.Add(1)
	return b.banned.Load(), nil
}

func TestGuardRemembersBanAnswersBriefly(t *testing.T) {
	bans := &countingBans{Bans: location.NewMemoryBans(nil)}
	g := &Guard{Rate: 1000, Burst: 1000, Bans: bans}
	req := msg(t, reg("Contact: <sip:201@127.0.0.1:5070>"), "")
	src := Source{IP: "192.0.2.9", Port: 5060, Transport: "udp"}
	t0 := time.Unix(1_700_000_000, 0)
	for i := range 5 {
		if why := g.admit(context.Background(), req, src, t0.Add(time.Duration(i)*100*time.Millisecond)); why != "" {
			t.Fatalf("request %d dropped: %s", i, why)
		}
	}
	if n := bans.asked.Load(); n != 1 {
		t.Fatalf("Bans asked %d times within a second, want 1", n)
	}
	// A ban made elsewhere shows once the remembered answer is older than banRecheck.
	bans.banned.Store(true)
	if why := g.admit(context.Background(), req, src, t0.Add(banRecheck+time.Millisecond)); why != "banned" {
		t.Fatalf("after banRecheck: %q, want banned", why)
	}
	// This guard's own ban holds at once, without waiting for a recheck.
	other := Source{IP: "192.0.2.10", Port: 5060, Transport: "udp"}
	g.admit(context.Background(), req, other, t0) // remembered as not banned
	g.MaxFailures = 1
	g.failed(context.Background(), other, t0)
	bans.banned.Store(false) // the store says nothing new: the guard's own ban must still hold
	if why := g.admit(context.Background(), req, other, t0.Add(time.Millisecond)); why != "banned" {
		t.Fatalf("own ban: %q, want banned", why)
	}
}

// laterHook keeps CheckLater's callbacks for the test to answer.
type laterHook struct {
	hookFunc
	kept []func()
}

func (h *laterHook) CheckLater(r authhook.Request, then func(authhook.Verdict, error)) {
	h.kept = append(h.kept, func() { then(h.hookFunc(r)) })
}

func TestHandleLater(t *testing.T) {
	ctx := context.Background()
	contact := "Contact: <sip:201@127.0.0.1:5070>;expires=600"
	// done records its calls; the answer is read from w once it has come.
	type result struct {
		code  int
		calls atomic.Int32
	}
	later := func(r *Registrar, req *sip.Request, w *bytes.Buffer) (int, *result) {
		res := &result{}
		code := r.HandleLater(ctx, req, src, w, func(code int) { res.code = code; res.calls.Add(1) })
		return code, res
	}

	t.Run("a REGISTER for the hook waits, and its verdict brings the answer once", func(t *testing.T) {
		h := &laterHook{hookFunc: passwordHook}
		r, store, nonces := newTestRegistrar(h, nil)
		var w bytes.Buffer
		code, res := later(r, msg(t, reg(contact), goodAuth(nonces, "201", "pbx", "MD5", "pw", 1)), &w)
		if code != Waiting || w.Len() != 0 || len(h.kept) != 1 {
			t.Fatalf("HandleLater returned %d, wrote %q, %d callbacks: want Waiting and nothing yet", code, w.String(), len(h.kept))
		}
		if bs, _ := store.Lookup(ctx, "201@pbx", t0); len(bs) != 0 {
			t.Fatalf("stored before the verdict: %+v", bs)
		}
		done := make(chan struct{})
		go func() { h.kept[0](); close(done) }() // the verdict arrives on another goroutine
		<-done
		if res.calls.Load() != 1 || res.code != 200 {
			t.Fatalf("done called %d times with %d, want once with 200", res.calls.Load(), res.code)
		}
		ans := parseAnswer(t, w.Bytes())
		if ans.StatusCode != 200 || ans.Contact() == nil || !strings.Contains(ans.Contact().Value(), "sip:201@127.0.0.1:5070") {
			t.Fatalf("answer:\n%s", w.String())
		}
		if bs, _ := store.Lookup(ctx, "201@pbx", t0); len(bs) != 1 {
			t.Fatalf("stored after the verdict: %+v", bs)
		}
	})

	t.Run("a fail verdict and a missing verdict are answered later too, storing nothing", func(t *testing.T) {
		for name, c := range map[string]struct {
			hook hookFunc
			want int
		}{
			"rejected":    {hookFunc(func(authhook.Request) (authhook.Verdict, error) { return authhook.Verdict{Msg: "no"}, nil }), 403},
			"unavailable": {hookFunc(func(authhook.Request) (authhook.Verdict, error) { return authhook.Verdict{}, authhook.ErrUnavailable }), 503},
		} {
			h := &laterHook{hookFunc: c.hook}
			r, store, nonces := newTestRegistrar(h, nil)
			var w bytes.Buffer
			code, res := later(r, msg(t, reg(contact), goodAuth(nonces, "201", "pbx", "MD5", "pw", 1)), &w)
			if code != Waiting || len(h.kept) != 1 {
				t.Fatalf("%s: HandleLater returned %d with %d callbacks", name, code, len(h.kept))
			}
			h.kept[0]()
			if res.calls.Load() != 1 || res.code != c.want || parseAnswer(t, w.Bytes()).StatusCode != c.want {
				t.Fatalf("%s: done %d times with %d, answer %q; want %d", name, res.calls.Load(), res.code, w.String(), c.want)
			}
			if bs, _ := store.Lookup(ctx, "201@pbx", t0); len(bs) != 0 {
				t.Fatalf("%s: stored %+v", name, bs)
			}
		}
	})

	t.Run("everything else is answered at once, without done", func(t *testing.T) {
		h := &laterHook{hookFunc: passwordHook}
		r, _, nonces := newTestRegistrar(h, nil)
		var w bytes.Buffer
		code, res := later(r, msg(t, reg(contact), ""), &w)
		if code != 401 || parseAnswer(t, w.Bytes()).StatusCode != 401 || res.calls.Load() != 0 || len(h.kept) != 0 {
			t.Fatalf("challenge: %d, done %d times, %d callbacks", code, res.calls.Load(), len(h.kept))
		}
		// Credentials that never reach the hook: another user's.
		w.Reset()
		code, res = later(r, msg(t, reg(contact), goodAuth(nonces, "202", "pbx", "MD5", "pw", 1)), &w)
		if code != 403 || res.calls.Load() != 0 || len(h.kept) != 0 {
			t.Fatalf("someone else's AOR: %d, done %d times, %d callbacks", code, res.calls.Load(), len(h.kept))
		}
	})

	t.Run("with a Deferred store the store's answer finishes the REGISTER, and failures reach the guard apart", func(t *testing.T) {
		h := &laterHook{hookFunc: passwordHook}
		store := &heldStore{Memory: location.NewMemory()}
		nonces := digest.NewNonces([]byte("unit-test-secret"), 5*time.Minute, func() time.Time { return t0 })
		bans := &failureBans{Bans: location.NewMemoryBans(func() time.Time { return t0 })}
		r := New(Options{Store: store, Nonces: nonces, Hook: h, Guard: &Guard{Bans: bans},
			Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return t0 }})
		var w bytes.Buffer
		code, res := later(r, msg(t, reg(contact), goodAuth(nonces, "201", "pbx", "MD5", "pw", 1)), &w)
		if code != Waiting || len(h.kept) != 1 {
			t.Fatalf("HandleLater returned %d with %d callbacks", code, len(h.kept))
		}
		h.kept[0]() // the verdict starts the update, and returns without waiting for it
		if res.calls.Load() != 0 || len(store.held) != 1 {
			t.Fatalf("after the verdict: done %d times, %d updates held; want none and one", res.calls.Load(), len(store.held))
		}
		store.held[0]() // the store's answer
		if res.calls.Load() != 1 || res.code != 200 || parseAnswer(t, w.Bytes()).StatusCode != 200 {
			t.Fatalf("after the store's answer: done %d times with %d", res.calls.Load(), res.code)
		}
		if bs, _ := store.Lookup(ctx, "201@pbx", t0); len(bs) != 1 {
			t.Fatalf("stored %+v", bs)
		}
		// A rejected verdict is answered by the verdict's goroutine; the failure reaches the
		// guard's Bans on a goroutine of its own.
		h.hookFunc = func(authhook.Request) (authhook.Verdict, error) { return authhook.Verdict{Msg: "no"}, nil }
		w.Reset()
		code, res = later(r, msg(t, reg(contact), goodAuth(nonces, "201", "pbx", "MD5", "pw", 1)), &w)
		h.kept[1]()
		if code != Waiting || res.calls.Load() != 1 || res.code != 403 || len(store.held) != 1 {
			t.Fatalf("rejected: %d, done %d times with %d, %d updates", code, res.calls.Load(), res.code, len(store.held))
		}
		deadline := time.Now().Add(2 * time.Second)
		for bans.fails.Load() != 1 && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		if bans.fails.Load() != 1 {
			t.Fatalf("%d failures reached the Bans, want 1", bans.fails.Load())
		}
	})

	t.Run("a hook that cannot answer later is waited for", func(t *testing.T) {
		r, _, nonces := newTestRegistrar(passwordHook, nil)
		var w bytes.Buffer
		code, res := later(r, msg(t, reg(contact), goodAuth(nonces, "201", "pbx", "MD5", "pw", 1)), &w)
		if code != 200 || parseAnswer(t, w.Bytes()).StatusCode != 200 || res.calls.Load() != 0 {
			t.Fatalf("HandleLater with a plain Hook: %d, done %d times", code, res.calls.Load())
		}
	})
}

// recalling is a store shared with other sidecars (Redis): Recall knows only the AORs
// marked known.
type recalling struct {
	location.Store
	known map[string]bool
}

func (s recalling) Recall(aor string, now time.Time) ([]location.Binding, bool) {
	if !s.known[aor] {
		return nil, false
	}
	return s.Store.Recall(aor, now)
}

// sharedBans is a ban list another process keeps: asking it is a round trip.
type sharedBans struct{ location.Bans }

func TestImmediateForecastsWhatNeedsNoRoundTrip(t *testing.T) {
	store := recalling{location.NewMemory(), map[string]bool{}}
	nonces := digest.NewNonces([]byte("unit-test-secret"), 5*time.Minute, func() time.Time { return t0 })
	guard := &Guard{Bans: sharedBans{location.NewMemoryBans(func() time.Time { return t0 })}}
	r := New(Options{Store: store, Nonces: nonces, Hook: passwordHook, Guard: guard,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Now: func() time.Time { return t0 }})
	udp := Source{IP: "127.0.0.1", Port: 5070, Transport: "udp"}
	register := func(callID string, cseq int, auth string) *sip.Request {
		raw := strings.NewReplacer("Call-ID: c1", "Call-ID: "+callID, "CSeq: 2", fmt.Sprintf("CSeq: %d", cseq)).
			Replace(reg("Contact: <sip:201@127.0.0.1:5070>"))
		return msg(t, raw, auth)
	}
	options := msg(t, strings.NewReplacer("REGISTER sip:pbx", "OPTIONS sip:pbx", "2 REGISTER", "2 OPTIONS", "{CONTACT}\n", "").Replace(base), "")

	// The ban list has not been asked about this source yet.
	if r.Immediate(options, udp) {
		t.Fatal("a source whose ban state is not remembered is immediate")
	}
	if res := handle(t, r, options, udp); res.StatusCode != 200 {
		t.Fatalf("OPTIONS: %d", res.StatusCode)
	}
	if !r.Immediate(options, udp) {
		t.Fatal("OPTIONS from a remembered source is not immediate")
	}
	if r.Immediate(register("c9", 1, ""), udp) {
		t.Fatal("a challenge for an AOR this sidecar knows nothing of is immediate (its NAT refresh check asks the store)")
	}
	if r.Immediate(register("c1", 2, goodAuth(nonces, "201", "pbx", "MD5", "pw", 1)), udp) {
		t.Fatal("a REGISTER with credentials is immediate")
	}
	if res := handle(t, r, register("c1", 2, goodAuth(nonces, "201", "pbx", "MD5", "pw", 1)), udp); res.StatusCode != 200 {
		t.Fatalf("register: %d", res.StatusCode)
	}
	store.known["201@pbx"] = true
	// Another Call-ID: no NAT refresh, a challenge decided here.
	if !r.Immediate(register("c2", 1, ""), udp) {
		t.Fatal("a challenge for a known AOR is not immediate")
	}
	if res := handle(t, r, register("c2", 1, ""), udp); res.StatusCode != 401 {
		t.Fatalf("challenge: %d", res.StatusCode)
	}
	// The same Call-ID with a higher CSeq from the same source: a NAT refresh, which writes.
	refresh := register("c1", 3, "")
	if r.Immediate(refresh, udp) {
		t.Fatal("a NAT refresh is immediate")
	}
	if res := handle(t, r, refresh, udp); res.StatusCode != 200 {
		t.Fatalf("NAT refresh: %d", res.StatusCode)
	}
	// A REGISTER the registrar refuses outright needs nothing either.
	if !r.Immediate(msg(t, strings.Replace(reg("Contact: <sip:201@h>"), "To: <sip:201@pbx>", "To: <tel:201>", 1), ""), udp) {
		t.Fatal("a bad REGISTER is not immediate")
	}
}

// heldStore is a Deferred store whose updates wait for the test to answer them, as the
// Redis store's wait for Redis.
type heldStore struct {
	*location.Memory
	held []func()
}

func (s *heldStore) UpdateCountedThen(ctx context.Context, aor string, now time.Time, c location.Count, fn func([]location.Binding) ([]location.Binding, error), then func([]location.Binding, error)) {
	s.held = append(s.held, func() { then(s.UpdateCounted(ctx, aor, now, c, fn)) })
}

// failureBans is a shared ban list that counts the failures it hears of.
type failureBans struct {
	location.Bans
	fails atomic.Int32
}

func (b *failureBans) Fail(ctx context.Context, ip string, window time.Duration) (int, error) {
	b.fails.Add(1)
	return b.Bans.Fail(ctx, ip, window)
}

// A binding outlives its REGISTER: its strings must not point into the request's, which
// sipserver's parser cuts from one copy of the whole datagram (credentials included).
func TestBindingsOwnTheirStrings(t *testing.T) {
	r, store, n := newTestRegistrar(hookFunc(func(authhook.Request) (authhook.Verdict, error) {
		return authhook.Verdict{OK: true}, nil
	}), nil)
	raw := strings.Replace(reg(`Contact: <sip:201@127.0.0.1:5070>;q=0.5;+sip.instance="<urn:uuid:1>"`+"\nUser-Agent: phone/1"), "From: <sip:201@pbx>", `From: "Two Oh One" <sip:201@pbx>`, 1)
	req := msg(t, raw, goodAuth(n, "201", "pbx", "MD5", "pw", 1))
	if res := handle(t, r, req, src); res == nil || res.StatusCode != 200 {
		t.Fatalf("REGISTER: %v", res)
	}
	bs, err := store.Lookup(context.Background(), "201@pbx", t0)
	if err != nil || len(bs) != 1 {
		t.Fatalf("bindings %v, %v", bs, err)
	}
	b := bs[0]
	ua, _ := header(req, "user-agent").(interface{ Value() string })
	instance, _ := req.Contact().Params.Get("+sip.instance")
	q, _ := req.Contact().Params.Get("q")
	for _, c := range []struct{ name, stored, sent string }{
		{"Call-ID", b.CallID, req.CallID().Value()},
		{"User-Agent", b.UserAgent, ua.Value()},
		{"instance", "\"" + b.InstanceID + "\"", instance},
		{"q", b.Q, q},
		{"display name", b.DisplayName, req.From().DisplayName},
	} {
		if c.stored == "" || !strings.Contains(c.sent, c.stored) {
			t.Fatalf("%s: stored %q, sent %q", c.name, c.stored, c.sent)
		}
		start, end := uintptr(unsafe.Pointer(unsafe.StringData(c.sent))), uintptr(unsafe.Pointer(unsafe.StringData(c.sent)))+uintptr(len(c.sent))
		if p := uintptr(unsafe.Pointer(unsafe.StringData(c.stored))); p >= start && p < end {
			t.Fatalf("%s: the binding's string points into the request's", c.name)
		}
	}
}
