package caddymodule

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/internal/sipdigest"
)

// digestBody builds a jambonz callback body for user/secret as a phone would answer the
// challenge (qop=auth unless qop is empty).
func digestBody(t testing.TB, user, secret, realm, alg, qop string) map[string]any {
	t.Helper()
	c := sipdigest.Credentials{Username: user, Realm: realm, Nonce: "n0nce-abc", URI: "sip:pbx.example.com",
		Algorithm: alg, QOP: qop}
	if qop != "" {
		c.NC, c.CNonce = "00000001", "6b8b4567"
	}
	c.Response = sipdigest.Response(c, "REGISTER", sipdigest.HA1(alg, user, realm, secret))
	return map[string]any{"method": "REGISTER", "expires": 3600, "scheme": "digest", "username": user,
		"realm": realm, "nonce": c.Nonce, "uri": c.URI, "response": c.Response, "qop": c.QOP, "nc": c.NC,
		"cnonce": c.CNonce, "algorithm": alg, "source_address": "203.0.113.7", "source_port": 5060}
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

func sign(secret, body string, at time.Time) string {
	ts := strconv.FormatInt(at.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + "." + body))
	return "Jambonz-Signature: t=" + ts + ",v1=" + hex.EncodeToString(mac.Sum(nil))
}

func TestSIPAuthCallback(t *testing.T) {
	g := startGateway(t, `sip_auth {
		call_hook http://127.0.0.1:3000/call
		call_status_hook http://127.0.0.1:3000/status
		max_expires 1800
	}`, "softphone_api")
	url := g.API + "/sip/auth"

	ok := []struct {
		name string
		body map[string]any
	}{
		{"plain secret, MD5, qop=auth", digestBody(t, "201", "b749601f329a635a19c4a87bc359be3d", "pbx.example.com", "MD5", "auth")},
		{"plain secret, SHA-256", digestBody(t, "202", "secret-202", "pbx.example.com", "SHA-256", "auth")},
		{"plain secret, no qop (RFC 2069)", digestBody(t, "202", "secret-202", "pbx.example.com", "MD5", "")},
		{"HA1-only user in its realm", digestBody(t, "203", "demo-secret-203", "softphone", "MD5", "auth")},
	}
	for _, c := range ok {
		t.Run("ok: "+c.name, func(t *testing.T) {
			r := g.do("POST", url, mustJSON(c.body))
			if r.Status != 200 || r.str("status") != "ok" {
				t.Fatalf("%d %s", r.Status, r.Raw)
			}
			if r.str("call_hook") != "http://127.0.0.1:3000/call" || r.str("call_status_hook") != "http://127.0.0.1:3000/status" {
				t.Fatalf("hooks missing: %s", r.Raw)
			}
			if r.Body["expires"] != 1800.0 {
				t.Fatalf("expires not capped to max_expires: %s", r.Raw)
			}
			if r.str("display_name") == "" {
				t.Fatalf("display_name missing: %s", r.Raw)
			}
		})
	}

	wrong := digestBody(t, "201", "not-the-secret", "pbx.example.com", "MD5", "auth")
	unknown := digestBody(t, "999", "whatever", "pbx.example.com", "MD5", "auth")
	disabled := digestBody(t, "204", "secret-204", "pbx.example.com", "MD5", "auth")
	ha1OtherRealm := digestBody(t, "203", "demo-secret-203", "elsewhere", "MD5", "auth")
	ha1SHA := digestBody(t, "203", "demo-secret-203", "softphone", "SHA-256", "auth") // only an MD5 HA1 is stored
	tampered := digestBody(t, "201", "b749601f329a635a19c4a87bc359be3d", "pbx.example.com", "MD5", "auth")
	tampered["uri"] = "sip:other.example.com" // response was computed for another URI
	for name, body := range map[string]map[string]any{
		"wrong secret": wrong, "unknown user": unknown, "disabled user": disabled,
		"HA1 user in another realm": ha1OtherRealm, "SHA-256 for an MD5-only HA1 user": ha1SHA, "tampered uri": tampered,
	} {
		t.Run("fail: "+name, func(t *testing.T) {
			r := g.do("POST", url, mustJSON(body))
			if r.Status != 200 || r.Raw != `{"status":"fail","msg":"authentication failed"}`+"\n" {
				t.Fatalf("%d %s", r.Status, r.Raw)
			}
		})
	}

	bad := map[string]string{
		"empty body":        "",
		"not JSON":          "method=REGISTER",
		"wrong type":        `{"method":"REGISTER","username":201}`,
		"missing response":  mustJSON(without(digestBody(t, "201", "x", "r", "MD5", "auth"), "response")),
		"unknown algorithm": mustJSON(with(digestBody(t, "201", "x", "r", "MD5", "auth"), "algorithm", "SHA-512")),
		"basic scheme":      mustJSON(with(digestBody(t, "201", "x", "r", "MD5", "auth"), "scheme", "basic")),
		"qop without nc":    mustJSON(with(digestBody(t, "201", "x", "r", "MD5", "auth"), "nc", "")),
		"negative expires":  mustJSON(with(digestBody(t, "201", "x", "r", "MD5", "auth"), "expires", -1)),
		"long username":     mustJSON(with(digestBody(t, "201", "x", "r", "MD5", "auth"), "username", strings.Repeat("1", 100))),
		"trailing garbage":  mustJSON(digestBody(t, "201", "x", "r", "MD5", "auth")) + "{}",
	}
	for name, body := range bad {
		t.Run("400: "+name, func(t *testing.T) {
			wantError(t, g.do("POST", url, body), 400, "Bad request")
		})
	}
	t.Run("413: oversized", func(t *testing.T) {
		body := mustJSON(with(digestBody(t, "201", "x", "r", "MD5", "auth"), "uri", strings.Repeat("u", 9000)))
		wantError(t, g.do("POST", url, body), 413, "Request body too large")
	})
	t.Run("GET is 405", func(t *testing.T) {
		wantError(t, g.do("GET", url, ""), 405, "Method not allowed")
	})
}

