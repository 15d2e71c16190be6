package sipdigest

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strings"
	"testing"
)

// The Authorization headers below are the RFCs' own examples, line breaks and all.
const (
	rfc2617Header = `Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 qop=auth,
                 nc=00000001,
                 cnonce="0a4f113b",
                 response="6629fae49393a05397450978507c4ef1",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41"`
	rfc7616SHA256Header = `Digest username="Mufasa",
       realm="http-auth@example.org",
       uri="/dir/index.html",
       algorithm=SHA-256,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       nc=00000001,
       cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
       qop=auth,
       response="753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"`
	rfc7616MD5Header = `Digest username="Mufasa",
       realm="http-auth@example.org",
       uri="/dir/index.html",
       algorithm=MD5,
       nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
       nc=00000001,
       cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
       qop=auth,
       response="8ca523f5e9506fed4657c9700eebdbec",
       opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"`
	// The RFC 2617 §3.5 inputs in the RFC 2069 form (no qop): H(HA1:nonce:HA2). The value is
	// checked against an independent computation in TestResponseFormulas.
	noQOPHeader = `Digest username="Mufasa",
                 realm="testrealm@host.com",
                 nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093",
                 uri="/dir/index.html",
                 response="670fd8c2df070c60b045671b8b24ff02",
                 opaque="5ccc069c403ebaf9f0171e9517f40e41"`
)

func TestRFCExamples(t *testing.T) {
	cases := []struct {
		name, header, method, password, alg, qop string
	}{
		{"RFC 2617 §3.5, MD5 with qop=auth", rfc2617Header, "GET", "Circle Of Life", MD5, "auth"},
		{"RFC 7616 §3.9.1, SHA-256", rfc7616SHA256Header, "GET", "Circle of Life", SHA256, "auth"},
		{"RFC 7616 §3.9.1, MD5", rfc7616MD5Header, "GET", "Circle of Life", MD5, "auth"},
		{"RFC 2617 §3.5 inputs without qop (RFC 2069 form)", noQOPHeader, "GET", "Circle Of Life", MD5, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cr, err := Parse(c.header)
			if err != nil {
				t.Fatal(err)
			}
			if cr.Username != "Mufasa" || cr.URI != "/dir/index.html" || cr.Algorithm != c.alg || cr.QOP != c.qop || cr.Opaque == "" {
				t.Fatalf("parsed %+v", cr)
			}
			ha1 := HA1(cr.Algorithm, cr.Username, cr.Realm, c.password)
			got := Response(cr, c.method, ha1)
			if !Equal(got, cr.Response) {
				t.Fatalf("response %s, the RFC says %s", got, cr.Response)
			}
			if Equal(Response(cr, c.method, HA1(cr.Algorithm, cr.Username, cr.Realm, c.password+"!")), cr.Response) {
				t.Fatal("a wrong password matched")
			}
			if Equal(Response(cr, "REGISTER", ha1), cr.Response) {
				t.Fatal("another method matched")
			}
		})
	}
}

// md5hex is an independent H for checking the formulas.
func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func TestResponseFormulas(t *testing.T) {
	// RFC 2617 §3.2.2.1 and RFC 3261 §22.4, computed independently.
	if got := md5hex(md5hex("Mufasa:testrealm@host.com:Circle Of Life") + ":dcd98b7102dd2f0e8b11d0f600bfb0c093:" + md5hex("GET:/dir/index.html")); !strings.Contains(noQOPHeader, got) {
		t.Fatalf("the no-qop example's response is not %s", got)
	}
	ha1 := md5hex("201:pbx:pw")
	if got := HA1(MD5, "201", "pbx", "pw"); got != ha1 {
		t.Fatalf("HA1 %s, want %s", got, ha1)
	}
	ha2 := md5hex("REGISTER:sip:pbx")
	c := Credentials{Username: "201", Realm: "pbx", Nonce: "n", URI: "sip:pbx", Algorithm: MD5}
	if got, want := Response(c, "REGISTER", ha1), md5hex(ha1+":n:"+ha2); got != want {
		t.Errorf("no-qop response %s, want %s", got, want)
	}
	c.QOP, c.NC, c.CNonce = "auth", "00000002", "cn"
	if got, want := Response(c, "REGISTER", ha1), md5hex(ha1+":n:00000002:cn:auth:"+ha2); got != want {
		t.Errorf("qop response %s, want %s", got, want)
	}
	// An empty algorithm is MD5 (the RFC default), not an empty string that could match.
	c.Algorithm = ""
	if got, want := Response(c, "REGISTER", ha1), md5hex(ha1+":n:00000002:cn:auth:"+ha2); got != want {
		t.Errorf("default-algorithm response %s, want %s", got, want)
	}
	c.Algorithm = "SHA-512"
	if got := Response(c, "REGISTER", ha1); got != "" {
		t.Errorf("unsupported algorithm gave %q", got)
	}
	if got := HA1("sha-256", "u", "r", "p"); len(got) != 64 {
		t.Errorf("algorithm names are case-insensitive: %q", got)
	}
}

