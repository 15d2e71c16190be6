package main

import (
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/config"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/digest"
)

func contactOf(res *sip.Response) []string {
	var out []string
	for _, h := range res.GetHeaders("Contact") {
		out = append(out, h.Value())
	}
	return out
}

func TestRegisterOverEveryTransport(t *testing.T) {
	hook := newTestHook(t)
	s := startSidecar(t, hook, nil)
	users := map[string]string{"UDP": "201", "TCP": "202", "WS": "203"}
	for _, tr := range []string{"UDP", "TCP", "WS"} {
		t.Run(tr, func(t *testing.T) {
			user := users[tr]
			for _, alg := range []string{"MD5", "SHA-256"} {
				p := newPhone(t, s, tr, user) // a new Call-ID: no pinhole refresh shortcut
				first := p.send(p.request([]string{"<" + p.contact + ">"}))
				if first.StatusCode != 401 {
					t.Fatalf("first REGISTER: %d, want 401", first.StatusCode)
				}
				chs := first.GetHeaders("WWW-Authenticate")
				if len(chs) != 2 || !strings.Contains(chs[0].Value(), "algorithm=SHA-256") || !strings.Contains(chs[1].Value(), "algorithm=MD5") ||
					!strings.Contains(chs[0].Value(), `qop="auth"`) || !strings.Contains(chs[0].Value(), `realm="pbx.test"`) {
					t.Fatalf("challenge headers %v", chs)
				}
				auth := authorize(t, first, user, "pw-"+user, alg, 1)
				res := p.send(p.request([]string{"<" + p.contact + ">"}, "Authorization: "+auth))
				if res.StatusCode != 200 {
					t.Fatalf("%s: %d %s", alg, res.StatusCode, res.Reason)
				}
				cs := contactOf(res)
				if len(cs) != 1 || !strings.Contains(cs[0], p.contact) || !strings.Contains(cs[0], "expires=") {
					t.Fatalf("%s: 200 contacts %v", alg, cs)
				}
				if res.GetHeader("Date") == nil {
					t.Fatalf("200 without Date")
				}
			}
			locs := s.locations(t, user+"@pbx.test")
			if len(locs) != 1 {
				t.Fatalf("want one binding, got %v", locs)
			}
			l := locs[0]
			if l["transport"] != strings.ToLower(tr) || !strings.HasPrefix(l["source"].(string), "127.0.0.1:") ||
				l["call_hook"] != "http://127.0.0.1/call" || l["display_name"] != "User "+user || l["granted"] != 3600.0 {
				t.Fatalf("binding not stored as expected: %v", l)
			}
		})
	}
}

// sipgo's own digest client (a digest implementation not written here) registers.
func TestIndependentDigestClient(t *testing.T) {
	s := startSidecar(t, newTestHook(t), nil)
	p := newPhone(t, s, "UDP", "202")
	req := reparse(t, p.request([]string{"<sip:202@127.0.0.1:5998>"}))
	ctx := t.Context()
	res, err := p.client.Do(ctx, req)
	if err != nil || res.StatusCode != 401 {
		t.Fatalf("first: %v %v", res, err)
	}
	res, err = p.client.DoDigestAuth(ctx, req, res, sipgo.DigestAuth{Username: "202", Password: "pw-202"})
	if err != nil || res.StatusCode != 200 {
		t.Fatalf("digest: %v %v", res, err)
	}
}

func TestWrongPasswordAndUnknownUserLookAlike(t *testing.T) {
	s := startSidecar(t, newTestHook(t), nil)
	wrong := newPhone(t, s, "TCP", "201").register("not-it", "MD5", []string{"<sip:201@127.0.0.1:5999>"})
	unknown := newPhone(t, s, "TCP", "999").register("whatever", "MD5", []string{"<sip:999@127.0.0.1:5999>"})
	if wrong.StatusCode != 403 || unknown.StatusCode != 403 || wrong.Reason != unknown.Reason {
		t.Fatalf("wrong password %d %q, unknown user %d %q", wrong.StatusCode, wrong.Reason, unknown.StatusCode, unknown.Reason)
	}
	names := func(r *sip.Response) string {
		var n []string
		for _, h := range r.Headers() {
			n = append(n, h.Name()+"="+map[bool]string{true: h.Value(), false: "*"}[h.Name() == "X-Reason"])
		}
		return strings.Join(n, ",")
	}
	if names(wrong) != names(unknown) {
		t.Fatalf("answers differ:\n%s\n%s", names(wrong), names(unknown))
	}
	if len(s.locations(t, "201@pbx.test")) != 0 {
		t.Fatal("a wrong password stored a binding")
	}
}