func with(m map[string]any, k string, v any) map[string]any { m[k] = v; return m }
func without(m map[string]any, k string) map[string]any     { delete(m, k); return m }

func TestSIPAuthSignature(t *testing.T) {
	const secret = "a-shared-secret-of-some-length"
	g := startGateway(t, "sip_auth {\n secret "+secret+"\n}", "softphone_api")
	url := g.API + "/sip/auth"
	body := mustJSON(digestBody(t, "201", "b749601f329a635a19c4a87bc359be3d", "pbx.example.com", "MD5", "auth"))
	now := time.Now()

	if r := g.do("POST", url, body, sign(secret, body, now)); r.Status != 200 || r.str("status") != "ok" {
		t.Fatalf("signed callback: %d %s", r.Status, r.Raw)
	}
	for name, hdr := range map[string][]string{
		"unsigned":                  nil,
		"wrong secret":              {sign("another-secret-entirely", body, now)},
		"signature of another body": {sign(secret, body+" ", now)},
		"timestamp too old":         {sign(secret, body, now.Add(-10*time.Minute))},
		"timestamp in the future":   {sign(secret, body, now.Add(10*time.Minute))},
		"garbage header":            {"Jambonz-Signature: nonsense"},
		"hex that is not hex":       {"Jambonz-Signature: t=" + strconv.FormatInt(now.Unix(), 10) + ",v1=zz"},
	} {
		t.Run("refused: "+name, func(t *testing.T) {
			wantError(t, g.do("POST", url, body, hdr...), 403, "Forbidden")
		})
	}
	batch := "[" + body + "]"
	t.Run("refused: a batch signed as its single element", func(t *testing.T) {
		wantError(t, g.do("POST", url, batch, sign(secret, body, now)), 403, "Forbidden")
	})
	if r := g.do("POST", url, batch, sign(secret, batch, now)); r.Status != 200 || !strings.Contains(r.Raw, `"ok"`) {
		t.Fatalf("signed batch: %d %s", r.Status, r.Raw)
	}
}

func TestLoopbackPeer(t *testing.T) {
	for addr, want := range map[string]bool{
		"127.0.0.1:5000": true, "127.8.9.10:1": true, "[::1]:5000": true,
		"10.0.0.5:5000": false, "192.0.2.1:80": false, "[2001:db8::1]:80": false,
		"[::ffff:127.0.0.1]:80": true, "garbage": false, "": false,
	} {
		r := httptest.NewRequest("POST", "/", nil)
		r.RemoteAddr = addr
		r.Header.Set("X-Forwarded-For", "127.0.0.1") // never trusted
		if got := loopbackPeer(r); got != want {
			t.Errorf("loopbackPeer(%q) = %v, want %v", addr, got, want)
		}
	}
}

