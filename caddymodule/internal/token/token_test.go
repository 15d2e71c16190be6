package token

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var testKey = []byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")

func issuer(t testing.TB, now time.Time) *Issuer {
	t.Helper()
	i, err := NewIssuer(testKey, Options{Leeway: 5 * time.Second, Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	return i
}

// sign makes a token from raw header and claims JSON with HMAC-SHA256 under key.
func sign(header, claims string, key []byte) string {
	u := base64.RawURLEncoding.EncodeToString([]byte(header)) + "." + base64.RawURLEncoding.EncodeToString([]byte(claims))
	m := hmac.New(sha256.New, key)
	m.Write([]byte(u))
	return u + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

var t0 = time.Unix(1_900_000_000, 0)

func TestRoundTripAndClaims(t *testing.T) {
	iss := issuer(t, t0)
	p, err := iss.IssuePair(Identity{UserID: "7", Username: "201", Role: "user"})
	if err != nil {
		t.Fatal(err)
	}
	payload, _ := base64.RawURLEncoding.DecodeString(strings.Split(p.Access, ".")[1])
	var m map[string]any
	json.Unmarshal(payload, &m)
	for _, k := range []string{"sub", "username", "role", "iat", "exp", "type", "jti", "sid"} {
		if _, ok := m[k]; !ok {
			t.Errorf("claim %s missing: %s", k, payload)
		}
	}
	if m["sub"] != 7.0 || m["exp"].(float64)-m["iat"].(float64) != 3600 || m["type"] != "access" {
		t.Errorf("claims %s", payload)
	}
	header, _ := base64.RawURLEncoding.DecodeString(strings.Split(p.Access, ".")[0])
	if string(header) != `{"alg":"HS256","typ":"JWT"}` {
		t.Errorf("header %s", header)
	}
	c, err := iss.Verify(p.Access, Access)
	if err != nil || c.Username != "201" || c.Subject != "7" || c.Session != p.AccessClaims.Session {
		t.Fatalf("verify access: %+v %v", c, err)
	}
	r, err := iss.Verify(p.Refresh, Refresh)
	if err != nil || r.SessionID() != c.SessionID() || r.ExpiresAt-r.IssuedAt != 30*24*3600 {
		t.Fatalf("verify refresh: %+v %v", r, err)
	}
	if p.AccessClaims.ID == p.RefreshClaims.ID {
		t.Fatal("access and refresh share a jti")
	}
}

// A token minted as the PHP module (firebase/php-jwt) does verifies, and its access and
// refresh tokens of one login share a session, so logout revokes both.
func TestPHPTokens(t *testing.T) {
	iss := issuer(t, t0)
	iat := t0.Unix() - 10
	access := sign(`{"typ":"JWT","alg":"HS256"}`, `{"sub":1,"username":"201","role":"user","iat":`+itoa(iat)+`,"exp":`+itoa(iat+3600)+`,"type":"access"}`, testKey)
	refresh := sign(`{"typ":"JWT","alg":"HS256"}`, `{"sub":1,"username":"201","role":"user","iat":`+itoa(iat)+`,"exp":`+itoa(iat+2592000)+`,"type":"refresh"}`, testKey)
	a, err := iss.Verify(access, Access)
	if err != nil {
		t.Fatalf("PHP access token: %v", err)
	}
	r, err := iss.Verify(refresh, Refresh)
	if err != nil {
		t.Fatalf("PHP refresh token: %v", err)
	}
	if a.SessionID() != r.SessionID() || !strings.HasPrefix(a.SessionID(), "legacy:") {
		t.Fatalf("sessions %q %q", a.SessionID(), r.SessionID())
	}
	// sub as a string verifies too.
	s := sign(`{"alg":"HS256","typ":"JWT"}`, `{"sub":"1","username":"201","role":"user","iat":`+itoa(iat)+`,"exp":`+itoa(iat+60)+`,"type":"access"}`, testKey)
	if _, err := iss.Verify(s, Access); err != nil {
		t.Fatalf("string sub: %v", err)
	}
}

func itoa(n int64) string { b, _ := json.Marshal(n); return string(b) }

func TestForgedTokens(t *testing.T) {
	iss := issuer(t, t0)
	now := t0.Unix()
	good := func(extra string) string {
		return `{"sub":1,"username":"201","role":"user","iat":` + itoa(now) + `,"exp":` + itoa(now+60) + `,"type":"access"` + extra + `}`
	}
	hs := `{"alg":"HS256","typ":"JWT"}`
	valid := sign(hs, good(""), testKey)
	parts := strings.Split(valid, ".")
	noneTok := func(alg string) string {
		return base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"`+alg+`","typ":"JWT"}`)) + "." + parts[1] + "."
	}
	hs512, _ := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims{"sub": 1, "username": "201", "role": "user", "iat": now, "exp": now + 60, "type": "access"}).SignedString(testKey)
	cases := []struct {
		name string
		tok  string
		want error
	}{
		{"valid", valid, nil},
		{"alg none", noneTok("none"), ErrInvalid},
		{"alg NONE", noneTok("NONE"), ErrInvalid},
		{"HS512 with the same key", hs512, ErrInvalid},
		{"RS256 header, HMAC signature (key confusion)", sign(`{"alg":"RS256","typ":"JWT"}`, good(""), testKey), ErrInvalid},
		{"wrong key", sign(hs, good(""), []byte(strings.Repeat("x", 64))), ErrInvalid},
		{"tampered payload", parts[0] + "." + base64.RawURLEncoding.EncodeToString([]byte(strings.Replace(good(""), `"sub":1`, `"sub":2`, 1))) + "." + parts[2], ErrInvalid},
		{"expired", sign(hs, `{"sub":1,"username":"201","role":"user","iat":`+itoa(now-100)+`,"exp":`+itoa(now-10)+`,"type":"access"}`, testKey), ErrExpired},
		{"expired within leeway", sign(hs, `{"sub":1,"username":"201","role":"user","iat":`+itoa(now-100)+`,"exp":`+itoa(now-3)+`,"type":"access"}`, testKey), nil},
		{"no exp", sign(hs, `{"sub":1,"username":"201","role":"user","iat":`+itoa(now)+`,"type":"access"}`, testKey), ErrInvalid},
		{"iat in the future", sign(hs, `{"sub":1,"username":"201","role":"user","iat":`+itoa(now+60)+`,"exp":`+itoa(now+120)+`,"type":"access"}`, testKey), ErrInvalid},
		{"refresh as access", sign(hs, strings.Replace(good(""), `"access"`, `"refresh"`, 1), testKey), ErrWrongType},
		{"unknown type", sign(hs, strings.Replace(good(""), `"access"`, `"admin"`, 1), testKey), ErrInvalid},
		{"empty username", sign(hs, strings.Replace(good(""), `"201"`, `""`, 1), testKey), ErrInvalid},
		{"sub of wrong type", sign(hs, strings.Replace(good(""), `"sub":1`, `"sub":true`, 1), testKey), ErrMalformed},
		{"exp of wrong type", sign(hs, strings.Replace(good(""), `"exp":`+itoa(now+60), `"exp":"soon"`, 1), testKey), ErrMalformed},
		{"oversized", valid + strings.Repeat("A", MaxLen), ErrMalformed},
		{"padding", parts[0] + "=." + parts[1] + "." + parts[2], ErrMalformed},
		{"not base64url", parts[0] + "." + strings.ReplaceAll(parts[1], "e", "+") + "." + parts[2], ErrMalformed},
		{"two segments", parts[0] + "." + parts[1], ErrMalformed},
		{"four segments", valid + ".x", ErrMalformed},
		{"empty", "", ErrMalformed},
		{"JSON array payload", sign(hs, `[1,2]`, testKey), ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			claims, err := iss.Verify(c.tok, Access)
			if !errors.Is(err, c.want) && !(c.want == nil && err == nil) {
				t.Fatalf("err %v, want %v", err, c.want)
			}
			if c.want == ErrWrongType && (claims == nil || claims.Username != "201") {
				t.Fatal("a wrong-type token must still return its claims for logging")
			}
		})
	}
}

func TestBearer(t *testing.T) {
	tok := "eyJ.abc-_~+/.sig=="
	for h, want := range map[string]error{
		"Bearer " + tok:      nil,
		"bearer " + tok:      nil,
		"BEARER   " + tok:    nil,
		"":                   ErrNoToken,
		"Bearer ":            ErrNoToken,
		"Bearer":             ErrNotBearer,
		"Basic dXNlcjpwYXNz": ErrNotBearer,
		"Bearer a, Bearer b": ErrTwoTokens,
		"Bearer a b":         ErrTwoTokens,
		"Bearer a<b":         ErrBadCharset,
		"Bearer ===":         ErrBadCharset,
		"Bearer " + strings.Repeat("a", MaxLen+100): ErrMalformed,
	} {
		got, err := FromHeader(h)
		if !errors.Is(err, want) || (want == nil && got != tok) {
			t.Errorf("FromHeader(%.40q) = %q, %v; want %v", h, got, err, want)
		}
	}
	if got, err := FromQueryValue("Bearer " + tok); err != nil || got != tok {
		t.Errorf("query with Bearer: %q %v", got, err)
	}
	if _, err := FromQueryValue("a b"); err == nil {
		t.Error("query value with a space accepted")
	}
}

// Every byte is judged as RFC 6750 §2.1's b64token grammar says, written out here
// independently of the look-up table checkB64Token uses.
func TestB64TokenCharset(t *testing.T) {
	const b64token = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/"
	for c := range 256 {
		tok := "a" + string(rune(c)) + "b"
		if c >= 0x80 {
			tok = "a" + string([]byte{byte(c)}) + "b"
		}
		_, err := checkB64Token(tok)
		var want error
		switch {
		case strings.IndexByte(b64token, byte(c)) >= 0:
		case c == ',' || c == ' ':
			want = ErrTwoTokens
		default:
			want = ErrBadCharset
		}
		if !errors.Is(err, want) {
			t.Errorf("byte %#02x: %v, want %v", c, err, want)
		}
	}
	for tok, want := range map[string]error{"ab==": nil, "a=b": ErrBadCharset, "=": ErrBadCharset} {
		if _, err := checkB64Token(tok); !errors.Is(err, want) {
			t.Errorf("%q: %v, want %v", tok, err, want)
		}
	}
}

func TestKeyFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "sub", "secret.key")
	k1, err := LoadOrCreateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(k1) != 64 || strings.Trim(string(k1), "0123456789abcdef") != "" {
		t.Fatalf("key %q is not 64 hex characters", k1)
	}
	st, _ := os.Stat(path)
	if st.Mode().Perm() != 0o600 {
		t.Fatalf("mode %v", st.Mode().Perm())
	}
	k2, _ := LoadOrCreateKey(path)
	if string(k1) != string(k2) {
		t.Fatal("the key changed on the second load")
	}
	short := filepath.Join(dir, "short.key")
	os.WriteFile(short, []byte("abc\n"), 0o600)
	if _, err := LoadOrCreateKey(short); err == nil || !strings.Contains(err.Error(), "need at least") {
		t.Fatalf("short key: %v", err)
	}
	if b, _ := os.ReadFile(short); string(b) != "abc\n" {
		t.Fatal("a short key file was replaced")
	}
	spaced := filepath.Join(dir, "spaced.key")
	os.WriteFile(spaced, []byte("  "+string(testKey)+"\n\n"), 0o600)
	if k, err := LoadOrCreateKey(spaced); err != nil || string(k) != string(testKey) {
		t.Fatalf("trimmed key: %q %v", k, err)
	}
	if _, err := LoadOrCreateKey("/proc/no/such/dir/secret.key"); err == nil {
		t.Fatal("an unwritable folder gave no error")
	}
}

// Two gateways starting at once end with one key: racing goroutines, and racing processes.
func TestKeyCreationRace(t *testing.T) {
	if p := os.Getenv("TOKEN_KEY_RACE"); p != "" {
		k, err := LoadOrCreateKey(p)
		if err != nil {
			os.Exit(1)
		}
		os.Stdout.Write(k)
		os.Exit(0)
	}
	path := filepath.Join(t.TempDir(), "secret.key")
	var wg sync.WaitGroup
	keys := make([]string, 16)
	for i := range keys {
		wg.Go(func() {
			k, err := LoadOrCreateKey(path)
			if err != nil {
				t.Error(err)
			}
			keys[i] = string(k)
		})
	}
	outs := make([][]byte, 4)
	for i := range outs {
		wg.Go(func() {
			cmd := exec.Command(os.Args[0], "-test.run", "^TestKeyCreationRace$")
			cmd.Env = append(os.Environ(), "TOKEN_KEY_RACE="+path)
			outs[i], _ = cmd.Output()
		})
	}
	wg.Wait()
	for i, k := range keys {
		if k != keys[0] {
			t.Fatalf("goroutine %d got another key", i)
		}
	}
	for i, o := range outs {
		if string(o) != keys[0] {
			t.Fatalf("process %d got %q, want the shared key", i, o)
		}
	}
}

func TestRotationIDsAreDeterministic(t *testing.T) {
	iss := issuer(t, t0)
	if iss.DeriveID("refresh", "a") != iss.DeriveID("refresh", "a") || iss.DeriveID("refresh", "a") == iss.DeriveID("access", "a") {
		t.Fatal("DeriveID is not a keyed function of label and input")
	}
	id := Identity{UserID: "1", Username: "201", Role: "user"}
	a1, _, _ := iss.IssueAt(id, Refresh, "sid", "jti", t0)
	a2, _, _ := iss.IssueAt(id, Refresh, "sid", "jti", t0)
	if a1 != a2 {
		t.Fatal("the same rotation minted two different tokens")
	}
}

func FuzzVerify(f *testing.F) {
	iss := issuer(f, t0)
	p, _ := iss.IssuePair(Identity{UserID: "1", Username: "201", Role: "user"})
	for _, s := range []string{p.Access, p.Refresh, "", "a.b.c", "eyJhbGciOiJub25lIn0.e30.", strings.Repeat(".", 10)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := iss.Verify(s, Access)
		if err == nil && (c.Username == "" || c.Type != Access) {
			t.Fatalf("accepted %q with claims %+v", s, c)
		}
		if err == nil && s != p.Access {
			// Anything else that verifies must carry a valid signature: re-signing its
			// payload under the key reproduces it exactly.
			parts := strings.Split(s, ".")
			m := hmac.New(sha256.New, testKey)
			m.Write([]byte(parts[0] + "." + parts[1]))
			if base64.RawURLEncoding.EncodeToString(m.Sum(nil)) != parts[2] {
				t.Fatalf("accepted %q without our signature", s)
			}
		}
	})
}

func FuzzFromHeader(f *testing.F) {
	for _, s := range []string{"Bearer abc", "bearer a.b.c", "Bearer a, Bearer b", "Basic x", "", "Bearer ="} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		tok, err := FromHeader(h)
		if err != nil {
			return
		}
		if tok == "" || strings.ContainsAny(tok, " ,\t\r\n") || len(tok) > MaxLen+64 {
			t.Fatalf("FromHeader(%q) = %q", h, tok)
		}
	})
}

func BenchmarkIssuePair(b *testing.B) {
	iss := issuer(b, time.Now())
	b.ReportAllocs()
	for b.Loop() {
		iss.IssuePair(Identity{UserID: "1", Username: "201", Role: "user"})
	}
}

func BenchmarkVerify(b *testing.B) {
	iss := issuer(b, time.Now())
	p, _ := iss.IssuePair(Identity{UserID: "1", Username: "201", Role: "user"})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := iss.Verify(p.Access, Access); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkVerifyParallel is the cached check from every core at once, as check-media-access
// and softphone_guard run it.
func BenchmarkVerifyParallel(b *testing.B) {
	iss := issuer(b, time.Now())
	p, _ := iss.IssuePair(Identity{UserID: "1", Username: "201", Role: "user"})
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := iss.Verify(p.Access, Access); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// The verified-token cache never outlives a token, never changes its type, and never holds a
// token that failed.
func TestVerifiedCache(t *testing.T) {
	now := t0
	iss, _ := NewIssuer(testKey, Options{AccessTTL: time.Minute, Now: func() time.Time { return now }})
	p, _ := iss.IssuePair(Identity{UserID: "1", Username: "201", Role: "user"})
	if _, err := iss.Verify(p.Access, Access); err != nil {
		t.Fatal(err)
	}
	if _, err := iss.Verify(p.Access, Refresh); !errors.Is(err, ErrWrongType) {
		t.Fatalf("cached token as refresh: %v", err)
	}
	now = t0.Add(2 * time.Minute)
	if _, err := iss.Verify(p.Access, Access); !errors.Is(err, ErrExpired) {
		t.Fatalf("cached token after expiry: %v", err)
	}
	forged := p.Refresh[:len(p.Refresh)-4] + "AAAA"
	iss.Verify(forged, Refresh)
	if iss.cache.get(forged) != nil {
		t.Fatal("a forged token entered the cache")
	}
	small := newVerifiedCache(4)
	for i := range 10 {
		small.put(fmt.Sprint(i), &Claims{ExpiresAt: t0.Unix() + 60}, t0)
	}
	if int(small.n.Load()) > 4 {
		t.Fatalf("cache grew to %d, max 4", int(small.n.Load()))
	}
	var count int
	small.entries.Range(func(any, any) bool { count++; return true })
	if count != int(small.n.Load()) {
		t.Fatalf("cache counts %d entries, holds %d", int(small.n.Load()), count)
	}
}

func BenchmarkVerifyUncached(b *testing.B) {
	iss := issuer(b, time.Now())
	iss.cache = nil
	p, _ := iss.IssuePair(Identity{UserID: "1", Username: "201", Role: "user"})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := iss.Verify(p.Access, Access); err != nil {
			b.Fatal(err)
		}
	}
}

// FuzzDecodeClaims holds the hand-written claims reader to encoding/json.
func FuzzDecodeClaims(f *testing.F) {
	for _, s := range []string{
		`{"sub":1,"username":"201","role":"user","iat":1,"exp":2,"type":"access","jti":"a","sid":"b"}`,
		`{"sub":"1","username":"201"}`, `{}`, ` { "exp" : 5 , "exp":6 } `, `{"sub":01}`, `{"iat":1.5}`,
		`{"username":"a\"b"}`, `{"x":{"y":1}}`, `{"sub":-3}`, `{"role":null}`, `{"exp":"1"}`, `[1]`, `{"a":1}x`,
		`{"sub":99999999999999999999}`, `{"username":"é"}`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var fast, std Claims
		errFast := decodeClaims([]byte(s), &fast)
		errStd := json.Unmarshal([]byte(s), &std)
		if (errFast == nil) != (errStd == nil) {
			t.Fatalf("%q: fast err %v, encoding/json err %v", s, errFast, errStd)
		}
		if errStd == nil && fast != std {
			t.Fatalf("%q: fast %+v, encoding/json %+v", s, fast, std)
		}
	})
}

// FuzzFastMatchesParser holds the fast path to golang-jwt's parser: any payload, signed under
// our key with either known header (or signed wrongly), must get the same verdict and the
// same claims from both.
func FuzzFastMatchesParser(f *testing.F) {
	now := time.Unix(1_900_000_000, 0)
	for _, s := range []string{
		`{"sub":1,"username":"201","role":"user","iat":1900000000,"exp":1900003600,"type":"access"}`,
		`{"sub":"1","username":"201","iat":1900000100,"exp":1900003600,"type":"access"}`,
		`{"sub":1,"username":"201","iat":1899999000,"exp":1899999999,"type":"access"}`,
		`{"sub":1,"username":"","exp":1900003600,"type":"access"}`, `{"exp":1.5}`, `{"EXP":1900003600}`, `[]`, `x`,
	} {
		f.Add(s, true, true)
		f.Add(s, false, false)
	}
	f.Fuzz(func(t *testing.T, payload string, php, goodSig bool) {
		header := `{"alg":"HS256","typ":"JWT"}`
		if php {
			header = `{"typ":"JWT","alg":"HS256"}`
		}
		key := testKey
		if !goodSig {
			key = []byte(strings.Repeat("z", 64))
		}
		tok := sign(header, payload, key)
		iss, _ := NewIssuer(testKey, Options{Leeway: 5 * time.Second, Now: func() time.Time { return now }})
		iss.cache = nil
		fastClaims, fastErr, handled := iss.fastVerify(tok)
		if !handled {
			return // the parser decides it anyway
		}
		ref := new(Claims)
		_, refErr := iss.parser.ParseWithClaims(tok, ref, func(*jwt.Token) (any, error) { return testKey, nil })
		if (fastErr == nil) != (refErr == nil) {
			t.Fatalf("%s: fast %v, golang-jwt %v", payload, fastErr, refErr)
		}
		if errors.Is(refErr, jwt.ErrTokenExpired) != errors.Is(fastErr, ErrExpired) {
			t.Fatalf("%s: expiry verdicts differ: fast %v, golang-jwt %v", payload, fastErr, refErr)
		}
		if fastErr == nil && *fastClaims != *ref {
			t.Fatalf("%s: claims differ: %+v vs %+v", payload, fastClaims, ref)
		}
	})
}
