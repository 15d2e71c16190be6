package digest

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"strings"
	"testing"
	"time"
)

var t0 = time.Unix(1_900_000_000, 0)

func at(d time.Duration) func() time.Time { return func() time.Time { return t0.Add(d) } }

// tokenChar reports whether c may appear in an RFC 3261 token (and so unquoted anywhere).
func tokenChar(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-.!%*_+`'~", c) >= 0
}

// forge builds a nonce with a chosen issue time, signed under secret — what a sidecar whose
// clock is off (or an attacker holding the secret) would make.
func forge(secret string, issued time.Time) string {
	n := NewNonces([]byte(secret), time.Minute, func() time.Time { return issued })
	return n.Make()
}

func TestMakeGivesUniqueTokenSafeNonces(t *testing.T) {
	n := NewNonces([]byte("secret-one"), 5*time.Minute, at(0))
	seen := map[string]bool{}
	for range 1000 {
		nonce := n.Make()
		if len(nonce) != nonceLen {
			t.Fatalf("nonce %q has length %d, want %d", nonce, len(nonce), nonceLen)
		}
		for i := 0; i < len(nonce); i++ {
			if !tokenChar(nonce[i]) {
				t.Fatalf("nonce %q has %q, not a token character", nonce, nonce[i])
			}
		}
		if seen[nonce] {
			t.Fatalf("nonce %q made twice within one second: not unpredictable", nonce)
		}
		seen[nonce] = true
	}
}

func TestCheck(t *testing.T) {
	const ttl = 5 * time.Minute
	nonce := NewNonces([]byte("secret-one"), ttl, at(0)).Make()
	raw, _ := base64.RawURLEncoding.DecodeString(nonce)
	cases := []struct {
		name  string
		nonce string
		at    time.Duration // checking clock, relative to issue
		want  error
	}{
		{"fresh", nonce, 0, nil},
		{"at its TTL still fresh", nonce, ttl, nil},
		{"past its TTL is stale", nonce, ttl + time.Second, ErrStale},
		{"a day old is stale", nonce, 24 * time.Hour, ErrStale},
		{"issued by a clock slightly ahead", nonce, -clockSkew, nil},
		{"issued far in the future is stale", nonce, -time.Hour, ErrStale},
		{"genuine but issued at time zero is stale", forge("secret-one", time.Unix(0, 0)), 0, ErrStale},
		{"genuine but issued at the end of time is stale", forge("secret-one", time.Unix(1<<62, 0)), 0, ErrStale},
		{"empty", "", 0, ErrInvalid},
		{"garbage", "not-a-nonce", 0, ErrInvalid},
		{"one character short", nonce[:nonceLen-1], 0, ErrInvalid},
		{"one character long", nonce + "A", 0, ErrInvalid},
		{"oversized", strings.Repeat("A", 1<<16), 0, ErrInvalid},
		{"bad base64 of the right length", strings.Repeat("!", nonceLen), 0, ErrInvalid},
		{"standard base64 alphabet character", put(nonce, 10, '+'), 0, ErrInvalid},
		{"padding", nonce[:nonceLen-1] + "=", 0, ErrInvalid},
		{"random part tampered", flip(nonce, 14), 0, ErrInvalid},
		{"time tampered to look fresh", retime(raw, t0.Add(time.Second)), 0, ErrInvalid},
		{"MAC tampered", flip(nonce, nonceLen-3), 0, ErrInvalid},
		{"MAC zeroed", zeroMAC(raw), 0, ErrInvalid},
		{"another secret's nonce", NewNonces([]byte("secret-two"), ttl, at(0)).Make(), 0, ErrInvalid},
		{"another secret's stale nonce is invalid, not stale", NewNonces([]byte("secret-two"), ttl, at(-time.Hour)).Make(), 0, ErrInvalid},
		{"quoted", `"` + nonce[1:nonceLen-1] + `"`, 0, ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := NewNonces([]byte("secret-one"), ttl, at(c.at))
			if err := n.Check(c.nonce); !errors.Is(err, c.want) {
				t.Fatalf("Check = %v, want %v", err, c.want)
			}
		})
	}
}

// flip changes the character at i to another base64url character.
func flip(s string, i int) string {
	b := []byte(s)
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func put(s string, i int, c byte) string {
	b := []byte(s)
	b[i] = c
	return string(b)
}

func retime(raw []byte, issued time.Time) string {
	b := append([]byte(nil), raw...)
	binary.BigEndian.PutUint64(b[:8], uint64(issued.Unix()))
	return base64.RawURLEncoding.EncodeToString(b)
}

func zeroMAC(raw []byte) string {
	b := append([]byte(nil), raw...)
	clear(b[20:])
	return base64.RawURLEncoding.EncodeToString(b)
}

func TestNoncesAgreeAcrossInstancesWithOneSecret(t *testing.T) {
	// Several sidecars behind one address: any of them checks what another made.
	a := NewNonces([]byte("shared"), time.Minute, at(0))
	b := NewNonces([]byte("shared"), time.Minute, at(2*time.Second))
	if err := b.Check(a.Make()); err != nil {
		t.Fatalf("sidecar b refused sidecar a's nonce: %v", err)
	}
}

func TestEmptySecretIsRandomNotEmpty(t *testing.T) {
	// A nonce signed with an empty key could be forged by anyone.
	forged := NewNonces([]byte{}, time.Minute, at(0))
	forged.secret = nil
	if err := NewNonces(nil, time.Minute, at(0)).Check(forged.Make()); !errors.Is(err, ErrInvalid) {
		t.Fatalf("a nonce MACed with an empty key was accepted: %v", err)
	}
	n := NewNonces(nil, time.Minute, at(0))
	if err := n.Check(n.Make()); err != nil {
		t.Fatalf("own nonce refused: %v", err)
	}
}

func TestTTL(t *testing.T) {
	if got := NewNonces([]byte("s"), 42*time.Second, nil).TTL(); got != 42*time.Second {
		t.Fatalf("TTL = %s", got)
	}
}

func TestChallenge(t *testing.T) {
	cases := []struct {
		name                    string
		realm, nonce, algorithm string
		stale                   bool
		want                    string
	}{
		{"SHA-256", "pbx.example.com", "abc", "SHA-256", false,
			`Digest realm="pbx.example.com", nonce="abc", algorithm=SHA-256, qop="auth"`},
		{"MD5 stale", "pbx", "abc", "MD5", true,
			`Digest realm="pbx", nonce="abc", algorithm=MD5, qop="auth", stale=true`},
		{"algorithm in canonical case", "pbx", "n", "sha-256", false,
			`Digest realm="pbx", nonce="n", algorithm=SHA-256, qop="auth"`},
		{"quotes and backslashes escaped", `a"b\c`, `n"`, "MD5", false,
			`Digest realm="a\"b\\c", nonce="n\"", algorithm=MD5, qop="auth"`},
		// Header injection: a realm taken from a To host must not start a new header line.
		{"CR LF in the realm cannot add a header", "pbx\r\nX-Evil: 1", "n", "MD5", false,
			`Digest realm="pbxX-Evil: 1", nonce="n", algorithm=MD5, qop="auth"`},
		{"control characters dropped", "p\x00b\x7fx\t", "n", "MD5", false,
			`Digest realm="pbx", nonce="n", algorithm=MD5, qop="auth"`},
		// Parameter injection through the one unquoted value.
		{"algorithm cannot add a parameter", "pbx", "n", `MD5, stale=true, opaque="x"`, false,
			`Digest realm="pbx", nonce="n", algorithm=MD5staletrueopaquex, qop="auth"`},
		{"empty realm", "", "n", "MD5", false,
			`Digest realm="", nonce="n", algorithm=MD5, qop="auth"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := string(AppendChallenge(nil, c.realm, c.nonce, c.algorithm, c.stale)); got != c.want {
				t.Fatalf("Challenge =\n %s\nwant\n %s", got, c.want)
			}
		})
	}
}