func TestReplayAndStaleNonce(t *testing.T) {
	s := startSidecar(t, newTestHook(t), nil)
	p := newPhone(t, s, "UDP", "201")
	first := p.send(p.request([]string{"<sip:201@127.0.0.1:5999>"}))
	auth := authorize(t, first, "201", "pw-201", "MD5", 1)
	if res := p.send(p.request([]string{"<sip:201@127.0.0.1:5999>"}, "Authorization: "+auth)); res.StatusCode != 200 {
		t.Fatalf("first use: %d", res.StatusCode)
	}
	calls := s.hook.calls.Load()
	// The same Authorization again, now trying to bind another contact: refused before the hook.
	res := p.send(p.request([]string{"<sip:201@198.51.100.9:5060>"}, "Authorization: "+auth))
	if res.StatusCode != 401 {
		t.Fatalf("replay: %d, want a fresh challenge", res.StatusCode)
	}
	if s.hook.calls.Load() != calls {
		t.Fatal("a replay reached the hook")
	}
	for _, l := range s.locations(t, "201@pbx.test") {
		if strings.Contains(l["contact"].(string), "198.51.100.9") {
			t.Fatal("the replay stored its contact")
		}
	}
	// A nonce this sidecar made long ago (same secret, clock in the past): stale=true.
	old := digest.NewNonces([]byte(s.cfg.NonceSecret), s.cfg.NonceTTL, func() time.Time { return time.Now().Add(-time.Hour) }).MakeFor("201@pbx.test")
	fake := newPhone(t, s, "UDP", "201").send(p.request([]string{"<sip:201@127.0.0.1:5999>"}))
	auth = authorize(t, withNonce(fake, old), "201", "pw-201", "MD5", 1)
	res = p.send(p.request([]string{"<sip:201@127.0.0.1:5999>"}, "Authorization: "+auth))
	ch := res.GetHeader("WWW-Authenticate")
	if res.StatusCode != 401 || ch == nil || !strings.Contains(ch.Value(), "stale=true") {
		t.Fatalf("stale nonce: %d %v", res.StatusCode, ch)
	}
	// A forged nonce (not ours): a fresh challenge without stale.
	auth = authorize(t, withNonce(fake, "forged-nonce"), "201", "pw-201", "MD5", 1)
	res = p.send(p.request([]string{"<sip:201@127.0.0.1:5999>"}, "Authorization: "+auth))
	if ch := res.GetHeader("WWW-Authenticate"); res.StatusCode != 401 || strings.Contains(ch.Value(), "stale") {
		t.Fatalf("forged nonce: %d %v", res.StatusCode, ch)
	}
}

// withNonce rewrites the nonce of a challenge.
func withNonce(res *sip.Response, nonce string) *sip.Response {
	out := res.Clone()
	out.RemoveHeader("WWW-Authenticate")
	for _, h := range res.GetHeaders("WWW-Authenticate") {
		v := h.Value()
		i := strings.Index(v, `nonce="`) + len(`nonce="`)
		j := i + strings.Index(v[i:], `"`)
		out.AppendHeader(sip.NewHeader("WWW-Authenticate", v[:i]+nonce+v[j:]))
	}
	return out
}

