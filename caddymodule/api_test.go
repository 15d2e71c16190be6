package caddymodule

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TestSeedCurlSession plays the reference's curl session against a running gateway.
func TestSeedCurlSession(t *testing.T) {
	g := startGateway(t, "", "softphone_api")

	r := g.do("POST", g.API+"/auth/login", `{"username":"201","password":"b749601f329a635a19c4a87bc359be3d"}`)
	if r.Status != 200 || r.Body["success"] != true || r.str("token_type") != "Bearer" || r.Body["expires_in"] != 3600.0 {
		t.Fatalf("login: %d %s", r.Status, r.Raw)
	}
	if r.Header.Get("Cache-Control") != "no-store" || r.Header.Get("Pragma") != "no-cache" {
		t.Errorf("login answer Cache-Control = %q, Pragma = %q, want no-store and no-cache (RFC 6749 §5.1)", r.Header.Get("Cache-Control"), r.Header.Get("Pragma"))
	}
	access, refresh := r.str("access_token"), r.str("refresh_token")
	if access == "" || refresh == "" || access == refresh {
		t.Fatalf("login tokens: %s", r.Raw)
	}

	r = g.do("GET", g.API+"/profile", "", bearer(access))
	if r.Status != 200 || r.Raw != `{"success":true,"user":{"id":1,"username":"201","role":"user"}}`+"\n" {
		t.Fatalf("profile: %d %s", r.Status, r.Raw)
	}

	r = g.do("POST", g.API+"/auth/refresh", "", bearer(refresh))
	if r.Status != 200 || r.str("access_token") == "" || r.Body["expires_in"] != 3600.0 || r.str("token_type") != "Bearer" {
		t.Fatalf("refresh: %d %s", r.Status, r.Raw)
	}
	if _, rotated := r.Body["refresh_token"]; rotated {
		t.Errorf("refresh without rotation must not return a refresh_token: %s", r.Raw)
	}
	refreshed := r.str("access_token")
	if r := g.do("GET", g.API+"/profile", "", bearer(refreshed)); r.Status != 200 {
		t.Fatalf("profile with refreshed token: %d %s", r.Status, r.Raw)
	}

	r = g.do("GET", g.API+"/health", "")
	if r.Status != 200 || r.str("status") != "ok" || r.Body["success"] != true {
		t.Fatalf("health: %d %s", r.Status, r.Raw)
	}
	if ts, _ := r.Body["timestamp"].(float64); time.Since(time.Unix(int64(ts), 0)).Abs() > time.Minute {
		t.Fatalf("health timestamp %v is not now", r.Body["timestamp"])
	}

	r = g.do("GET", g.API+"/check-media-access", "", bearer(access))
	if r.Status != 200 || r.Raw != `{"success":true}`+"\n" {
		t.Fatalf("check-media-access: %d %s", r.Status, r.Raw)
	}
	for h, want := range map[string]string{"X-Softphone-User-Id": "1", "X-Softphone-Username": "201", "X-Softphone-Role": "user",
		"Content-Type": "application/json", "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"} {
		if got := r.Header.Get(h); got != want {
			t.Errorf("%s = %q, want %q", h, got, want)
		}
	}
	// Issue 6: the grant goes out once per audio chunk; past eight header fields (Date aside)
	// net/http grows, clones and sorts a larger map for every answer.
	if n := len(r.Header) - 1; n > 8 {
		t.Errorf("check-media-access answers with %d header fields besides Date, want at most 8: %v", n, r.Header)
	}

	r = g.do("GET", g.API+"/profile", "", bearer("invalid_token"))
	wantError(t, r, 401, "Unauthorized. Token required")
	if got := r.Header.Get("WWW-Authenticate"); got != `Bearer realm="softphone", error="invalid_token"` {
		t.Errorf("WWW-Authenticate = %q", got)
	}
	wantError(t, g.do("GET", g.API+"/profile", "", bearer(refresh)), 403, "Invalid token type")
	wantError(t, g.do("POST", g.API+"/auth/login", `{"username":"","password":""}`), 400, "Invalid credentials provided")

	r = g.do("POST", g.API+"/auth/logout", "", bearer(access))
	if r.Status != 200 || r.Raw != `{"success":true,"message":"Logged out successfully"}`+"\n" {
		t.Fatalf("logout: %d %s", r.Status, r.Raw)
	}
	// Logout revokes the session: the access token, the token refreshed from it and the
	// refresh token all die (the PHP module's logout revoked nothing).
	wantError(t, g.do("GET", g.API+"/profile", "", bearer(access)), 401, "Unauthorized. Token required")
	wantError(t, g.do("GET", g.API+"/profile", "", bearer(refreshed)), 401, "Unauthorized. Token required")
	wantError(t, g.do("POST", g.API+"/auth/refresh", "", bearer(refresh)), 401, "Invalid or missing token")
	wantError(t, g.do("GET", g.API+"/check-media-access", "", bearer(access)), 401, "Unauthorized")
	wantError(t, g.do("POST", g.API+"/auth/logout", "", bearer(access)), 401, "Unauthorized")

	log, err := os.ReadFile(filepath.Join(g.DataDir, "security.log"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"[AUTH_SUCCESS] User 201 logged in successfully | From: 127.0.0.1 | Time: ",
		"[LOGOUT] User 201 logged out | From: 127.0.0.1",
		"[MEDIA_ACCESS_GRANTED] Media access granted for user: 201 | From: 127.0.0.1",
		"[MEDIA_ACCESS_DENIED] Media access denied: revoked | From: 127.0.0.1",
	} {
		if !strings.Contains(string(log), want) {
			t.Errorf("security.log lacks %q:\n%s", want, log)
		}
	}
	for _, secret := range []string{access, refresh, refreshed, "b749601f329a635a19c4a87bc359be3d"} {
		if strings.Contains(string(log), secret) {
			t.Errorf("security.log holds a secret")
		}
	}
}

func TestLoginErrors(t *testing.T) {
	g := startGateway(t, "", "softphone_api")
	cases := []struct {
		name, body string
		status     int
		msg        string
	}{
		{"empty body", "", 400, "Invalid credentials provided"},
		{"not JSON", "username=201&password=x", 400, "Invalid credentials provided"},
		{"JSON array", `["201","x"]`, 400, "Invalid credentials provided"},
		{"username of wrong type", `{"username":201,"password":"x"}`, 400, "Invalid credentials provided"},
		{"password null", `{"username":"201","password":null}`, 400, "Invalid credentials provided"},
		{"empty password", `{"username":"201","password":""}`, 400, "Invalid credentials provided"},
		{"trailing garbage", `{"username":"201","password":"x"} {}`, 400, "Invalid credentials provided"},
		{"truncated JSON", `{"username":"201","pass`, 400, "Invalid credentials provided"},
		{"username too long", `{"username":"` + strings.Repeat("9", 65) + `","password":"x"}`, 400, "Invalid credentials provided"},
		{"oversized body", `{"username":"201","password":"` + strings.Repeat("x", 9000) + `"}`, 413, "Request body too large"},
		{"wrong password", `{"username":"201","password":"nope"}`, 401, "Invalid credentials"},
		{"unknown user", `{"username":"999","password":"nope"}`, 401, "Invalid credentials"},
		{"disabled user with right password", `{"username":"204","password":"secret-204"}`, 401, "Invalid credentials"},
		{"HA1 user with wrong secret", `{"username":"203","password":"wrong"}`, 401, "Invalid credentials"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			wantError(t, g.do("POST", g.API+"/auth/login", c.body), c.status, c.msg)
		})
	}
	t.Run("HA1 user logs in with the secret", func(t *testing.T) {
		g.login("203", "demo-secret-203")
	})
	t.Run("unknown user and wrong password answer alike", func(t *testing.T) {
		a := g.do("POST", g.API+"/auth/login", `{"username":"202","password":"bad"}`)
		b := g.do("POST", g.API+"/auth/login", `{"username":"nobody","password":"bad"}`)
		if a.Status != b.Status || a.str("error") != b.str("error") || a.Header.Get("WWW-Authenticate") != b.Header.Get("WWW-Authenticate") {
			t.Fatalf("answers differ: %d %s / %d %s", a.Status, a.Raw, b.Status, b.Raw)
		}
	})
	t.Run("GET on login is 405 with Allow", func(t *testing.T) {
		r := g.do("GET", g.API+"/auth/login", "")
		wantError(t, r, 405, "Method not allowed")
		if r.Header.Get("Allow") != "POST" {
			t.Fatalf("Allow = %q", r.Header.Get("Allow"))
		}
	})
	t.Run("unknown endpoint is 404", func(t *testing.T) {
		wantError(t, g.do("GET", g.API+"/nope", ""), 404, "Not found")
	})
	t.Run("paths outside the prefix go to the next handler", func(t *testing.T) {
		if r := g.do("GET", g.Base+"/elsewhere", ""); r.Status != 200 || r.Raw != "" {
			t.Fatalf("outside prefix: %d %q", r.Status, r.Raw)
		}
	})
}