// The batch form carries many callbacks in one exchange: answers come back in order, one
// per element, and one malformed element spoils no other's verdict.
func TestSIPAuthBatch(t *testing.T) {
	g := startGateway(t, "sip_auth {\n max_expires 1800\n}", "softphone_api")
	url := g.API + "/sip/auth"
	good := mustJSON(digestBody(t, "201", "b749601f329a635a19c4a87bc359be3d", "pbx.example.com", "MD5", "auth"))
	good2 := mustJSON(digestBody(t, "202", "secret-202", "pbx.example.com", "SHA-256", "auth"))
	wrong := mustJSON(digestBody(t, "201", "not-the-secret", "pbx.example.com", "MD5", "auth"))
	malformed := mustJSON(without(digestBody(t, "201", "x", "r", "MD5", "auth"), "response"))

	t.Run("single answers offer batches", func(t *testing.T) {
		r := g.do("POST", url, good)
		if r.Status != 200 || r.Header.Get("Softphone-Auth-Batch") != "256" {
			t.Fatalf("%d %v %s", r.Status, r.Header, r.Raw)
		}
	})

	t.Run("answers in order, a bad element fails alone", func(t *testing.T) {
		r := g.do("POST", url, "["+good+","+wrong+","+malformed+","+good2+`,"text",null,{}]`)
		if r.Status != 200 {
			t.Fatalf("%d %s", r.Status, r.Raw)
		}
		var answers []map[string]any
		if err := json.Unmarshal([]byte(r.Raw), &answers); err != nil {
			t.Fatalf("%v: %s", err, r.Raw)
		}
		want := []string{"ok", "fail", "fail", "ok", "fail", "fail", "fail"}
		if len(answers) != len(want) {
			t.Fatalf("%d answers for %d elements: %s", len(answers), len(want), r.Raw)
		}
		for i, w := range want {
			if answers[i]["status"] != w {
				t.Fatalf("element %d: %v, want %s (%s)", i, answers[i], w, r.Raw)
			}
		}
		if answers[0]["expires"] != 1800.0 || answers[0]["display_name"] == "" {
			t.Fatalf("ok answer lacks its fields: %v", answers[0])
		}
	})

	many := "[" + strings.TrimSuffix(strings.Repeat(good+",", maxSIPAuthBatch+1), ",") + "]"
	for name, body := range map[string]string{
		"empty array":      "[]",
		"not JSON":         "[{",
		"too many":         many,
		"trailing garbage": "[" + good + "]]",
		"array of arrays":  "[[" + good + "]]x",
	} {
		t.Run("400: "+name, func(t *testing.T) {
			wantError(t, g.do("POST", url, body), 400, "Bad request")
		})
	}
	t.Run("413: oversized batch", func(t *testing.T) {
		wantError(t, g.do("POST", url, "["+strings.Repeat(" ", 300<<10)+good+"]"), 413, "Request body too large")
	})
	t.Run("an oversized element fails alone", func(t *testing.T) {
		big := mustJSON(with(digestBody(t, "201", "x", "r", "MD5", "auth"), "uri", strings.Repeat("u", 9000)))
		r := g.do("POST", url, "["+big+","+good+"]")
		if r.Status != 200 || !strings.Contains(r.Raw, `"fail"`) || !strings.Contains(r.Raw, `"ok"`) {
			t.Fatalf("%d %s", r.Status, r.Raw)
		}
	})
}

// A body that breaks off before its Content-Length is a 400, not "too large"; one over the
// limit is still a 413.
func TestSIPAuthBodyErrors(t *testing.T) {
	for err, want := range map[error]int{
		io.ErrUnexpectedEOF: http.StatusBadRequest,
		fmt.Errorf("reading: %w", &http.MaxBytesError{Limit: 10}): http.StatusRequestEntityTooLarge,
	} {
		w := httptest.NewRecorder()
		bodyError(w, err, time.Now())
		if w.Code != want {
			t.Errorf("%v: %d, want %d", err, w.Code, want)
		}
	}
	g := startGateway(t, "", "softphone_api")
	r := g.do("POST", g.API+"/sip/auth", "["+strings.Repeat(`{"a":1},`, 40000)+`{"a":1}]`)
	if r.Status != http.StatusRequestEntityTooLarge {
		t.Fatalf("a body over the limit: %d, want 413", r.Status)
	}
}
