package registrar

import (
	"testing"

	"github.com/emiago/sipgo/sip"
)

var uriSeeds = []string{
	"sip:201@10.0.0.5:5062", "sips:201@pbx.example.com;transport=tls", "sip:201@[2001:db8::5]:5062;ob",
	"sip:201@127.0.0.1:5070;transport=tcp;x=\"a b\"?h=1&j", "sip:alice:secret@h", "sip:h", "sip:[::ffff:1.2.3.4]:5",
	"sip:a@::1", "sip:a@fe80::1%25eth0", "tel:+15551234", "urn:uuid:f81d4fae", "sip://h:5060", "sip:a@h;lr;maddr=1.2.3.4",
	"SIP:A@H:65535", "sip:a@h:0", "sip:*",
}

// FuzzURIStringMatchesSipgo: the stored Contact is sipgo's printing of the URI, to the byte.
func FuzzURIStringMatchesSipgo(f *testing.F) {
	for _, s := range uriSeeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		var u sip.Uri
		if err := sip.ParseUri(s, &u); err != nil {
			return
		}
		if got, want := uriString(&u), u.String(); got != want {
			t.Fatalf("%q: uriString %q, sipgo %q", s, got, want)
		}
	})
}

func TestURIStringAllocatesOnlyItsResult(t *testing.T) {
	var u sip.Uri
	if err := sip.ParseUri("sip:201@10.0.0.5:5062;transport=udp;ob", &u); err != nil {
		t.Fatal(err)
	}
	if n := testing.AllocsPerRun(100, func() { uriString(&u) }); n != 1 {
		t.Errorf("uriString allocates %.0f times, want 1 (the string)", n)
	}
}
