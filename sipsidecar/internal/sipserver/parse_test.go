package sipserver

import (
	"math/rand/v2"
	"reflect"
	"strings"
	"testing"

	"github.com/emiago/sipgo/sip"
)

// msg joins header lines into a datagram, CRLF after each and a blank line at the end.
func msg(lines ...string) string { return strings.Join(lines, "\r\n") + "\r\n\r\n" }

// Requests the fast parser takes: what phones send.
var plainRequests = map[string]string{
	"SIPp's REGISTER": msg(
		"REGISTER sip:bench.test SIP/2.0",
		"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-20364-1-0;rport",
		"Max-Forwards: 70",
		"From: <sip:1000@bench.test>;tag=20364SIPpTag1",
		"To: <sip:1000@bench.test>",
		"Call-ID: 1-20364@127.0.0.1",
		"CSeq: 1 REGISTER",
		"Contact: <sip:1000@127.0.0.1:5060;transport=UDP>",
		"Expires: 3600",
		"User-Agent: SIPp",
		"Content-Length: 0"),
	"SIPp's REGISTER with credentials": msg(
		"REGISTER sip:bench.test SIP/2.0",
		"Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-20364-1-2;rport",
		"Max-Forwards: 70",
		"From: <sip:1000@bench.test>;tag=20364SIPpTag1",
		"To: <sip:1000@bench.test>",
		"Call-ID: 1-20364@127.0.0.1",
		"CSeq: 2 REGISTER",
		"Contact: <sip:1000@127.0.0.1:5060;transport=UDP>",
		"Expires: 3600",
		`Authorization: Digest username="1000",realm="softphone",cnonce="6b8b4567",nc=00000001,qop=auth,uri="sip:127.0.0.1:5099",nonce="axJQCGsSTtwiZ9oLTio3LAMIiurjhsxPMALPt4A",response="ca3bab62273fbd846b60217f5e6fbda7",algorithm=MD5`,
		"User-Agent: SIPp",
		"Content-Length: 0"),
	"a softphone with an instance id, quoted display name and two Vias": msg(
		"REGISTER sip:pbx.example.com;transport=udp SIP/2.0",
		"Via: SIP/2.0/UDP 10.0.0.1:5060;received=192.0.2.7;rport=40000;branch=z9hG4bK.proxy",
		"Via: SIP/2.0/UDP 192.168.1.20:52744;branch=z9hG4bK.5fN3jE1aT;rport",
		`From: "Alice Müller" <sip:201@pbx.example.com>;tag=Ti~Ns2Ys3`,
		`To: "Alice Müller" <sip:201@pbx.example.com>`,
		"CSeq: 20 REGISTER",
		"Call-ID: Lz5N-DS0w3",
		"Max-Forwards: 70",
		"Supported: replaces, outbound, gruu, path",
		"Accept: application/sdp",
		"Accept: text/plain",
		"Contact: <sip:201@192.168.1.20:52744;transport=udp>;expires=600;+sip.instance=\"<urn:uuid:ba7e1b15-1e07-0045-9e05-6c7c3e8f1d26>\";+org.linphone.specs=\"lime\";reg-id=1;q=0.8",
		"Expires: 600",
		"User-Agent: Linphone-Desktop/5.2.6 (Ubuntu 22.04 LTS) belle-sip/5.3.0",
		"Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, REFER, NOTIFY, MESSAGE, SUBSCRIBE, INFO, PRACK, UPDATE",
		"Content-Length: 0"),
	"compact forms, odd case and blanks around the colon": msg(
		"REGISTER sips:example.org SIP/2.0",
		"v: SIP/2.0/TLS host.example.org;branch=z9hG4bKabc",
		"f : Bob <sips:bob@example.org>;tag=x1",
		"t:\t<sips:bob@example.org>",
		"i:  abc@host  ",
		"CSEQ: 7 REGISTER",
		"m: <sips:bob@host.example.org:5061>",
		"MAX-FORWARDS: 69",
		"l: 0"),
	"bare URIs and an unregister": msg(
		"REGISTER sip:example.org SIP/2.0",
		"Via: SIP/2.0/UDP 198.51.100.3:5080;branch=z9hG4bK77",
		"From: sip:carol@example.org;tag=887s",
		"To: sip:carol@example.org",
		"Call-ID: 843817637684230@998sdasdh09",
		"CSeq: 1826 REGISTER",
		"Contact: sip:carol@198.51.100.3:5080;expires=0",
		"Content-Length: 0"),
	"two Contacts, a repeated parameter, no Content-Length": msg(
		"REGISTER sip:example.org SIP/2.0",
		"Via: SIP/2.0/UDP 198.51.100.3;branch=z9hG4bK1;branch=z9hG4bK2",
		"From: <sip:dave@example.org>;tag=1",
		"To: <sip:dave@example.org>",
		"Call-ID: c2",
		"CSeq: 3 REGISTER",
		"Contact: <sip:dave@198.51.100.3>;q=0.5",
		"Contact: <sip:dave@203.0.113.9:5062;ob>;q=1.0;expires=60"),
	"OPTIONS keep-alive": msg(
		"OPTIONS sip:pbx.example.com SIP/2.0",
		"Via: SIP/2.0/UDP 192.168.1.20:5060;branch=z9hG4bK.opt;rport",
		"From: <sip:201@pbx.example.com>;tag=o1",
		"To: <sip:pbx.example.com>",
		"Call-ID: opt-1",
		"CSeq: 1 OPTIONS",
		"Max-Forwards: 70",
		"Content-Length: 0"),
	"more parameters than the arena holds": msg(
		"REGISTER sip:example.org;a=1;b=2;c=3;d=4;e=5;f=6;g=7;h=8 SIP/2.0",
		"Via: SIP/2.0/UDP 198.51.100.3;p1;p2;p3;p4;p5;p6;p7;p8;p9",
		"From: <sip:e@example.org>;tag=1;x=2;y=3",
		"To: <sip:e@example.org>",
		"Call-ID: c3",
		"CSeq: 3 REGISTER",
		"Contact: <sip:e@198.51.100.3;p=1;q=2;r=3>;s=4;t=5"),
}