func TestEqualAllocatesNothing(t *testing.T) {
	a, b := "0123456789ABCDEF0123456789abcdef", "0123456789abcdef0123456789ABCDEF"
	if n := testing.AllocsPerRun(100, func() { Equal(a, b) }); n != 0 {
		t.Fatalf("Equal allocates %v times", n)
	}
}

func TestEqual(t *testing.T) {
	cases := []struct {
		a, b string
		want bool
	}{
		{"abcdef", "abcdef", true},
		{"ABCdef", "abcDEF", true},
		{"abc", "abd", false},
		{"abc", "abcd", false},
		// A response computed for an unsupported algorithm is "": a phone sending an empty
		// response must not match it.
		{"", "", false},
		{"", "abc", false},
		{"abc", "", false},
		// Only letters fold: '@' and '`' are 0x20 apart like 'A' and 'a', '[' and '{' too.
		{"@", "`", false},
		{"[", "{", false},
		{"Z", "z", true},
		{"0123456789abcdef", "0123456789ABCDEF", true},
	}
	for _, c := range cases {
		if got := Equal(c.a, c.b); got != c.want {
			t.Errorf("Equal(%q, %q) = %v", c.a, c.b, got)
		}
	}
}

const base = `username="201", realm="pbx", nonce="abc", uri="sip:pbx", response="0123"`

func TestParse(t *testing.T) {
	cases := []struct {
		name   string
		header string
		want   Credentials
	}{
		{"minimal, algorithm defaults to MD5", "Digest " + base,
			Credentials{Username: "201", Realm: "pbx", Nonce: "abc", URI: "sip:pbx", Response: "0123", Algorithm: MD5}},
		{"qop=auth with nc and cnonce", "Digest " + base + `, algorithm=SHA-256, qop=auth, nc=00000001, cnonce="c"`,
			Credentials{Username: "201", Realm: "pbx", Nonce: "abc", URI: "sip:pbx", Response: "0123", Algorithm: SHA256, QOP: "auth", NC: "00000001", CNonce: "c"}},
		{"quoted qop and algorithm", "Digest " + base + `, algorithm="MD5", qop="auth", nc="00000001", cnonce="c"`,
			Credentials{Username: "201", Realm: "pbx", Nonce: "abc", URI: "sip:pbx", Response: "0123", Algorithm: MD5, QOP: "auth", NC: "00000001", CNonce: "c"}},
		{"a comma inside quotes is data", `Digest username="a,b", realm="x, y", nonce="n,", uri="sip:p", response="r"`,
			Credentials{Username: "a,b", Realm: "x, y", Nonce: "n,", URI: "sip:p", Response: "r", Algorithm: MD5}},
		{"escaped quote and backslash", `Digest username="a\"b\\c", realm="p", nonce="n", uri="sip:p", response="r"`,
			Credentials{Username: `a"b\c`, Realm: "p", Nonce: "n", URI: "sip:p", Response: "r", Algorithm: MD5}},
		{"an escaped ordinary character is itself", `Digest username="\a", realm="p", nonce="n", uri="sip:p", response="r"`,
			Credentials{Username: "a", Realm: "p", Nonce: "n", URI: "sip:p", Response: "r", Algorithm: MD5}},
		{"lower-case scheme and keys", `digest USERNAME="201", Realm=pbx, NONCE=abc, uri="sip:pbx", Response=0123`,
			Credentials{Username: "201", Realm: "pbx", Nonce: "abc", URI: "sip:pbx", Response: "0123", Algorithm: MD5}},
		{"tab after the scheme, spaces around =", "Digest\tusername = \"201\" ,realm= pbx,nonce =abc , uri=\"sip:pbx\",response=\"0123\"",
			Credentials{Username: "201", Realm: "pbx", Nonce: "abc", URI: "sip:pbx", Response: "0123", Algorithm: MD5}},
		{"unknown parameters ignored", "Digest " + base + `, opaque="o", userhash=false, x-custom="a=b,c"`,
			Credentials{Username: "201", Realm: "pbx", Nonce: "abc", URI: "sip:pbx", Response: "0123", Algorithm: MD5, Opaque: "o"}},
		{"stray commas", "Digest ,," + base + ",,",
			Credentials{Username: "201", Realm: "pbx", Nonce: "abc", URI: "sip:pbx", Response: "0123", Algorithm: MD5}},
		{"surrounding whitespace", "  Digest " + base + "  ",
			Credentials{Username: "201", Realm: "pbx", Nonce: "abc", URI: "sip:pbx", Response: "0123", Algorithm: MD5}},
		{"at the length limit", "Digest " + base + `, opaque="` + strings.Repeat("o", MaxHeaderLen-len("Digest "+base+`, opaque=""`)) + `"`,
			Credentials{Username: "201", Realm: "pbx", Nonce: "abc", URI: "sip:pbx", Response: "0123", Algorithm: MD5, Opaque: strings.Repeat("o", MaxHeaderLen-len("Digest "+base+`, opaque=""`))}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := Parse(c.header)
			if err != nil {
				t.Fatal(err)
			}
			if got != c.want {
				t.Fatalf("parsed\n %+v\nwant\n %+v", got, c.want)
			}
		})
	}
}

