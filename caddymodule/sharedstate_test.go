package caddymodule

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// procConfig is a process gateway's Caddyfile: users from testUsers, the given store line
// and extra global lines.
func procConfig(t *testing.T, dir, storeLine, extra string) string {
	t.Helper()
	users := filepath.Join(dir, "users.json")
	if err := os.WriteFile(users, []byte(testUsers), 0o600); err != nil {
		t.Fatal(err)
	}
	return `{
	admin {ADMIN}
	auto_https off
	persist_config off
	storage file_system ` + filepath.Join(dir, "caddy") + `
	softphone {
		data_dir ` + filepath.Join(dir, "data") + `
		users file ` + users + `
		` + storeLine + `
		` + extra + `
	}
}
http://127.0.0.1:{PORT} {
	softphone_api
}
`
}

// Issue 5: several gateways behind a load balancer honour each other's logouts, and a
// refresh token reused on another gateway kills the family on all of them. A refresh asks
// Redis itself, so it is refused the moment the other gateway has answered; an access-token
// check answers from this gateway's mirror, which hears of the logout once Redis delivers
// its publish (README, "State: memory or Redis").
func TestTwoGatewaysShareRedis(t *testing.T) {
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	// Both gateways use one secret.key, as a cluster must.
	cfg := procConfig(t, dir, "store "+redis.URL(), "refresh_rotation {\n grace 1s\n}")
	a := startGatewayProc(t, dir, cfg).client()
	b := startGatewayProc(t, dir, cfg).client()

	access, refresh := a.login("201", "b749601f329a635a19c4a87bc359be3d")
	if r := b.do("GET", b.API+"/profile", "", bearer(access)); r.Status != 200 {
		t.Fatalf("token from A refused on B: %d %s", r.Status, r.Raw)
	}
	if r := b.do("POST", b.API+"/auth/logout", "", bearer(access)); r.Status != 200 {
		t.Fatalf("logout on B: %d %s", r.Status, r.Raw)
	}
	wantError(t, a.do("POST", a.API+"/auth/refresh", "", bearer(refresh)), 401, "Invalid or missing token")
	wantError(t, refusedSoon(a, "/profile", access), 401, "Unauthorized. Token required")

	// Rotation across gateways: refresh on A, then the old refresh token shows up on B after
	// the grace window: the family is dead on both.
	_, refresh = a.login("202", "secret-202")
	r := a.do("POST", a.API+"/auth/refresh", "", bearer(refresh))
	if r.Status != 200 || r.str("refresh_token") == "" {
		t.Fatalf("refresh on A: %d %s", r.Status, r.Raw)
	}
	newAccess, newRefresh := r.str("access_token"), r.str("refresh_token")
	time.Sleep(1100 * time.Millisecond)
	wantError(t, b.do("POST", b.API+"/auth/refresh", "", bearer(refresh)), 401, "Invalid or missing token")
	wantError(t, a.do("POST", a.API+"/auth/refresh", "", bearer(newRefresh)), 401, "Invalid or missing token")
	wantError(t, b.do("GET", b.API+"/profile", "", bearer(newAccess)), 401, "Unauthorized. Token required")
	wantError(t, refusedSoon(a, "/profile", newAccess), 401, "Unauthorized. Token required")
}