func TestRegistrationRules(t *testing.T) {
	s := startSidecar(t, newTestHook(t), nil)
	p := newPhone(t, s, "TCP", "201")
	a, b := "<sip:201@127.0.0.1:5001;transport=tcp>", "<sip:201@127.0.0.1:5002;transport=tcp>"

	if res := p.send(p.request([]string{a + ";expires=10"})); res.StatusCode != 423 || res.GetHeader("Min-Expires").Value() != "60" {
		t.Fatalf("short expiry: %d", res.StatusCode)
	}
	if res := p.register("pw-201", "MD5", []string{a, b}); res.StatusCode != 200 || len(contactOf(res)) != 2 {
		t.Fatalf("two contacts: %d %v", res.StatusCode, contactOf(res))
	}
	// A query (no Contact) lists both.
	if res := p.register("pw-201", "MD5", nil); res.StatusCode != 200 || len(contactOf(res)) != 2 {
		t.Fatalf("query: %d %v", res.StatusCode, contactOf(res))
	}
	// Remove one.
	if res := p.register("pw-201", "MD5", []string{a + ";expires=0"}); res.StatusCode != 200 || len(contactOf(res)) != 1 {
		t.Fatalf("remove one: %d %v", res.StatusCode, contactOf(res))
	}
	// The maximum is clamped, the hook's expires is honoured.
	s.hook.mu.Lock()
	s.hook.expires = 900
	s.hook.mu.Unlock()
	p = newPhone(t, s, "TCP", "201") // a new Call-ID, so the refresh is authenticated
	res := p.register("pw-201", "MD5", []string{b + ";expires=99999999"})
	if res.StatusCode != 200 {
		t.Fatalf("long expiry: %d", res.StatusCode)
	}
	for _, l := range s.locations(t, "201@pbx.test") {
		if strings.Contains(l["contact"].(string), ":5002") && l["granted"] != 900.0 {
			t.Fatalf("granted %v, want the hook's 900", l["granted"])
		}
	}
	// "*" must be alone and with Expires: 0.
	if res := p.send(p.request([]string{"*"}, "Expires: 30")); res.StatusCode != 400 {
		t.Fatalf("* with Expires 30: %d", res.StatusCode)
	}
	if res := p.send(p.request([]string{"*", a}, "Expires: 0")); res.StatusCode != 400 {
		t.Fatalf("* with another contact: %d", res.StatusCode)
	}
	if res := p.register("pw-201", "MD5", []string{"*"}, "Expires: 0"); res.StatusCode != 200 || len(contactOf(res)) != 0 {
		t.Fatalf("* unregister: %d %v", res.StatusCode, contactOf(res))
	}
	if len(s.locations(t, "201@pbx.test")) != 0 {
		t.Fatal("bindings left after *")
	}
}

func TestCSeqRules(t *testing.T) {
	s := startSidecar(t, newTestHook(t), nil)
	p := newPhone(t, s, "TCP", "201")
	c := []string{"<sip:201@127.0.0.1:5001;transport=tcp>"}
	first := p.send(p.request(c))
	auth := authorize(t, first, "201", "pw-201", "MD5", 1)
	p.cseq = 10
	if res := p.send(p.request(c, "Authorization: "+auth)); res.StatusCode != 200 {
		t.Fatalf("cseq 10: %d", res.StatusCode)
	}
	// Same Call-ID, lower CSeq: out of order, nothing changes.
	p.cseq = 5
	auth = authorize(t, first, "201", "pw-201", "MD5", 2)
	if res := p.send(p.request(c, "Expires: 0", "Authorization: "+auth)); res.StatusCode != 500 {
		t.Fatalf("lower cseq: %d, want 500", res.StatusCode)
	}
	if len(s.locations(t, "201@pbx.test")) != 1 {
		t.Fatal("an out-of-order REGISTER changed the binding")
	}
	// Same CSeq, fresh credentials: RFC 3261 §10.3 step 7 says it fails, and it must not
	// answer 200 to an unregister that removed nothing.
	p.cseq = 10
	auth = authorize(t, first, "201", "pw-201", "MD5", 3)
	if res := p.send(p.request(c, "Expires: 0", "Authorization: "+auth)); res.StatusCode != 500 {
		t.Fatalf("equal cseq: %d %v, want 500", res.StatusCode, contactOf(res))
	}
	if len(s.locations(t, "201@pbx.test")) != 1 {
		t.Fatal("an equal-CSeq REGISTER changed the binding")
	}
	// Higher CSeq applies.
	p.cseq = 11
	auth = authorize(t, first, "201", "pw-201", "MD5", 4)
	if res := p.send(p.request(c, "Expires: 0", "Authorization: "+auth)); res.StatusCode != 200 || len(contactOf(res)) != 0 {
		t.Fatalf("higher cseq: %d %v", res.StatusCode, contactOf(res))
	}
}

