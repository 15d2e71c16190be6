package sipdigest

import (
	"errors"
	"strings"
	"testing"
)

func TestRFCExamples(t *testing.T) {
	// RFC 2617 §3.5 (MD5, qop=auth).
	c := Credentials{Username: "Mufasa", Realm: "testrealm@host.com", Nonce: "dcd98b7102dd2f0e8b11d0f600bfb0c093",
		URI: "/dir/index.html", Algorithm: MD5, QOP: "auth", NC: "00000001", CNonce: "0a4f113b"}
	if got := Response(c, "GET", HA1(MD5, "Mufasa", "testrealm@host.com", "Circle Of Life")); got != "6629fae49393a05397450978507c4ef1" {
		t.Errorf("RFC 2617 response %s", got)
	}
	// RFC 7616 §3.9.1 (SHA-256).
	c = Credentials{Username: "Mufasa", Realm: "http-auth@example.org", Nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
		URI: "/dir/index.html", Algorithm: SHA256, QOP: "auth", NC: "00000001", CNonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"}
	if got := Response(c, "GET", HA1(SHA256, "Mufasa", "http-auth@example.org", "Circle of Life")); got != "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1" {
		t.Errorf("RFC 7616 response %s", got)
	}
	// RFC 2069 form (no qop): H(HA1:nonce:HA2).
	c = Credentials{Username: "u", Realm: "r", Nonce: "n", URI: "sip:r", Algorithm: MD5}
	ha1 := HA1(MD5, "u", "r", "p")
	if got, want := Response(c, "REGISTER", ha1), h(MD5, ha1, "n", h(MD5, "REGISTER", "sip:r")); got != want {
		t.Errorf("no-qop response %s, want %s", got, want)
	}
}

func TestParse(t *testing.T) {
	good := `Digest username="201", realm="pbx", nonce="abc", uri="sip:pbx", response="0123", algorithm=MD5, qop=auth, nc=00000001, cnonce="x,y"`
	c, err := Parse(good)
	if err != nil {
		t.Fatal(err)
	}
	if c.Username != "201" || c.CNonce != "x,y" || c.NC != "00000001" || c.QOP != "auth" || c.Algorithm != "MD5" {
		t.Fatalf("parsed %+v", c)
	}
	if c, err := Parse(`digest username="a\"b", realm=pbx, nonce=n, uri="sip:x", response=r`); err != nil || c.Username != `a"b` || c.Algorithm != MD5 {
		t.Fatalf("escaped quote, lower-case scheme, default algorithm: %+v %v", c, err)
	}
	bad := map[string]error{
		"":                               ErrNotDigest,
		"Basic YWxhZGRpbjpvcGVuc2VzYW1l": ErrNotDigest,
		`Digest username="a"`:            ErrMalformed,
		`Digest username="a, realm=r, nonce=n, uri=u, response=r`:                              ErrMalformed,
		`Digest username=a, username=b, realm=r, nonce=n, uri=u, response=r`:                   ErrMalformed,
		`Digest username=a, realm=r, nonce=n, uri=u, response=r, algorithm=SHA-512`:            ErrAlgorithm,
		`Digest username=a, realm=r, nonce=n, uri=u, response=r, qop=auth`:                     ErrMalformed,
		`Digest username=a, realm=r, nonce=n, uri=u, response=r, qop=auth-int, nc=1, cnonce=c`: ErrMalformed,
		`Digest =x`: ErrMalformed,
		"Digest " + strings.Repeat("a", MaxHeaderLen): ErrMalformed,
	}
	for in, want := range bad {
		if _, err := Parse(in); !errors.Is(err, want) {
			t.Errorf("Parse(%.60q) = %v, want %v", in, err, want)
		}
	}
}

func TestEqualIgnoresHexCase(t *testing.T) {
	if !Equal("ABCdef", "abcDEF") || Equal("abc", "abd") || Equal("abc", "abcd") {
		t.Fatal("Equal is wrong")
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		`Digest username="201", realm="pbx", nonce="abc", uri="sip:pbx", response="0123", algorithm=MD5, qop=auth, nc=00000001, cnonce="x"`,
		`Digest username="a\"b", realm=pbx, nonce=n, uri="sip:x", response=r`,
		`Digest username=`, `Digest "`, `Digest ,,,,`, `Digest a="\`, "",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			return
		}
		if c.Username == "" || c.Realm == "" || c.Nonce == "" || c.URI == "" || c.Response == "" {
			t.Fatalf("accepted without a required field: %+v", c)
		}
		if c.QOP != "" && (c.QOP != "auth" || c.NC == "" || c.CNonce == "") {
			t.Fatalf("accepted a bad qop: %+v", c)
		}
		if Response(c, "REGISTER", HA1(c.Algorithm, c.Username, c.Realm, "x")) == "" {
			t.Fatalf("accepted algorithm %q cannot be computed", c.Algorithm)
		}
	})
}
