package registrar

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/digest"
)

// TestWriteMatchesSipgo holds write to what sipgo's NewResponseFromRequest prints, to the
// byte, but for the To tag's value (random in both), with the headers write adds after
// CSeq and Content-Length moved last.
func TestWriteMatchesSipgo(t *testing.T) {
	r, _, _ := newTestRegistrar(passwordHook, nil)
	r.cfg.ServerName = "sipsidecar-test"
	reqs := map[string]string{
		"plain": reg("Contact: <sip:201@10.0.0.5:5062>"),
		"rport asked": "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.5:5062;rport;branch=z9hG4bK-1\n" +
			"From: <sip:201@pbx>;tag=a\nTo: <sip:201@pbx>\nCall-ID: c1\nCSeq: 1 REGISTER\nContent-Length: 0\n\n",
		"rport asked, received sent": "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.5:5062;received=1.1.1.1;rport;branch=z9hG4bK-1\n" +
			"From: <sip:201@pbx>;tag=a\nTo: <sip:201@pbx>\nCall-ID: c1\nCSeq: 2147483647 REGISTER\nContent-Length: 0\n\n",
		"rport given": "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.5:5062;rport=5062;branch=z9hG4bK-1\n" +
			"From: <sip:201@pbx>;tag=a\nTo: <sip:201@pbx>\nCall-ID: c1\nCSeq: 1 REGISTER\nContent-Length: 0\n\n",
		"IPv6 sent-by": "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP [2001:db8::5]:5062;rport;branch=z9hG4bK-1\n" +
			"From: <sip:201@pbx>;tag=a\nTo: <sip:201@pbx>\nCall-ID: c1\nCSeq: 1 REGISTER\nContent-Length: 0\n\n",
		"proxied, Vias on lines and in one": "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP proxy:5060;branch=z9hG4bK-p;rport\n" +
			"Via: SIP/2.0/TCP a:5070;branch=z9hG4bK-a, SIP/2.0/UDP b;branch=z9hG4bK-b;received=10.1.1.1\n" +
			"Record-Route: <sip:proxy;lr>\nFrom: \"Bob\" <sip:201@pbx>;tag=a\nTo: \"Bob\" <sip:201@pbx;transport=udp>;x=1\n" +
			"Call-ID: c2@h\nCSeq: 7 REGISTER\nContent-Length: 0\n\n",
		"compact forms": "REGISTER sip:pbx SIP/2.0\nv: SIP/2.0/UDP 10.0.0.5:5062;branch=z9hG4bK-1\n" +
			"f: <sip:201@pbx>;tag=a\nt: <sip:201@pbx>\ni: c3\nCSeq: 1 REGISTER\nl: 0\n\n",
		"To already tagged": "OPTIONS sip:pbx SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK-2\n" +
			"Record-Route: <sip:p1;lr>, <sip:p2;lr>\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>;tag=zz\nCall-ID: x\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
		"no To": "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK-3\nFrom: <sip:a@h>;tag=1\n" +
			"Call-ID: x\nCSeq: 1 REGISTER\nContent-Length: 0\n\n",
	}
	tag := regexp.MustCompile(`(To: [^\r]*;tag=)[^;\r]+`)
	for name, raw := range reqs {
		for _, code := range []int{200, 401, 400} {
			for _, source := range []string{"192.0.2.7:40001", "[2001:db8::7]:40001"} {
				req := msg(t, raw, "")
				req.SetSource(source)
				req.SetTransport("UDP")
				ref := sip.NewResponseFromRequest(req, code, "X", nil)
				ref.RemoveHeader("Content-Length")
				ref.AppendHeader(sip.NewHeader("Allow", allowed))
				ref.AppendHeader(sip.NewHeader("Server", "sipsidecar-test"))
				a := r.reply(code, "X")
				if code == 200 {
					a.contacts = []boundContact{{uri: "sip:201@10.0.0.5:5062", expires: 30}, {uri: "sip:201@h;transport=tcp", instance: "<urn:uuid:1>", expires: 7200}}
					ref.AppendHeader(sip.NewHeader("Contact", "<sip:201@10.0.0.5:5062>;expires=30"))
					ref.AppendHeader(sip.NewHeader("Contact", `<sip:201@h;transport=tcp>;expires=7200;+sip.instance="<urn:uuid:1>"`))
				}
				if code == 401 {
					a.digest = challenge{realm: `pbx"x`, nonce: "n-1", algorithms: []string{"SHA-256", "md5"}, stale: true}
					ref.AppendHeader(sip.NewHeader("WWW-Authenticate", challengeString(`pbx"x`, "n-1", "SHA-256", true)))
					ref.AppendHeader(sip.NewHeader("WWW-Authenticate", challengeString(`pbx"x`, "n-1", "md5", true)))
				}
				a.add("X-Reason", "a reason").add("Date", "Tue, 01 Dec 2026 15:04:05 GMT").add("Retry-After", "5")
				ref.AppendHeader(sip.NewHeader("X-Reason", "a reason"))
				ref.AppendHeader(sip.NewHeader("Date", "Tue, 01 Dec 2026 15:04:05 GMT"))
				ref.AppendHeader(sip.NewHeader("Retry-After", "5"))
				ref.AppendHeader(sip.NewHeader("Content-Length", "0"))
				var w bytes.Buffer
				r.write(&w, req, a)

				want, have := tag.ReplaceAllString(ref.String(), "${1}T"), tag.ReplaceAllString(w.String(), "${1}T")
				if have != want {
					t.Errorf("%s, %d, from %s:\n got: %q\nwant: %q", name, code, source, have, want)
				}
				if req.To() != nil && !req.To().Params.Has("tag") && !tag.MatchString(w.String()) {
					t.Errorf("%s: no To tag added:\n%s", name, w.String())
				}
				// The request itself is left as it came: the top Via still asks for rport
				// without a value, so a retransmission is keyed and answered the same way.
				if again := msg(t, raw, ""); req.String() != again.String() {
					t.Errorf("%s: write changed the request:\n%s\nwas\n%s", name, req, again)
				}
			}
		}
	}
}