func TestParseNC(t *testing.T) {
	good := []struct {
		in   string
		want uint64
	}{
		{"00000001", 1}, {"0000000a", 10}, {"0000000A", 10}, {"000000ff", 255},
		{"FFFFFFFF", 0xffffffff}, {"00000000", 0}, {"12345678", 0x12345678},
	}
	for _, c := range good {
		if got, err := ParseNC(c.in); err != nil || got != c.want {
			t.Errorf("ParseNC(%q) = %d, %v; want %d", c.in, got, err, c.want)
		}
	}
	bad := []string{
		"", "1", "0000001", "000000001", "0000000g", "-0000001", "+0000001", " 0000001",
		"0000001 ", "0x000001", "0000_001", "0000000\x00", "１２３４５６７８"[:8], strings.Repeat("0", 1<<12),
	}
	for _, in := range bad {
		if _, err := ParseNC(in); !errors.Is(err, ErrInvalid) {
			t.Errorf("ParseNC(%q) = %v, want ErrInvalid", in, err)
		}
	}
}

func FuzzCheck(f *testing.F) {
	// The one genuine nonce, built deterministically so that every fuzz worker agrees on it:
	// issued at t0, random part zero, MAC under the secret.
	n := NewNonces([]byte("fuzz-secret"), time.Minute, at(0))
	var raw [nonceRaw]byte
	binary.BigEndian.PutUint64(raw[:8], uint64(t0.Unix()))
	n.mac((*[16]byte)(raw[20:]), raw[:20], "")
	good := base64.RawURLEncoding.EncodeToString(raw[:])
	if n.Check(good) != nil {
		f.Fatal("the hand-built nonce does not check")
	}
	for _, s := range []string{good, "", "A", strings.Repeat("A", nonceLen), flip(good, 3), good + "=", "\x00"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		err := n.Check(s)
		if err != nil && !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrStale) {
			t.Fatalf("Check(%q) = %v, not one of the sentinels", s, err)
		}
		if err == nil || errors.Is(err, ErrStale) {
			// Only a genuine nonce gets past the MAC; it must be the canonical encoding.
			raw, derr := base64.RawURLEncoding.Strict().DecodeString(s)
			if derr != nil || base64.RawURLEncoding.EncodeToString(raw) != s {
				t.Fatalf("Check(%q) = %v for a non-canonical encoding", s, err)
			}
			if err == nil && s != good {
				t.Fatalf("the fuzzer forged a nonce: %q", s)
			}
		}
	})
}