func TestLoginThrottle(t *testing.T) {
	g := startGateway(t, "login_throttle {\n max_failures 3\n window 1h\n}", "softphone_api")
	bad := `{"username":"202","password":"guess"}`
	for i := range 3 {
		if r := g.do("POST", g.API+"/auth/login", bad); r.Status != 401 {
			t.Fatalf("failure %d: %d %s", i+1, r.Status, r.Raw)
		}
	}
	r := g.do("POST", g.API+"/auth/login", bad)
	wantError(t, r, 429, "Too many failed login attempts. Try again later")
	if ra := r.Header.Get("Retry-After"); ra == "" || ra == "0" {
		t.Fatalf("Retry-After = %q", ra)
	}
	// Even the right password is refused while the window runs: the guesser learns nothing.
	wantError(t, g.do("POST", g.API+"/auth/login", `{"username":"202","password":"secret-202"}`), 429, "Too many failed login attempts. Try again later")
	// Another username from the same address is its own key.
	g.login("201", "b749601f329a635a19c4a87bc359be3d")

	log, _ := os.ReadFile(filepath.Join(g.DataDir, "security.log"))
	if n := strings.Count(string(log), "[AUTH_FAILED] Failed login attempt for user: 202"); n < 3 {
		t.Fatalf("want at least 3 AUTH_FAILED lines for 202, got %d:\n%s", n, log)
	}
}