// Requests the fast parser leaves to sipgo (which may still read them, or refuse them).
var unplainRequests = map[string]string{
	"a response":                            msg("SIP/2.0 200 OK", "Via: SIP/2.0/UDP h;branch=z9hG4bK1", "Call-ID: x", "CSeq: 1 REGISTER"),
	"a lower-case method":                   msg("register sip:example.org SIP/2.0", "Call-ID: x"),
	"another version":                       msg("REGISTER sip:example.org SIP/3.0", "Call-ID: x"),
	"a folded line":                         msg("REGISTER sip:example.org SIP/2.0", "Subject: one", " two", "Call-ID: x"),
	"a Contact list":                        msg("REGISTER sip:example.org SIP/2.0", "Contact: <sip:a@h1>, <sip:a@h2>"),
	"a Via list":                            msg("REGISTER sip:example.org SIP/2.0", "Via: SIP/2.0/UDP h1;branch=z9hG4bK1, SIP/2.0/UDP h2"),
	"an IPv6 Contact":                       msg("REGISTER sip:example.org SIP/2.0", "Contact: <sip:a@[2001:db8::1]:5060>"),
	"a password":                            msg("REGISTER sip:example.org SIP/2.0", "To: <sip:a:secret@example.org>"),
	"URI headers":                           msg("REGISTER sip:example.org SIP/2.0", "Contact: <sip:a@h?Subject=x>"),
	"a tel URI":                             msg("REGISTER sip:example.org SIP/2.0", "To: <tel:+15551234>"),
	"an escaped display name":               msg("REGISTER sip:example.org SIP/2.0", `From: "a \"b\"" <sip:a@h>;tag=1`),
	"a wildcard Contact":                    msg("REGISTER sip:example.org SIP/2.0", "Contact: *", "Expires: 0"),
	"a Content-Type":                        msg("REGISTER sip:example.org SIP/2.0", "Content-Type: text/plain"),
	"a Route":                               msg("REGISTER sip:example.org SIP/2.0", "Route: <sip:proxy;lr>"),
	"a body":                                "REGISTER sip:example.org SIP/2.0\r\nCall-ID: x\r\nContent-Length: 4\r\n\r\nbody",
	"bytes after, no length":                "REGISTER sip:example.org SIP/2.0\r\nCall-ID: x\r\n\r\nbody",
	"an empty Call-ID":                      msg("REGISTER sip:example.org SIP/2.0", "Call-ID: "),
	"an empty parameter":                    msg("REGISTER sip:example.org SIP/2.0", "From: <sip:a@h>;;tag=1"),
	"a parameter with no name":              msg("REGISTER sip:example.org SIP/2.0", "From: <sip:a@h>;=1"),
	"a lone CR":                             "REGISTER sip:example.org SIP/2.0\r\nCall-ID: x\ry\r\n\r\n",
	"no blank line":                         "REGISTER sip:example.org SIP/2.0\r\nCall-ID: x\r\n",
	"a CSeq without a method":               msg("REGISTER sip:example.org SIP/2.0", "CSeq: 1"),
	"a Unicode space at the end of a value": msg("REGISTER sip:example.org SIP/2.0", "User-Agent: x\u00a0"),
	"a display name ending in a Unicode space": msg("REGISTER sip:example.org SIP/2.0", "From: Bob\u00a0<sip:a@h>"),
}