func challengeString(realm, nonce, alg string, stale bool) string {
	return string(digest.AppendChallenge(nil, realm, nonce, alg, stale))
}

// TestWriteAllocations: an answer is written into the caller's buffer without allocating
// (23 allocations when the answer was a sipgo Response).
func TestWriteAllocations(t *testing.T) {
	r, _, _ := newTestRegistrar(passwordHook, nil)
	req := msg(t, "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.5:5062;rport;branch=z9hG4bK-1\n"+
		"From: <sip:201@pbx>;tag=a\nTo: <sip:201@pbx>\nCall-ID: c1\nCSeq: 100 REGISTER\nContent-Length: 0\n\n", "")
	req.SetSource("192.0.2.7:40001")
	a := r.reply(200, "OK")
	a.contacts = []boundContact{{uri: "sip:201@10.0.0.5:5062", expires: 3600}}
	a.add("Date", "Tue, 01 Dec 2026 15:04:05 GMT")
	var w bytes.Buffer
	a.digest = challenge{realm: "pbx", nonce: "n", algorithms: []string{"SHA-256", "MD5"}}
	if n := testing.AllocsPerRun(100, func() { w.Reset(); r.write(&w, req, a) }); n != 0 {
		t.Errorf("write allocates %.0f times per answer, want 0", n)
	}
}

func TestTagsAreFreshAndRandomLooking(t *testing.T) {
	seen := map[string]bool{}
	for range 5000 { // several refills of the buffer
		var w bytes.Buffer
		writeTag(&w)
		g := w.String()
		if len(g) != 16 || strings.Trim(g, "0123456789abcdef") != "" {
			t.Fatalf("tag %q: want 16 hex digits", g)
		}
		if seen[g] {
			t.Fatalf("tag %q handed out twice", g)
		}
		seen[g] = true
	}
}

func TestSipDate(t *testing.T) {
	a := time.Date(2026, 12, 1, 15, 4, 5, 0, time.UTC)
	for _, c := range []struct {
		at   time.Time
		want string
	}{
		{a, "Tue, 01 Dec 2026 15:04:05 GMT"},
		{a.Add(400 * time.Millisecond), "Tue, 01 Dec 2026 15:04:05 GMT"},
		{a.Add(time.Second), "Tue, 01 Dec 2026 15:04:06 GMT"},
		{a.In(time.FixedZone("X", 3600)), "Tue, 01 Dec 2026 15:04:05 GMT"},
		{a.Add(-time.Hour), "Tue, 01 Dec 2026 14:04:05 GMT"},
	} {
		if got := sipDate(c.at); got != c.want {
			t.Errorf("sipDate(%v) = %q, want %q", c.at, got, c.want)
		}
	}
}