func TestLoginSuccessClearsThrottle(t *testing.T) {
	g := startGateway(t, "login_throttle {\n max_failures 2\n window 1h\n}", "softphone_api")
	g.do("POST", g.API+"/auth/login", `{"username":"202","password":"guess"}`)
	g.login("202", "secret-202")
	g.do("POST", g.API+"/auth/login", `{"username":"202","password":"guess"}`)
	// One failure since the success: still below the limit of 2.
	g.login("202", "secret-202")
}

// forge signs header and claims with key using HMAC-SHA256 (or leaves the signature as given).
func forge(header, claims map[string]any, key []byte) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	unsigned := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(unsigned))
	return unsigned + "." + base64.RawURLEncoding.EncodeToString(mac.Sum(nil))
}

func TestForgedTokensAreRefused(t *testing.T) {
	g := startGateway(t, "", "softphone_api")
	access, refresh := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	key := g.signingKey()
	now := time.Now().Unix()
	claims := func(typ string, exp int64) map[string]any {
		return map[string]any{"sub": 1, "username": "201", "role": "user", "iat": now, "exp": exp, "type": typ}
	}
	hs256 := map[string]any{"alg": "HS256", "typ": "JWT"}
	parts := strings.Split(access, ".")

	// A token the PHP module would mint with the same key is accepted.
	php := forge(hs256, claims("access", now+3600), key)
	if r := g.do("GET", g.API+"/profile", "", bearer(php)); r.Status != 200 {
		t.Fatalf("PHP-style token refused: %d %s", r.Status, r.Raw)
	}

	noneTok := func(alg string) string {
		h, _ := json.Marshal(map[string]any{"alg": alg, "typ": "JWT"})
		c, _ := json.Marshal(claims("access", now+3600))
		return base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c) + "."
	}
	hs512, err := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims(claims("access", now+3600))).SignedString(key)
	if err != nil {
		t.Fatal(err)
	}
	tampered := func() string {
		c, _ := json.Marshal(map[string]any{"sub": 3, "username": "203", "role": "admin", "iat": now, "exp": now + 3600, "type": "access"})
		return parts[0] + "." + base64.RawURLEncoding.EncodeToString(c) + "." + parts[2]
	}()

	cases := []struct {
		name   string
		header []string
		status int
	}{
		{"alg none", []string{bearer(noneTok("none"))}, 401},
		{"alg None", []string{bearer(noneTok("None"))}, 401},
		{"another algorithm (HS512, same key)", []string{bearer(hs512)}, 401},
		{"wrong key", []string{bearer(forge(hs256, claims("access", now+3600), []byte(strings.Repeat("k", 64))))}, 401},
		{"tampered payload", []string{bearer(tampered)}, 401},
		{"expired", []string{bearer(forge(hs256, claims("access", now-3600), key))}, 401},
		{"no exp", []string{bearer(forge(hs256, map[string]any{"sub": 1, "username": "201", "role": "user", "iat": now, "type": "access"}, key))}, 401},
		{"unknown type", []string{bearer(forge(hs256, claims("admin", now+3600), key))}, 401},
		{"refresh as access", []string{bearer(refresh)}, 403},
		{"oversized", []string{bearer(strings.Repeat("a", 5000))}, 401},
		{"malformed base64", []string{bearer(parts[0] + ".e30=." + parts[2])}, 401},
		{"not base64url", []string{bearer(parts[0] + "." + strings.ReplaceAll(parts[1], "-", "+") + "!" + "." + parts[2])}, 401},
		{"two segments", []string{bearer(parts[0] + "." + parts[1])}, 401},
		{"two tokens in one header", []string{"Authorization: Bearer " + access + ", Bearer " + access}, 400},
		{"two Authorization headers", []string{bearer(access), bearer(access)}, 400},
		{"Basic scheme", []string{"Authorization: Basic MjAxOnNlY3JldA=="}, 401},
		{"no token", nil, 401},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, ep := range []string{"/profile", "/check-media-access"} {
				r := g.do("GET", g.API+ep, "", c.header...)
				if r.Status != c.status {
					t.Errorf("%s: status %d, want %d: %s", ep, r.Status, c.status, r.Raw)
				}
				if c.status == 401 && !strings.HasPrefix(r.Header.Get("WWW-Authenticate"), `Bearer realm="softphone"`) {
					t.Errorf("%s: 401 without a Bearer challenge", ep)
				}
			}
		})
	}
	t.Run("access token as refresh token", func(t *testing.T) {
		wantError(t, g.do("POST", g.API+"/auth/refresh", "", bearer(access)), 403, "Invalid token type. Refresh token required")
	})
	t.Run("refresh token cannot log out", func(t *testing.T) {
		wantError(t, g.do("POST", g.API+"/auth/logout", "", bearer(refresh)), 403, "Invalid token type")
	})
	t.Run("refresh for a disabled user is refused", func(t *testing.T) {
		// 204 is disabled in the users file: a token for it (from before it was disabled) gets no new access token.
		tok := forge(hs256, map[string]any{"sub": 4, "username": "204", "role": "user", "iat": now, "exp": now + 3600, "type": "refresh"}, key)
		wantError(t, g.do("POST", g.API+"/auth/refresh", "", bearer(tok)), 401, "Invalid or missing token")
	})
	t.Run("a token naming another user's id is refused at refresh", func(t *testing.T) {
		tok := forge(hs256, map[string]any{"sub": 3, "username": "201", "role": "user", "iat": now, "exp": now + 3600, "type": "refresh"}, key)
		wantError(t, g.do("POST", g.API+"/auth/refresh", "", bearer(tok)), 401, "Invalid or missing token")
	})
}