func FuzzChallenge(f *testing.F) {
	f.Add("pbx", "n", "MD5", false)
	f.Add("a\"b\\c\r\n", "\x00", "SHA-256, x=y", true)
	f.Add("0", "\x9c", "0", false) // invalid UTF-8 passes through byte for byte
	f.Fuzz(func(t *testing.T, realm, nonce, alg string, stale bool) {
		got := string(AppendChallenge(nil, realm, nonce, alg, stale))
		for i := 0; i < len(got); i++ {
			if c := got[i]; c < 0x20 || c == 0x7f {
				t.Fatalf("control character %q in %q", c, got)
			}
		}
		// The quoted realm reads back as the realm without its control characters.
		rest, ok := strings.CutPrefix(got, `Digest realm="`)
		if !ok {
			t.Fatalf("no realm first: %q", got)
		}
		r, rest := unquote(t, rest)
		if want := dropCTL(realm); r != want {
			t.Fatalf("realm read back as %q, want %q", r, want)
		}
		rest, ok = strings.CutPrefix(rest, `, nonce="`)
		if !ok {
			t.Fatalf("no nonce second: %q", got)
		}
		nc, rest := unquote(t, rest)
		if want := dropCTL(nonce); nc != want {
			t.Fatalf("nonce read back as %q, want %q", nc, want)
		}
		rest, ok = strings.CutPrefix(rest, `, algorithm=`)
		if !ok {
			t.Fatalf("no algorithm third: %q", got)
		}
		tok, rest, _ := strings.Cut(rest, ",")
		for i := 0; i < len(tok); i++ {
			if !tokenChar(tok[i]) {
				t.Fatalf("algorithm %q is not a token", tok)
			}
		}
		want := ` qop="auth"`
		if stale {
			want += ", stale=true"
		}
		if rest != want {
			t.Fatalf("tail %q, want %q", rest, want)
		}
	})
}

// unquote reads a quoted-string body up to its closing quote.
func unquote(t *testing.T, s string) (string, string) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch s[i] {
		case '\\':
			i++
			if i == len(s) {
				t.Fatalf("dangling backslash in %q", s)
			}
			b.WriteByte(s[i])
		case '"':
			return b.String(), s[i+1:]
		default:
			b.WriteByte(s[i])
		}
	}
	t.Fatalf("unterminated quoted string %q", s)
	return "", ""
}

// dropCTL removes control bytes, leaving any other byte (valid UTF-8 or not) alone.
func dropCTL(s string) string {
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x20 && c != 0x7f {
			b = append(b, c)
		}
	}
	return string(b)
}

func BenchmarkMake(b *testing.B) {
	n := NewNonces([]byte("secret"), time.Minute, nil)
	b.ReportAllocs()
	for b.Loop() {
		n.Make()
	}
}