func FuzzIsScannerSameAsToLower(f *testing.F) {
	for _, s := range []string{"friendly-scanner", "SIPVicious 0.3", "Zoiper 5", "x FRIENDLY-Scanner y", "sipviciou", "ſipvicious", "K", ""} {
		f.Add(s, "sipvicious")
		f.Add(s, "friendly-scanner")
	}
	f.Fuzz(func(t *testing.T, ua, name string) {
		name = strings.ToLower(name)
		want := strings.Contains(strings.ToLower(ua), name)
		if got := isScanner(ua, []string{name}); got != want {
			t.Fatalf("isScanner(%q, %q) = %v, strings.ToLower says %v", ua, name, got, want)
		}
	})
}

type countDrops map[string]int

func (c countDrops) Register(string)       {}
func (c countDrops) Dropped(reason string) { c[reason]++ }

// TestUnroutableAndOtherVersions: a request without a usable Via gets no answer (there is
// nowhere to send one), and one of another SIP version a 505 in SIP/2.0.
func TestUnroutableAndOtherVersions(t *testing.T) {
	r, _, _ := newTestRegistrar(passwordHook, nil)
	drops := countDrops{}
	r.metrics = drops
	for name, raw := range map[string]string{
		"no Via":    "OPTIONS sip:pbx SIP/2.0\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>\nCall-ID: x\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
		"empty Via": "OPTIONS sip:pbx SIP/2.0\nV:// 00:A\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>\nCall-ID: x\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
		"a later Via without a host": "OPTIONS sip:pbx SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK-1\nVia: SIP/2.0/UDP \n" +
			"From: <sip:a@h>;tag=1\nTo: <sip:b@h>\nCall-ID: x\nCSeq: 1 OPTIONS\nContent-Length: 0\n\n",
	} {
		req, err := sip.NewParser().ParseSIP([]byte(strings.ReplaceAll(raw, "\n", "\r\n")))
		if err != nil {
			continue // sipgo refuses it already: nothing reaches Handle
		}
		if res := handle(t, r, req.(*sip.Request), src); res != nil {
			t.Errorf("%s: answered %d, want no answer", name, res.StatusCode)
		}
	}
	if drops["unroutable"] == 0 {
		t.Errorf("no request counted as unroutable: %v", drops)
	}
	for _, v := range []string{"SIP/3.0", "SIP"} {
		raw := "OPTIONS sip:pbx " + v + "\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK-2\r\nFrom: <sip:a@h>;tag=1\r\nTo: <sip:b@h>\r\nCall-ID: x\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
		req, err := sip.NewParser().ParseSIP([]byte(raw))
		if err != nil {
			t.Logf("%s: sipgo refuses it: %v", v, err)
			continue
		}
		var w bytes.Buffer
		if code := r.Handle(context.Background(), req.(*sip.Request), src, &w); code != 505 || !strings.HasPrefix(w.String(), "SIP/2.0 505 ") {
			t.Errorf("%s: answered %d %q, want SIP/2.0 505", v, code, w.String())
		}
	}
}

func TestAsksHook(t *testing.T) {
	for _, c := range []struct {
		raw, auth string
		want      bool
	}{
		{reg("Contact: <sip:201@h>"), "", false},
		{reg("Contact: <sip:201@h>"), `Digest username="201"`, true},
		{strings.Replace(reg("Contact: <sip:201@h>"), "{AUTH}", `AUTHORIZATION: Digest username="201"`, 1), "", true},
		{"OPTIONS sip:pbx SIP/2.0\nVia: SIP/2.0/UDP h;branch=z9hG4bK-2\nFrom: <sip:a@h>;tag=1\nTo: <sip:b@h>\nCall-ID: x\nCSeq: 1 OPTIONS\n{AUTH}\nContent-Length: 0\n\n", `Digest username="201"`, false},
	} {
		if got := AsksHook(msg(t, c.raw, c.auth)); got != c.want {
			t.Errorf("AsksHook(%q with %q) = %v, want %v", c.raw[:8], c.auth, got, c.want)
		}
	}
}
