package registrar

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/emiago/sipgo/sip"
)

// TestReplyMatchesSipgo holds reply to what sipgo's NewResponseFromRequest writes, to the
// byte, but for the To tag's value (random in both) and the headers only reply adds.
func TestReplyMatchesSipgo(t *testing.T) {
	r, _, _ := newTestRegistrar(passwordHook, nil)
	r.cfg.ServerName = "sipsidecar-test"
	reqs := map[string]string{
		"plain": reg("<sip:201@10.0.0.5:5062>"),
		"rport asked": "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.5:5062;rport;branch=z9hG4bK-1\n" +
			"From: <sip:201@pbx>;tag=a\nTo: <sip:201@pbx>\nCall-ID: c1\nCSeq: 1 REGISTER\nContent-Length: 0\n\n",
		"rport given": "REGISTER sip:pbx SIP/2.0\nVia: SIP/2.0/UDP 10.0.0.5:5062;rport=5062;branch=z9hG4bK-1\n" +
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
			req := msg(t, raw, "")
			req.SetSource("192.0.2.7:40001")
			req.SetTransport("UDP")
			ref := sip.NewResponseFromRequest(req, code, "X", nil)
			ref.AppendHeader(sip.NewHeader("Allow", allowed))
			ref.AppendHeader(sip.NewHeader("Server", "sipsidecar-test"))
			got := r.reply(req, code, "X")

			want, have := tag.ReplaceAllString(ref.String(), "${1}T"), tag.ReplaceAllString(got.String(), "${1}T")
			// sipgo puts Content-Length where SetBody is called, after CSeq; so does reply.
			if have != want {
				t.Errorf("%s, %d:\n got: %q\nwant: %q", name, code, have, want)
			}
			if got.Destination() != ref.Destination() || got.Transport() != ref.Transport() {
				t.Errorf("%s: destination %q/%q, want %q/%q", name, got.Destination(), got.Transport(), ref.Destination(), ref.Transport())
			}
			// The request itself is left as it came: the top Via still asks for rport
			// without a value, so a retransmission is keyed and answered the same way.
			if again := msg(t, raw, ""); req.String() != again.String() {
				t.Errorf("%s: reply changed the request:\n%s\nwas\n%s", name, req, again)
			}
		}
	}
}

func TestTagsAreFreshAndRandomLooking(t *testing.T) {
	seen := map[string]bool{}
	for range 5000 { // several refills of the buffer
		g := newTag()
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