// refusedSoon GETs path on g with token until it is refused or a second has passed (a
// mirror that has not heard of a revocation by then is broken), and returns the last reply.
func refusedSoon(g *testGateway, path, token string) reply {
	deadline := time.Now().Add(time.Second)
	for {
		r := g.do("GET", g.API+path, "", bearer(token))
		if r.Status != 200 || time.Now().After(deadline) {
			return r
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestRefreshRotation(t *testing.T) {
	g := startGateway(t, "refresh_rotation {\n grace 2s\n}", "softphone_api")
	_, r0 := g.login("201", "b749601f329a635a19c4a87bc359be3d")

	first := g.do("POST", g.API+"/auth/refresh", "", bearer(r0))
	if first.Status != 200 || first.str("refresh_token") == "" || first.str("refresh_token") == r0 {
		t.Fatalf("rotation: %d %s", first.Status, first.Raw)
	}
	// Two requests racing from one app: the retry of r0 inside the grace window gets the
	// very same new pair, not a reuse alarm.
	retry := g.do("POST", g.API+"/auth/refresh", "", bearer(r0))
	if retry.Status != 200 || retry.str("refresh_token") != first.str("refresh_token") || retry.str("access_token") != first.str("access_token") {
		t.Fatalf("retry in grace: %d %s\nfirst: %s", retry.Status, retry.Raw, first.Raw)
	}
	r1 := first.str("refresh_token")
	second := g.do("POST", g.API+"/auth/refresh", "", bearer(r1))
	if second.Status != 200 {
		t.Fatalf("second rotation: %d %s", second.Status, second.Raw)
	}
	// r0 is now two generations old: reuse. The whole session dies, including the newest pair.
	wantError(t, g.do("POST", g.API+"/auth/refresh", "", bearer(r0)), 401, "Invalid or missing token")
	wantError(t, g.do("POST", g.API+"/auth/refresh", "", bearer(second.str("refresh_token"))), 401, "Invalid or missing token")
	wantError(t, g.do("GET", g.API+"/profile", "", bearer(second.str("access_token"))), 401, "Unauthorized. Token required")
	log, _ := os.ReadFile(filepath.Join(g.DataDir, "security.log"))
	if !strings.Contains(string(log), "Reused refresh token for user: 201") {
		t.Fatalf("reuse not in the security log:\n%s", log)
	}
}

// The MikoPBX apps keep reusing their refresh token: without rotation configured that works
// indefinitely, and no refresh_token field appears.
func TestRefreshWithoutRotationIsReusable(t *testing.T) {
	g := startGateway(t, "", "softphone_api")
	_, refresh := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	for i := range 5 {
		r := g.do("POST", g.API+"/auth/refresh", "", bearer(refresh))
		if r.Status != 200 {
			t.Fatalf("refresh %d: %d %s", i, r.Status, r.Raw)
		}
		if _, ok := r.Body["refresh_token"]; ok {
			t.Fatalf("refresh %d returned a refresh_token without rotation: %s", i, r.Raw)
		}
	}
}

// A logged-out token never comes back to life: not after a `caddy reload`, not after the
// process is killed and started again on the same data dir.
func TestLogoutSurvivesReloadAndRestart(t *testing.T) {
	dir := t.TempDir()
	p := startGatewayProc(t, dir, procConfig(t, dir, "", ""))
	g := p.client()
	access, refresh := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	other, _ := g.login("202", "secret-202")
	if r := g.do("POST", g.API+"/auth/logout", "", bearer(access)); r.Status != 200 {
		t.Fatal(r.Raw)
	}
	p.reload()
	wantError(t, g.do("GET", g.API+"/profile", "", bearer(access)), 401, "Unauthorized. Token required")
	p.restart()
	wantError(t, g.do("GET", g.API+"/profile", "", bearer(access)), 401, "Unauthorized. Token required")
	wantError(t, g.do("POST", g.API+"/auth/refresh", "", bearer(refresh)), 401, "Invalid or missing token")
	if r := g.do("GET", g.API+"/profile", "", bearer(other)); r.Status != 200 {
		t.Fatalf("an unrelated session died across the restart: %d %s", r.Status, r.Raw)
	}
}

func TestLogoutEverywhere(t *testing.T) {
	g := startGateway(t, "", "softphone_api")
	a1, r1 := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	a2, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	other, _ := g.login("202", "secret-202")
	r := g.do("POST", g.API+"/admin/logout-all", `{"username":"201"}`)
	if r.Status != 200 {
		t.Fatalf("logout-all: %d %s", r.Status, r.Raw)
	}
	for _, tok := range []string{a1, a2} {
		wantError(t, g.do("GET", g.API+"/profile", "", bearer(tok)), 401, "Unauthorized. Token required")
	}
	wantError(t, g.do("POST", g.API+"/auth/refresh", "", bearer(r1)), 401, "Invalid or missing token")
	if r := g.do("GET", g.API+"/profile", "", bearer(other)); r.Status != 200 {
		t.Fatalf("another user's session died: %s", r.Raw)
	}
	// Tokens are stamped in whole seconds: a login in the next second is a new session.
	time.Sleep(time.Until(time.Now().Truncate(time.Second).Add(time.Second + 10*time.Millisecond)))
	fresh, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	if r := g.do("GET", g.API+"/profile", "", bearer(fresh)); r.Status != 200 {
		t.Fatalf("a login after logout-all is refused: %s", r.Raw)
	}
	for name, body := range map[string]string{
		"unknown user": `{"username":"999"}`, "both fields": `{"username":"201","user_id":1}`,
		"neither": `{}`, "not JSON": `x`, "wrong type": `{"user_id":"1"}`,
	} {
		t.Run(name, func(t *testing.T) {
			if r := g.do("POST", g.API+"/admin/logout-all", body); r.Status != 400 && r.Status != 404 {
				t.Fatalf("%d %s", r.Status, r.Raw)
			}
		})
	}
}

func TestThrottlePerAddressAcrossUsernames(t *testing.T) {
	g := startGateway(t, "login_throttle {\n max_failures 5\n max_failures_per_address 4\n window 1h\n}", "softphone_api")
	for _, u := range []string{"a1", "a2", "a3", "a4"} {
		g.do("POST", g.API+"/auth/login", `{"username":"`+u+`","password":"x"}`)
	}
	// A spray over usernames from one address is cut off even for a name never tried.
	r := g.do("POST", g.API+"/auth/login", `{"username":"202","password":"secret-202"}`)
	wantError(t, r, 429, "Too many failed login attempts. Try again later")
}

func TestStoreDownFailsClosedAndRecovers(t *testing.T) {
	redis := testenv.StartRedis(t)
	dir := t.TempDir()
	p := startGatewayProc(t, dir, procConfig(t, dir, "store "+redis.URL(), ""))
	g := p.client()
	access, _ := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	loggedOut, _ := g.login("202", "secret-202")
	g.do("POST", g.API+"/auth/logout", "", bearer(loggedOut))

	redis.Stop()
	// The revocation mirror answers until it notices Redis is gone (the closed connection at
	// once, silence within its one-second heartbeat); from then on checks fail closed.
	stopped := time.Now()
	for {
		r := g.do("GET", g.API+"/profile", "", bearer(access))
		if r.Status != 200 {
			wantError(t, r, 503, "Service temporarily unavailable")
			break
		}
		if time.Since(stopped) > 2*time.Second {
			t.Fatal("token checks still answered 2s after Redis died")
		}
		time.Sleep(5 * time.Millisecond)
	}
	wantError(t, g.do("GET", g.API+"/check-media-access", "", bearer(access)), 503, "Service temporarily unavailable")
	wantError(t, g.do("POST", g.API+"/auth/login", `{"username":"201","password":"b749601f329a635a19c4a87bc359be3d"}`), 503, "Service temporarily unavailable")

	redis.Start(t)
	deadline := time.Now().Add(5 * time.Second)
	for g.do("GET", g.API+"/profile", "", bearer(access)).Status != 200 {
		if time.Now().After(deadline) {
			t.Fatal("no recovery after Redis came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
	// Nothing was lost: the revocation made before the outage still holds.
	wantError(t, g.do("GET", g.API+"/profile", "", bearer(loggedOut)), 401, "Unauthorized. Token required")
}
