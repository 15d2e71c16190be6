package caddymodule

import (
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// mediaSite protects /media/* in-process, /fa/* through forward_auth to check-media-access
// on the same server over loopback, and /fal/* through forward_auth with the in-process
// softphone transport, as Caddyfile.example does for recordings.
const mediaSite = `
	handle /media/* {
		softphone_guard
		respond "id={http.auth.user.id} user={http.auth.user.username} role={http.auth.user.role} hdr={header.X-Softphone-Username} query={query}"
	}
	handle /fa/* {
		forward_auth 127.0.0.1:{PORT} {
			uri /pbxcore/api/module-softphone-backend/v1/check-media-access
			copy_headers X-Softphone-User-Id X-Softphone-Username X-Softphone-Role
		}
		respond "fa user={header.X-Softphone-Username} id={header.X-Softphone-User-Id}"
	}
	handle /fal/* {
		forward_auth localhost {
			uri /pbxcore/api/module-softphone-backend/v1/check-media-access
			copy_headers X-Softphone-User-Id X-Softphone-Username X-Softphone-Role
			transport softphone
		}
		respond "fa user={header.X-Softphone-Username} id={header.X-Softphone-User-Id}"
	}
	handle /falogin/* {
		forward_auth localhost {
			uri /pbxcore/api/module-softphone-backend/v1/auth/login
			transport softphone
		}
		respond "reached"
	}
	softphone_api
`

func TestGuardAndForwardAuth(t *testing.T) {
	g := startGateway(t, "", mediaSite)
	access, refresh := g.login("201", "b749601f329a635a19c4a87bc359be3d")
	other, _ := g.login("202", "secret-202")

	t.Run("guard lets a header token through and sets placeholders and headers", func(t *testing.T) {
		r := g.do("GET", g.Base+"/media/rec.wav", "", bearer(access))
		if r.Status != 200 || r.Raw != "id=1 user=201 role=user hdr=201 query=" {
			t.Fatalf("%d %q", r.Status, r.Raw)
		}
	})
	for _, param := range []string{"authorization", "token", "access_token"} {
		t.Run("guard takes ?"+param+"= and strips it before the next handler", func(t *testing.T) {
			r := g.do("GET", g.Base+"/media/rec.wav?x=1&"+param+"="+url.QueryEscape(access), "")
			if r.Status != 200 || r.Raw != "id=1 user=201 role=user hdr=201 query=x=1" {
				t.Fatalf("%d %q", r.Status, r.Raw)
			}
		})
	}
	t.Run("guard takes ?authorization=Bearer%20…", func(t *testing.T) {
		r := g.do("GET", g.Base+"/media/rec.wav?authorization="+url.QueryEscape("Bearer "+access), "")
		if r.Status != 200 {
			t.Fatalf("%d %q", r.Status, r.Raw)
		}
	})
	for _, prefix := range []string{"/fa/", "/fal/"} {
		t.Run(prefix+" forward_auth passes with a header token and copies identity headers", func(t *testing.T) {
			r := g.do("GET", g.Base+prefix+"rec.wav", "", bearer(access))
			if r.Status != 200 || r.Raw != "fa user=201 id=1" {
				t.Fatalf("%d %q", r.Status, r.Raw)
			}
		})
		t.Run(prefix+" forward_auth passes with the token in the original URI's query (audio links)", func(t *testing.T) {
			r := g.do("GET", g.Base+prefix+"rec.wav?authorization="+url.QueryEscape(access), "")
			if r.Status != 200 || r.Raw != "fa user=201 id=1" {
				t.Fatalf("%d %q", r.Status, r.Raw)
			}
		})
		// Identity spoofing: the client's own X-Softphone-* headers never reach the upstream,
		// the check's answer replaces them.
		t.Run(prefix+" forward_auth replaces identity headers the client sent", func(t *testing.T) {
			r := g.do("GET", g.Base+prefix+"rec.wav", "", bearer(access), "X-Softphone-Username: admin", "X-Softphone-User-Id: 0")
			if r.Status != 200 || r.Raw != "fa user=201 id=1" {
				t.Fatalf("%d %q", r.Status, r.Raw)
			}
		})
		// A forged X-Forwarded-Uri carrying a token: forward_auth writes its own, so the
		// client's is never read as the original URI.
		t.Run(prefix+" forward_auth ignores a forged X-Forwarded-Uri", func(t *testing.T) {
			r := g.do("GET", g.Base+prefix+"rec.wav", "", "X-Forwarded-Uri: /x?token="+access, "X-Forwarded-Method: GET")
			if r.Status != 401 || strings.Contains(r.Raw, "user=") {
				t.Fatalf("%d %q", r.Status, r.Raw)
			}
		})
	}
	t.Run("a refusal through the softphone transport is the one a loopback upstream gives", func(t *testing.T) {
		for _, h := range [][]string{nil, {bearer(refresh)}} {
			tcp := g.do("GET", g.Base+"/fa/rec.wav", "", h...)
			local := g.do("GET", g.Base+"/fal/rec.wav", "", h...)
			if local.Status != tcp.Status || local.str("error") != tcp.str("error") || local.Body["success"] != false {
				t.Fatalf("transport %d %s, loopback %d %s", local.Status, local.Raw, tcp.Status, tcp.Raw)
			}
			for _, k := range []string{"Www-Authenticate", "Content-Type", "Cache-Control", "X-Content-Type-Options"} {
				if local.Header.Get(k) != tcp.Header.Get(k) || local.Header.Get(k) == "" {
					t.Fatalf("%s: transport %q, loopback %q", k, local.Header.Get(k), tcp.Header.Get(k))
				}
			}
		}
	})
	t.Run("the softphone transport refuses any path but check-media-access", func(t *testing.T) {
		r := g.do("GET", g.Base+"/falogin/x", "", bearer(access))
		if r.Status != 502 || r.Raw == "reached" {
			t.Fatalf("%d %q", r.Status, r.Raw)
		}
	})

	t.Run("a forward_auth subrequest gets an empty 200 (so its pooled connection is reused)", func(t *testing.T) {
		r := g.do("GET", g.API+"/check-media-access", "", bearer(access), "X-Forwarded-Method: GET", "X-Forwarded-Uri: /fa/rec.wav")
		if r.Status != 200 || r.Raw != "" || r.Header.Get("X-Softphone-Username") != "201" {
			t.Fatalf("%d %q %v", r.Status, r.Raw, r.Header)
		}
	})

	key := g.signingKey()
	now := time.Now().Unix()
	hs256 := map[string]any{"alg": "HS256", "typ": "JWT"}
	claims := func(exp int64) map[string]any {
		return map[string]any{"sub": 1, "username": "201", "role": "user", "iat": now - 7200, "exp": exp, "type": "access"}
	}
	expired := forge(hs256, claims(now-3600), key)
	wrongKey := forge(hs256, claims(now+3600), []byte(strings.Repeat("k", 64)))

	denied := []struct {
		name    string
		query   string
		headers []string
		status  int
	}{
		{"no token", "", nil, 401},
		{"expired token", "", []string{bearer(expired)}, 401},
		{"expired token in the query", "?authorization=" + expired, nil, 401},
		{"token signed with another key", "", []string{bearer(wrongKey)}, 401},
		{"garbage token", "?token=abc", nil, 401},
		{"refresh token", "?token=" + refresh, nil, 403},
		{"refresh token in header", "", []string{bearer(refresh)}, 403},
		{"different tokens in header and query", "?token=" + access, []string{bearer(other)}, 400},
		{"different tokens twice in the query", "?token=" + access + "&access_token=" + other, nil, 400},
		{"bad characters", "?token=" + url.QueryEscape("a b<c>"), nil, 401},
		{"bad query encoding", "?token=%zz", nil, 401},
		{"oversized", "?token=" + strings.Repeat("x", 4000), nil, 401},
	}
	for _, prefix := range []string{"/media/", "/fa/", "/fal/"} {
		for _, c := range denied {
			t.Run(prefix+" refuses "+c.name, func(t *testing.T) {
				r := g.do("GET", g.Base+prefix+"rec.wav"+c.query, "", c.headers...)
				if r.Status != c.status {
					t.Fatalf("status %d, want %d: %s", r.Status, c.status, r.Raw)
				}
				if strings.Contains(r.Raw, "user=") {
					t.Fatalf("protected content served: %s", r.Raw)
				}
			})
		}
	}

	t.Run("after logout both guards refuse", func(t *testing.T) {
		if r := g.do("POST", g.API+"/auth/logout", "", bearer(access)); r.Status != 200 {
			t.Fatal(r.Raw)
		}
		for _, p := range []string{"/media/rec.wav", "/fa/rec.wav", "/fal/rec.wav"} {
			if r := g.do("GET", g.Base+p+"?token="+access, ""); r.Status != 401 {
				t.Fatalf("%s after logout: %d %s", p, r.Status, r.Raw)
			}
		}
	})

	log, _ := os.ReadFile(filepath.Join(g.DataDir, "security.log"))
	if strings.Contains(string(log), access) || strings.Contains(string(log), refresh) {
		t.Fatal("a token reached security.log")
	}
	if !strings.Contains(string(log), "[MEDIA_ACCESS_DENIED]") || !strings.Contains(string(log), "[MEDIA_ACCESS_GRANTED]") {
		t.Fatalf("media events missing:\n%s", log)
	}
}