func BenchmarkCheck(b *testing.B) {
	n := NewNonces([]byte("secret"), time.Minute, nil)
	nonce := n.Make()
	b.ReportAllocs()
	for b.Loop() {
		if n.Check(nonce) != nil {
			b.Fatal("check failed")
		}
	}
}

func BenchmarkCheckForged(b *testing.B) {
	n := NewNonces([]byte("secret"), time.Minute, nil)
	forged := flip(n.Make(), 30)
	b.ReportAllocs()
	for b.Loop() {
		if n.Check(forged) == nil {
			b.Fatal("forgery accepted")
		}
	}
}

func TestInspectTellsOwnNoncesApart(t *testing.T) {
	a := NewNonces([]byte("shared"), time.Minute, at(0))
	b := NewNonces([]byte("shared"), time.Minute, at(0)) // another sidecar on the same secret
	for want := uint32(1); want <= 3; want++ {
		nonce := a.MakeFor("u@d")
		if in, err := a.Inspect(nonce, "u@d"); err != nil || in.Serial != want || in.ID != uint64(a.tag)<<32|uint64(want) || in.Issued != at(0)().Unix() {
			t.Fatalf("own nonce %d: %+v, %v", want, in, err)
		}
		if in, err := b.Inspect(nonce, "u@d"); err != nil || in.Serial != 0 || in.ID != uint64(a.tag)<<32|uint64(want) {
			t.Fatalf("the other's nonce: %+v, %v; want serial 0 and accepted", in, err)
		}
	}
	// The counter wraps past 0, which means "not ours".
	a.serial.Store(^uint32(0))
	if in, err := a.Inspect(a.Make(), ""); err != nil || in.Serial != 1 {
		t.Fatalf("after the wrap: %+v, %v; want serial 1", in, err)
	}
	stale := NewNonces([]byte("shared"), time.Minute, at(-time.Hour))
	old := stale.Make()
	stale.now = at(0)
	if in, err := stale.Inspect(old, ""); !errors.Is(err, ErrStale) || in != (Info{}) {
		t.Fatalf("own stale nonce: %+v, %v; want nothing and ErrStale", in, err)
	}
	if in, err := a.Inspect(strings.Repeat("A", nonceLen), ""); !errors.Is(err, ErrInvalid) || in != (Info{}) {
		t.Fatalf("garbage: %+v, %v", in, err)
	}
	if n := testing.AllocsPerRun(100, func() { a.Inspect(old, "someone@example.com") }); n != 0 && !raceEnabled {
		t.Fatalf("Inspect allocates %.0f times", n)
	}
}

// A nonce checks only for the scope it was made for: a count taken on it for one AOR says
// nothing of another, so another AOR must not accept it.
func TestNonceBelongsToItsScope(t *testing.T) {
	n := NewNonces([]byte("shared"), time.Minute, at(0))
	nonce := n.MakeFor("alice@pbx")
	if _, err := n.Inspect(nonce, "alice@pbx"); err != nil {
		t.Fatalf("its own scope: %v", err)
	}
	for _, other := range []string{"", "alice@other", "alice@pbx ", "Alice@pbx", "bob@pbx"} {
		if _, err := n.Inspect(nonce, other); !errors.Is(err, ErrInvalid) {
			t.Fatalf("scope %q: %v, want ErrInvalid", other, err)
		}
	}
	if err := n.Check(nonce); !errors.Is(err, ErrInvalid) {
		t.Fatalf("Check (no scope): %v, want ErrInvalid", err)
	}
	if err := n.Check(n.Make()); err != nil {
		t.Fatalf("Make and Check: %v", err)
	}
	// A scope longer than the pooled buffer keeps still works, every time.
	long := strings.Repeat("x", 3*maxScope) + "@d"
	for range 3 {
		if _, err := n.Inspect(n.MakeFor(long), long); err != nil {
			t.Fatalf("long scope: %v", err)
		}
	}
}

// Nonces come out in the order Info gives them: by Issued, then by ID.
func TestInfoOrdersNonces(t *testing.T) {
	clock := at(0)
	n := NewNonces([]byte("shared"), time.Hour, func() time.Time { return clock() })
	var last Info
	for i := range 5 {
		if i == 3 {
			clock = at(time.Second)
		}
		in, err := n.Inspect(n.Make(), "")
		if err != nil {
			t.Fatal(err)
		}
		if i > 0 && !(in.Issued > last.Issued || in.Issued == last.Issued && in.ID > last.ID) {
			t.Fatalf("nonce %d %+v is not after %+v", i, in, last)
		}
		last = in
	}
}
