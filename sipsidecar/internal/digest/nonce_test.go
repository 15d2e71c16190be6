package digest

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestNonces(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	clock := func() time.Time { return now }
	n := NewNonces([]byte("secret-one"), 5*time.Minute, clock)
	nonce := n.Make()
	if len(nonce) != nonceLen || strings.ContainsAny(nonce, `"\ ,=+/`) {
		t.Fatalf("nonce %q is not token-safe", nonce)
	}
	if n.Make() == nonce {
		t.Fatal("two nonces are equal")
	}
	cases := []struct {
		name  string
		nonce string
		at    time.Duration
		want  error
	}{
		{"fresh", nonce, 0, nil},
		{"just before its TTL", nonce, 5 * time.Minute, nil},
		{"past its TTL is stale", nonce, 5*time.Minute + time.Second, ErrStale},
		{"from a clock slightly ahead", nonce, -3 * time.Second, nil},
		{"from the far future", nonce, -time.Hour, ErrInvalid},
		{"empty", "", 0, ErrInvalid},
		{"garbage", "not-a-nonce", 0, ErrInvalid},
		{"oversized", strings.Repeat("A", 4096), 0, ErrInvalid},
		{"bad base64 of the right length", strings.Repeat("!", nonceLen), 0, ErrInvalid},
		{"tampered", tamper(nonce), 0, ErrInvalid},
		{"another secret's nonce", NewNonces([]byte("secret-two"), 5*time.Minute, clock).Make(), 0, ErrInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := NewNonces([]byte("secret-one"), 5*time.Minute, func() time.Time { return now.Add(c.at) })
			if err := n.Check(c.nonce); !errors.Is(err, c.want) {
				t.Fatalf("Check = %v, want %v", err, c.want)
			}
		})
	}
}

// tamper flips one character in the random part, keeping the alphabet.
func tamper(s string) string {
	b := []byte(s)
	i := 14
	if b[i] == 'A' {
		b[i] = 'B'
	} else {
		b[i] = 'A'
	}
	return string(b)
}

func TestChallenge(t *testing.T) {
	got := Challenge("pbx.example.com", "abc", "SHA-256", false)
	if got != `Digest realm="pbx.example.com", nonce="abc", algorithm=SHA-256, qop="auth"` {
		t.Fatalf("challenge %s", got)
	}
	if got := Challenge(`a"b\c`+"\r\n", "n", "MD5", true); got != `Digest realm="a\"b\\c", nonce="n", algorithm=MD5, qop="auth", stale=true` {
		t.Fatalf("escaped challenge %s", got)
	}
}

func TestParseNC(t *testing.T) {
	for in, want := range map[string]uint64{"00000001": 1, "0000000a": 10, "FFFFFFFF": 0xffffffff} {
		if got, err := ParseNC(in); err != nil || got != want {
			t.Errorf("ParseNC(%q) = %d, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "1", "000000001", "0000000g", "-0000001", "+0000001", " 0000001"} {
		if _, err := ParseNC(bad); err == nil {
			t.Errorf("ParseNC(%q) accepted", bad)
		}
	}
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