// sipgoParse is sipgo's reading of data, or nil.
func sipgoParse(t testing.TB, data []byte) *sip.Request {
	m, err := sip.NewParser().ParseSIP(data)
	if err != nil {
		return nil
	}
	req, _ := m.(*sip.Request)
	return req
}

func TestParseRequestTakesPlainRequests(t *testing.T) {
	for name, data := range plainRequests {
		t.Run(name, func(t *testing.T) {
			got := parseRequest([]byte(data))
			if got == nil {
				t.Fatal("left to sipgo")
			}
			want := sipgoParse(t, []byte(data))
			if !reflect.DeepEqual(got, want) {
				t.Fatalf("differs from sipgo's:\n got %#v\nwant %#v", got, want)
			}
			if got.String() != want.String() {
				t.Fatalf("prints differently:\n%s\n%s", got, want)
			}
		})
	}
}

func TestParseRequestLeavesTheRestToSipgo(t *testing.T) {
	for name, data := range unplainRequests {
		t.Run(name, func(t *testing.T) {
			if got := parseRequest([]byte(data)); got != nil {
				t.Fatalf("taken: %v", got)
			}
		})
	}
}

// The parameter lists share one array: one list's growth must never write over the next.
func TestParseRequestListsStayApart(t *testing.T) {
	req := parseRequest([]byte(plainRequests["a softphone with an instance id, quoted display name and two Vias"]))
	from, contact := req.From(), req.Contact()
	before := contact.Params.String()
	from.Params.Add("added", "1")
	req.Via().Params.Add("received", "203.0.113.1")
	if contact.Params.String() != before {
		t.Fatalf("adding to From and Via changed Contact's parameters: %q, was %q", contact.Params.String(), before)
	}
	if v, _ := from.Params.Get("added"); v != "1" {
		t.Fatal("the added parameter is lost")
	}
}

// The request does not point into the caller's buffer, which the next read overwrites.
func TestParseRequestCopiesTheDatagram(t *testing.T) {
	data := []byte(plainRequests["SIPp's REGISTER"])
	req := parseRequest(data)
	want := req.String()
	for i := range data {
		data[i] = 'x'
	}
	if req.String() != want {
		t.Fatal("the request changed with the buffer it was read from")
	}
}

func TestParseRequestAllocations(t *testing.T) {
	data := []byte(plainRequests["SIPp's REGISTER with credentials"])
	sipgo := testing.AllocsPerRun(200, func() { sipgoParse(t, data) })
	fast := testing.AllocsPerRun(200, func() { parseRequest(data) })
	// The copy, the arena, the Request, its header list grown once, three generic headers.
	if fast > 8 {
		t.Fatalf("%.0f allocations (sipgo: %.0f), want at most 8", fast, sipgo)
	}
}

func FuzzParseRequest(f *testing.F) {
	for _, data := range plainRequests {
		f.Add([]byte(data))
	}
	for _, data := range unplainRequests {
		f.Add([]byte(data))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		got := parseRequest(data)
		if got == nil {
			return
		}
		want := sipgoParse(t, data)
		if want == nil {
			t.Fatalf("taken, but sipgo refuses %q", data)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("differs from sipgo's on %q:\n got %#v\nwant %#v", data, got, want)
		}
	})
}

func BenchmarkParse(b *testing.B) {
	data := []byte(plainRequests["SIPp's REGISTER with credentials"])
	b.Run("sipgo", func(b *testing.B) {
		p := sip.NewParser()
		b.ReportAllocs()
		for b.Loop() {
			p.ParseSIP(data)
		}
	})
	b.Run("parseRequest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			parseRequest(data)
		}
	})
}