func TestHookFailures(t *testing.T) {
	hook := newTestHook(t)
	s := startSidecar(t, hook, nil)
	c := []string{"<sip:201@127.0.0.1:5001>"}

	hook.set("fail")
	res := newPhone(t, s, "UDP", "201").register("pw-201", "MD5", c)
	if res.StatusCode != 403 || res.GetHeader("X-Reason") == nil || res.GetHeader("X-Reason").Value() != "invalid credentials" {
		t.Fatalf("fail verdict: %d %v", res.StatusCode, res.GetHeader("X-Reason"))
	}
	for _, mode := range []string{"hang", "500", "garbage"} {
		hook.set(mode)
		start := time.Now()
		res := newPhone(t, s, "UDP", "201").register("pw-201", "MD5", c)
		if res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
			t.Fatalf("%s: %d", mode, res.StatusCode)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("%s: the phone waited %s", mode, d)
		}
	}
	hook.set("")
	hook.srv.Close() // the hook is down
	if res := newPhone(t, s, "UDP", "201").register("pw-201", "MD5", c); res.StatusCode != 503 {
		t.Fatalf("hook down: %d", res.StatusCode)
	}
	if len(s.locations(t, "201@pbx.test")) != 0 {
		t.Fatal("a REGISTER without a verdict stored a binding")
	}
}

func TestNATRefreshAnsweredFromStore(t *testing.T) {
	s := startSidecar(t, newTestHook(t), nil)
	p := newPhone(t, s, "UDP", "201")
	c := []string{"<sip:201@10.9.9.9:5060>"} // a private address that is not the source: NAT
	res := p.register("pw-201", "MD5", c, "Expires: 3600")
	if res.StatusCode != 200 || !strings.Contains(contactOf(res)[0], "expires=30") {
		t.Fatalf("NATed phone told %v, want expires=30", contactOf(res))
	}
	locs := s.locations(t, "201@pbx.test")
	if len(locs) != 1 || locs[0]["nat"] != true || locs[0]["granted"] != 3600.0 {
		t.Fatalf("binding %v: want nat and the granted 3600", locs)
	}
	calls := s.hook.calls.Load()
	res = p.send(p.request(c, "Expires: 3600")) // no credentials: a pinhole refresh
	if res.StatusCode != 200 || !strings.Contains(contactOf(res)[0], "expires=30") {
		t.Fatalf("refresh: %d %v", res.StatusCode, contactOf(res))
	}
	if s.hook.calls.Load() != calls {
		t.Fatal("a NAT refresh called the hook")
	}
	// A different contact without credentials is challenged.
	if res := p.send(p.request([]string{"<sip:201@10.9.9.10:5060>"})); res.StatusCode != 401 {
		t.Fatalf("new contact without credentials: %d", res.StatusCode)
	}
	// Unregistering always needs credentials.
	if res := p.send(p.request(c, "Expires: 0")); res.StatusCode != 401 {
		t.Fatalf("unregister without credentials: %d", res.StatusCode)
	}
}

func TestOptionsAndOtherMethods(t *testing.T) {
	s := startSidecar(t, newTestHook(t), nil)
	p := newPhone(t, s, "UDP", "201")
	for method, want := range map[sip.RequestMethod]int{sip.OPTIONS: 200, sip.INVITE: 405, sip.MESSAGE: 405, sip.SUBSCRIBE: 405} {
		req := sip.NewRequest(method, sip.Uri{Scheme: "sip", User: "201", Host: testRealm})
		req.SetDestination(p.dest)
		req.SetTransport("UDP")
		res, err := p.client.Do(t.Context(), req)
		if err != nil {
			t.Fatalf("%s: %v", method, err)
		}
		if res.StatusCode != want || res.GetHeader("Allow") == nil || res.GetHeader("Allow").Value() != "REGISTER, OPTIONS" {
			t.Fatalf("%s: %d %v", method, res.StatusCode, res.GetHeader("Allow"))
		}
		if method == sip.OPTIONS && res.GetHeader("Accept") == nil {
			t.Fatal("OPTIONS without Accept")
		}
	}
}

func TestMaxContacts(t *testing.T) {
	s := startSidecar(t, newTestHook(t), func(c *config.Config) { c.MaxContacts = 2 })
	p := newPhone(t, s, "TCP", "201")
	res := p.register("pw-201", "MD5", []string{"<sip:201@127.0.0.1:1>", "<sip:201@127.0.0.1:2>", "<sip:201@127.0.0.1:3>"})
	if res.StatusCode != 403 || !strings.Contains(res.GetHeader("X-Reason").Value(), "too many contacts") {
		t.Fatalf("over the cap: %d", res.StatusCode)
	}
	if len(s.locations(t, "201@pbx.test")) != 0 {
		t.Fatal("a refused REGISTER stored some contacts")
	}
}