func TestPHPTokensLogOutTogether(t *testing.T) {
	g := startGateway(t, "", "softphone_api")
	key := g.signingKey()
	now := time.Now().Unix()
	hs256 := map[string]any{"typ": "JWT", "alg": "HS256"}
	access := forge(hs256, map[string]any{"sub": 1, "username": "201", "role": "user", "iat": now, "exp": now + 3600, "type": "access"}, key)
	refresh := forge(hs256, map[string]any{"sub": 1, "username": "201", "role": "user", "iat": now, "exp": now + 2592000, "type": "refresh"}, key)
	if r := g.do("POST", g.API+"/auth/logout", "", bearer(access)); r.Status != 200 {
		t.Fatalf("logout: %d %s", r.Status, r.Raw)
	}
	wantError(t, g.do("POST", g.API+"/auth/refresh", "", bearer(refresh)), 401, "Invalid or missing token")
}

// A logout revokes the session for as long as any of its refresh tokens can live. With
// rotation a refresh token is issued at each refresh, so the revocation runs from the
// logout, not from the iat of the access token that asked for it: an access token 50
// minutes old used to leave a rotated refresh token 50 minutes of life after the
// revocation lapsed (found in review).
func TestLogoutOutlivesEveryRefreshToken(t *testing.T) {
	g := startGateway(t, "", "softphone_api")
	access, refresh := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	claims := func(tok string) map[string]any {
		b, err := base64.RawURLEncoding.DecodeString(strings.Split(tok, ".")[1])
		if err != nil {
			t.Fatal(err)
		}
		var c map[string]any
		if err := json.Unmarshal(b, &c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	rc := claims(refresh)
	refreshTTL := time.Duration(rc["exp"].(float64)-rc["iat"].(float64)) * time.Second
	// The same session's access token, issued 50 minutes ago and still valid.
	old := claims(access)
	now := time.Now()
	old["iat"], old["exp"] = now.Add(-50*time.Minute).Unix(), now.Add(10*time.Minute).Unix()
	tok := forge(map[string]any{"alg": "HS256", "typ": "JWT"}, old, g.signingKey())
	if r := g.do("POST", g.API+"/auth/logout", "", bearer(tok)); r.Status != 200 {
		t.Fatalf("logout: %d %s", r.Status, r.Raw)
	}
	journal, err := os.ReadFile(filepath.Join(g.DataDir, "state.journal"))
	if err != nil {
		t.Fatal(err)
	}
	var until int64
	for line := range strings.Lines(string(journal)) {
		var rec struct {
			Op    string `json:"op"`
			Until int64  `json:"until"`
		}
		if json.Unmarshal([]byte(line), &rec) == nil && rec.Op == "revoke" {
			until = rec.Until
		}
	}
	if want := now.Add(refreshTTL); time.UnixMilli(until).Before(want) {
		t.Fatalf("the session is revoked until %v, before a refresh token issued now expires (%v)", time.UnixMilli(until), want)
	}
	if r := g.do("POST", g.API+"/auth/refresh", "", bearer(refresh)); r.Status != 401 {
		t.Fatalf("refresh after logout: %d %s", r.Status, r.Raw)
	}
}