// Requests built from pieces near the edges of what parseRequest takes (characters just
// inside and just outside its classes, odd cases, repeated and missing parts): whatever it
// takes must equal sipgo's reading. Random mutation from the seeds above rarely builds a
// request it takes; this does, thousands of times, in every test run.
func TestParseRequestMatchesSipgoOnGeneratedRequests(t *testing.T) {
	rng := rand.New(rand.NewPCG(18, 2026))
	odds := 0.0 // how often a choice strays from the plain one; set per request
	strays := func() bool { return rng.Float64() < odds }
	// pick is xs[0], the plain choice, unless this choice strays
	pick := func(xs ...string) string {
		if strays() {
			return xs[rng.IntN(len(xs))]
		}
		return xs[0]
	}
	// a run of 1-4 characters from plain, or now and then from odd
	word := func(plain, odd string) string {
		var b strings.Builder
		for range 1 + rng.IntN(4) {
			if strays() {
				b.WriteByte(odd[rng.IntN(len(odd))])
			} else {
				b.WriteByte(plain[rng.IntN(len(plain))])
			}
		}
		return b.String()
	}
	const plain = "abcXYZ019"
	const odd = "-._!~*'()%+&=$:;,@?[]<>\"/ \t\\`#{}|^\u00a0\x7f\x00"
	params := func() string {
		var b strings.Builder
		for range rng.IntN(4) {
			b.WriteString(pick(";", "", ";;"))
			b.WriteString(word(plain, odd))
			if rng.IntN(3) > 0 {
				b.WriteString(pick("=", "=\"", "=="))
				b.WriteString(word(plain, odd))
			}
		}
		return b.String()
	}
	uri := func() string {
		u := pick("sip:", "sips:", "SIP:", "tel:", "sip://")
		if rng.IntN(4) == 0 {
			u = "sips:"
		}
		if rng.IntN(4) > 0 {
			u += word(plain, odd) + pick("@", ":pw@")
		}
		u += word(plain+".", odd) + []string{"", ":5060", ":0"}[rng.IntN(3)] + pick("", ":65536", ":", ":5x")
		return u + params()
	}
	address := func() string {
		switch rng.IntN(5) {
		case 0:
			return uri()
		case 1:
			return "<" + uri() + ">" + params()
		case 2:
			return "\"" + word(plain+" ", odd) + "\"" + pick(" ", "", "  ", "x ") + "<" + uri() + ">" + params()
		default:
			return word(plain+" ", odd) + pick(" ", "") + "<" + uri() + ">" + params()
		}
	}
	header := func() string {
		switch rng.IntN(12) {
		case 0:
			return []string{"Via", "v", "VIA"}[rng.IntN(3)] + ": SIP/2.0/" + []string{"UDP", "TCP", "udp"}[rng.IntN(3)] + pick(" ", "  ", "\t") + word(plain+".", odd) + []string{"", ":5060"}[rng.IntN(2)] + pick("", ":x") + params()
		case 1:
			return []string{"From", "f", "FROM"}[rng.IntN(3)] + ": " + address()
		case 2:
			return []string{"To", "t"}[rng.IntN(2)] + ": " + address()
		case 3:
			return []string{"Contact", "m"}[rng.IntN(2)] + ": " + address()
		case 4:
			return []string{"Call-ID", "i"}[rng.IntN(2)] + ":" + []string{" ", "", "  "}[rng.IntN(3)] + word(plain+"@.", odd)
		case 5:
			return "CSeq: " + []string{"1", "2147483647", "01"}[rng.IntN(3)] + pick("", "2147483648", "x") + pick(" ", "  ", "\t") + pick("REGISTER", "register", "OPTIONS", "")
		case 6:
			return "Max-Forwards: " + []string{"70", "0"}[rng.IntN(2)] + pick("", "4294967296", "-1", " 70 ")
		case 7:
			return []string{"Content-Length", "l"}[rng.IntN(2)] + ": " + pick("0", "1", "00")
		case 8:
			if strays() {
				return []string{"Content-Type", "Route", "Record-Route"}[rng.IntN(3)] + ": x"
			}
			return "Allow: REGISTER, OPTIONS"
		default:
			return []string{"Expires", "User-Agent", "Supported", "X-" + word(plain, odd)}[rng.IntN(4)] + []string{":", " :", ": "}[rng.IntN(3)] + word(plain+" ", odd)
		}
	}
	taken := 0
	const runs = 20000
	for i := range runs {
		odds = []float64{0, 0.01, 0.03, 0.1, 0.3}[i%5]
		lines := []string{[]string{"REGISTER", "OPTIONS"}[rng.IntN(2)] + pick("", "x", "-") + " " + uri() + " " + pick("SIP/2.0", "SIP/2.1", "sip/2.0")}
		for range 3 + rng.IntN(8) {
			lines = append(lines, header())
		}
		data := []byte(msg(lines...))
		got := parseRequest(data)
		if got == nil {
			continue
		}
		taken++
		want := sipgoParse(t, data)
		if want == nil {
			t.Fatalf("taken, but sipgo refuses %q", data)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("differs from sipgo's on %q:\n got %#v\nwant %#v", data, got, want)
		}
	}
	// The generator must reach the parser's own path often enough to mean something.
	if taken < runs/20 {
		t.Fatalf("only %d of %d generated requests were taken", taken, runs)
	}
	t.Logf("%d of %d taken, all equal to sipgo's", taken, runs)
}