func TestParseRefuses(t *testing.T) {
	cases := []struct {
		name   string
		header string
		want   error
	}{
		{"empty", "", ErrNotDigest},
		{"blank", "   ", ErrNotDigest},
		{"Basic", "Basic YWxhZGRpbjpvcGVuc2VzYW1l", ErrNotDigest},
		{"Bearer", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.x", ErrNotDigest},
		{"scheme glued to a parameter", "Digestusername=a", ErrNotDigest},
		{"a longer scheme", "Digests " + base, ErrNotDigest},
		{"scheme alone", "Digest", ErrMalformed},
		{"no username", `Digest realm="pbx", nonce="abc", uri="sip:pbx", response="0123"`, ErrMalformed},
		{"no realm", `Digest username="201", nonce="abc", uri="sip:pbx", response="0123"`, ErrMalformed},
		{"no nonce", `Digest username="201", realm="pbx", uri="sip:pbx", response="0123"`, ErrMalformed},
		{"no uri", `Digest username="201", realm="pbx", nonce="abc", response="0123"`, ErrMalformed},
		{"no response", `Digest username="201", realm="pbx", nonce="abc", uri="sip:pbx"`, ErrMalformed},
		{"empty quoted response", `Digest username="201", realm="pbx", nonce="abc", uri="sip:pbx", response=""`, ErrMalformed},
		{"empty token nonce", `Digest username="201", realm="pbx", nonce=, uri="sip:pbx", response="0123"`, ErrMalformed},
		// Two values for one field let a front end and a back end read different credentials.
		{"duplicated username", "Digest " + base + `, username="202"`, ErrMalformed},
		{"duplicated in another case", "Digest " + base + `, Response="4567"`, ErrMalformed},
		{"duplicated unknown parameter", "Digest " + base + `, x=1, x=2`, ErrMalformed},
		{"unterminated quote", `Digest username="201, realm=pbx, nonce=abc, uri=sip:pbx, response=0123`, ErrMalformed},
		{"trailing backslash in quotes", `Digest username="201\`, ErrMalformed},
		{"parameter without =", "Digest " + base + ", lonely", ErrMalformed},
		{"parameter without name", "Digest " + base + `, ="x"`, ErrMalformed},
		{"oversized", "Digest " + base + `, opaque="` + strings.Repeat("o", MaxHeaderLen) + `"`, ErrMalformed},
		{"oversized by one", "Digest " + base + `, opaque="` + strings.Repeat("o", MaxHeaderLen+1-len("Digest "+base+`, opaque=""`)) + `"`, ErrMalformed},
		{"SHA-512", "Digest " + base + ", algorithm=SHA-512", ErrAlgorithm},
		{"MD5-sess", "Digest " + base + ", algorithm=MD5-sess", ErrAlgorithm},
		{"SHA-256-sess", "Digest " + base + ", algorithm=SHA-256-sess", ErrAlgorithm},
		{"SHA-512-256", "Digest " + base + ", algorithm=SHA-512-256", ErrAlgorithm},
		{"explicitly empty algorithm", "Digest " + base + `, algorithm=""`, ErrAlgorithm},
		{"qop without nc", "Digest " + base + `, qop=auth, cnonce="c"`, ErrMalformed},
		{"qop without cnonce", "Digest " + base + `, qop=auth, nc=00000001`, ErrMalformed},
		{"qop alone", "Digest " + base + `, qop=auth`, ErrMalformed},
		{"qop=auth-int", "Digest " + base + `, qop=auth-int, nc=00000001, cnonce="c"`, ErrMalformed},
		{"qop list", "Digest " + base + `, qop="auth,auth-int", nc=00000001, cnonce="c"`, ErrMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if _, err := Parse(c.header); !errors.Is(err, c.want) {
				t.Fatalf("Parse = %v, want %v", err, c.want)
			}
		})
	}
}

// format writes c back as a header, every value quoted and escaped.
func format(c Credentials) string {
	q := func(s string) string { return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(s) + `"` }
	var b strings.Builder
	b.WriteString("Digest username=" + q(c.Username) + ", realm=" + q(c.Realm) + ", nonce=" + q(c.Nonce) +
		", uri=" + q(c.URI) + ", response=" + q(c.Response) + ", algorithm=" + q(c.Algorithm))
	for _, kv := range [][2]string{{"cnonce", c.CNonce}, {"qop", c.QOP}, {"nc", c.NC}, {"opaque", c.Opaque}} {
		if kv[1] != "" {
			b.WriteString(", " + kv[0] + "=" + q(kv[1]))
		}
	}
	return b.String()
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{
		rfc2617Header, rfc7616SHA256Header, noQOPHeader,
		"Digest " + base,
		"Digest " + base + `, algorithm=SHA-256, qop=auth, nc=00000001, cnonce="x,y"`,
		`Digest username="a\"b", realm=pbx, nonce=n, uri="sip:x", response=r`,
		"Digest\tusername=a,realm=b,nonce=c,uri=d,response=e,algorithm=sha-256",
		"Digest " + base + ", username=x",
		"Digest " + base + `, algorithm=""`,
		`Digest username=`, `Digest "`, `Digest ,,,,`, `Digest a="\`, `Digest =`, "", "Digest", "Basic x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrNotDigest) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrAlgorithm) {
				t.Fatalf("error %v is not one of the sentinels", err)
			}
			return
		}
		if len(s) > MaxHeaderLen {
			t.Fatalf("accepted %d bytes", len(s))
		}
		if c.Username == "" || c.Realm == "" || c.Nonce == "" || c.URI == "" || c.Response == "" {
			t.Fatalf("accepted without a required field: %+v", c)
		}
		if c.QOP != "" && (c.QOP != "auth" || c.NC == "" || c.CNonce == "") {
			t.Fatalf("accepted a bad qop: %+v", c)
		}
		want := map[string]int{"md5": 32, "sha-256": 64}[strings.ToLower(c.Algorithm)]
		if want == 0 {
			t.Fatalf("accepted algorithm %q", c.Algorithm)
		}
		if r := Response(c, "REGISTER", HA1(c.Algorithm, c.Username, c.Realm, "x")); len(r) != want {
			t.Fatalf("response %q for algorithm %q", r, c.Algorithm)
		}
		// What was read survives being written back and read again.
		again, err := Parse(format(c))
		if len(format(c)) <= MaxHeaderLen && (err != nil || again != c) {
			t.Fatalf("round trip of %+v: %+v, %v", c, again, err)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(rfc7616SHA256Header); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkResponseSHA256(b *testing.B) {
	c, _ := Parse(rfc7616SHA256Header)
	b.ReportAllocs()
	for b.Loop() {
		Response(c, "REGISTER", HA1(c.Algorithm, c.Username, c.Realm, "Circle of Life"))
	}
}

// parseReference is Parse as it was before its allocation-free rewrite, kept to hold the
// rewrite to the same answers.
func parseReference(header string) (Credentials, error) {
	var c Credentials
	if len(header) > MaxHeaderLen {
		return c, fmt.Errorf("%w: too long", ErrMalformed)
	}
	s := strings.TrimSpace(header)
	scheme, rest := s, ""
	if i := strings.IndexAny(s, " \t\r\n"); i >= 0 {
		scheme, rest = s[:i], s[i:]
	}
	if !strings.EqualFold(scheme, "Digest") {
		return c, ErrNotDigest
	}
	seen := make(map[string]bool, 10)
	for {
		rest = strings.TrimLeft(rest, " \t\r\n,")
		if rest == "" {
			break
		}
		eq := strings.IndexByte(rest, '=')
		if eq <= 0 {
			return c, fmt.Errorf("%w: parameter without value", ErrMalformed)
		}
		key := strings.ToLower(strings.TrimSpace(rest[:eq]))
		rest = strings.TrimLeft(rest[eq+1:], " \t")
		var val string
		if strings.HasPrefix(rest, `"`) {
			end := -1
			var b strings.Builder
			for i := 1; i < len(rest); i++ {
				ch := rest[i]
				if ch == '\\' && i+1 < len(rest) {
					i++
					b.WriteByte(rest[i])
					continue
				}
				if ch == '"' {
					end = i
					break
				}
				b.WriteByte(ch)
			}
			if end < 0 {
				return c, fmt.Errorf("%w: unterminated quoted value", ErrMalformed)
			}
			val = b.String()
			rest = rest[end+1:]
		} else {
			end := strings.IndexAny(rest, ", \t\r\n")
			if end < 0 {
				end = len(rest)
			}
			val = rest[:end]
			rest = rest[end:]
		}
		if seen[key] {
			return c, fmt.Errorf("%w: %s given twice", ErrMalformed, key)
		}
		seen[key] = true
		switch key {
		case "username":
			c.Username = val
		case "realm":
			c.Realm = val
		case "nonce":
			c.Nonce = val
		case "uri":
			c.URI = val
		case "response":
			c.Response = val
		case "algorithm":
			c.Algorithm = val
		case "cnonce":
			c.CNonce = val
		case "qop":
			c.QOP = val
		case "nc":
			c.NC = val
		case "opaque":
			c.Opaque = val
		}
	}
	if c.Username == "" || c.Realm == "" || c.Nonce == "" || c.URI == "" || c.Response == "" {
		return c, fmt.Errorf("%w: missing a required parameter", ErrMalformed)
	}
	if c.Algorithm == "" {
		if seen["algorithm"] {
			return c, fmt.Errorf("%w: empty algorithm", ErrAlgorithm)
		}
		c.Algorithm = MD5
	}
	if _, err := newHash(c.Algorithm); err != nil {
		return c, err
	}
	if c.QOP != "" && (c.QOP != "auth" || c.NC == "" || c.CNonce == "") {
		return c, fmt.Errorf("%w: qop needs auth, nc and cnonce", ErrMalformed)
	}
	return c, nil
}

func FuzzParseSameAsReference(f *testing.F) {
	for _, s := range []string{
		rfc2617Header, rfc7616SHA256Header, noQOPHeader,
		"Digest " + base + `, Username="again"`,
		"Digest " + base + `, x=1, X=2`,
		"Digest " + base + `, x=1, y="a\\\"b"`,
		`Digest username="a\"b", realm="p\\q", nonce=n, uri="sip:x", response=r, algorithm=Md5`,
		"Digest " + base + `, ALGORITHM=sha-256`,
		"Digest " + base + `, algoritHm=""`,
		"Digest " + base + `, qop=auth, nc=1`,
		"Digest " + base + `, opaque="unterminated`,
		"Digest " + base + `, uſername=x`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		c, err := Parse(s)
		rc, rerr := parseReference(s)
		if (err == nil) != (rerr == nil) || (err != nil && err.Error() != rerr.Error()) {
			t.Fatalf("Parse(%q): error %v, reference %v", s, err, rerr)
		}
		if err == nil && c != rc {
			t.Fatalf("Parse(%q) = %+v, reference %+v", s, c, rc)
		}
	})
}

func newHash(alg string) (hash.Hash, error) {
	switch {
	case strings.EqualFold(alg, MD5):
		return md5.New(), nil
	case strings.EqualFold(alg, SHA256):
		return sha256.New(), nil
	}
	return nil, ErrAlgorithm
}

func TestFoldASCIIEveryByte(t *testing.T) {
	for i := range 256 {
		c := byte(i)
		want := c
		if 'A' <= c && c <= 'Z' {
			want = c + ('a' - 'A')
		}
		if got := foldASCII(c); got != want {
			t.Fatalf("foldASCII(%#x) = %#x, want %#x", c, got, want)
		}
	}
}