func TestRedisBackedRegistrarSurvivesOutage(t *testing.T) {
	redis := testenv.StartRedis(t)
	hook := newTestHook(t)
	s := startSidecar(t, hook, func(c *config.Config) { c.RedisURL = redis.URL() })
	p := newPhone(t, s, "TCP", "201")
	c := []string{"<sip:201@127.0.0.1:5001;transport=tcp>"}
	if res := p.register("pw-201", "MD5", c); res.StatusCode != 200 {
		t.Fatalf("register: %d", res.StatusCode)
	}
	redis.Stop()
	res := p.register("pw-201", "MD5", []string{"<sip:201@127.0.0.1:5002;transport=tcp>"})
	if res.StatusCode != 503 || res.GetHeader("Retry-After") == nil {
		t.Fatalf("redis down: %d", res.StatusCode)
	}
	redis.Start(t)
	deadline := time.Now().Add(5 * time.Second)
	for {
		res = p.register("pw-201", "MD5", []string{"<sip:201@127.0.0.1:5002;transport=tcp>"})
		if res.StatusCode == 200 || time.Now().After(deadline) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if res.StatusCode != 200 || len(contactOf(res)) != 2 {
		t.Fatalf("after redis returned: %d %v (the first binding must have survived)", res.StatusCode, contactOf(res))
	}
	// A restarted sidecar on the same Redis still has both.
	s.stop()
	s2 := startSidecar(t, hook, func(cfg *config.Config) { cfg.RedisURL = redis.URL() })
	if n := len(s2.locations(t, "201@pbx.test")); n != 2 {
		t.Fatalf("after a sidecar restart: %d bindings", n)
	}
}

// Two sidecars on one Redis: an Authorization used on one is refused on the other, before
// and after the phone unregistered (the AOR's nonce counts outlive its bindings), and the
// replay stores nothing; an honest phone still registers through either.
func TestReplayAcrossSidecarsSharingRedis(t *testing.T) {
	redis := testenv.StartRedis(t)
	hook := newTestHook(t)
	useRedis := func(c *config.Config) { c.RedisURL = redis.URL() }
	a := startSidecar(t, hook, useRedis)
	b := startSidecar(t, hook, useRedis)
	p := newPhone(t, a, "UDP", "201")
	here := []string{"<sip:201@127.0.0.1:5999>"}
	challenge := p.send(p.request(here))
	first := authorize(t, challenge, "201", "pw-201", "MD5", 1)
	if res := p.send(p.request(here, "Authorization: "+first)); res.StatusCode != 200 {
		t.Fatalf("register on a: %d", res.StatusCode)
	}
	attacker := newPhone(t, b, "UDP", "201")
	evil := []string{"<sip:201@198.51.100.9:5060>"}
	if res := attacker.send(attacker.request(evil, "Authorization: "+first)); res.StatusCode != 401 {
		t.Fatalf("replay on b while registered: %d", res.StatusCode)
	}
	second := authorize(t, challenge, "201", "pw-201", "MD5", 2)
	if res := p.send(p.request([]string{"<sip:201@127.0.0.1:5999>;expires=0"}, "Authorization: "+second)); res.StatusCode != 200 {
		t.Fatalf("unregister on a: %d", res.StatusCode)
	}
	if n := len(b.locations(t, "201@pbx.test")); n != 0 {
		t.Fatalf("%d bindings after the unregister", n)
	}
	for nc, auth := range map[int]string{1: first, 2: second} {
		if res := attacker.send(attacker.request(evil, "Authorization: "+auth)); res.StatusCode != 401 {
			t.Fatalf("replay of nc %d on b after the unregister: %d", nc, res.StatusCode)
		}
	}
	if n := len(a.locations(t, "201@pbx.test")); n != 0 {
		t.Fatalf("a replay stored %d bindings", n)
	}
	if res := newPhone(t, b, "UDP", "201").register("pw-201", "MD5", here); res.StatusCode != 200 {
		t.Fatalf("honest register on b: %d", res.StatusCode)
	}
}
