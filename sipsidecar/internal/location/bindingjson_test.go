package location

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// The reference for bindingjson.go is what the Redis store did before it: json.Marshal(b)
// and json.Unmarshal(raw, &b) == nil.

func marshalReference(b Binding) ([]byte, error) { return json.Marshal(b) }

func unmarshalReference(raw []byte) (Binding, bool) {
	var b Binding
	err := json.Unmarshal(raw, &b)
	return b, err == nil
}

// storedBinding is a binding as the registrar stores it for a phone behind NAT that sent a
// +sip.instance (whose angle brackets json.Marshal escapes).
func storedBinding() Binding {
	now := time.Date(2026, 12, 1, 15, 15, 45, 123456789, time.UTC)
	return Binding{
		AOR: "201@pbx.example.com", Contact: "sip:201@192.168.1.34:49152;transport=udp;ob",
		ExpiresAt: now.Add(time.Hour), Granted: 3600, AuthAt: now, UpdatedAt: now,
		CallID: "Yjc2ZDg1ZWFmMTFiNzE2ZDQ3ZDQ2ZjM5NTc0ODg4Nzg.", CSeq: 42,
		Source: "203.0.113.7:49152", Transport: "udp", UserAgent: "Zoiper rv2.10.20.5",
		InstanceID: "<urn:uuid:5a4a8e6e-7c5d-4b3e-9f0a-0d6e5c1b2a3f>", NAT: true,
		DisplayName: "Alice", CallHook: "http://127.0.0.1:3000/call",
		CallStatusHook: "http://127.0.0.1:3000/status",
	}
}

// sampleBindings are the shapes stored bindings take.
func sampleBindings() map[string]Binding {
	full := storedBinding()
	plain := full
	plain.InstanceID, plain.UserAgent, plain.Q, plain.DisplayName = "", "", "", ""
	plain.CallHook, plain.CallStatusHook, plain.NAT = "", "", false
	ws := full
	ws.Transport, ws.WebRTC, ws.Q = "wss", true, "0.5"
	ws.CallHook = "https://hooks.example.com/call?a=1&b=2"
	ws.DisplayName = `Zoë "the <boss>" O'Hara`
	now := time.Now() // a monotonic reading, the local zone
	live := full
	live.ExpiresAt, live.AuthAt, live.UpdatedAt = now.Add(time.Minute), now, now
	zoned := full
	zoned.ExpiresAt = full.ExpiresAt.In(time.FixedZone("CET", 3600))
	zoned.AuthAt = full.AuthAt.In(time.FixedZone("", -(9*3600 + 30*60)))
	zoned.UpdatedAt = time.Date(2026, 12, 1, 15, 15, 45, 0, time.UTC) // whole seconds
	return map[string]Binding{
		"as the registrar stores it":               full,
		"without the omitempty fields":             plain,
		"WebRTC with q, a query string, odd name":  ws,
		"times from time.Now":                      live,
		"times in other zones and to the second":   zoned,
		"the zero binding":                         {},
		"negative granted and the largest cseq":    {Granted: -1 << 63, CSeq: 1<<32 - 1},
		"years 0 and 9999, RFC 3339's bounds":      {ExpiresAt: time.Date(0, 1, 1, 0, 0, 0, 0, time.UTC), AuthAt: time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC)},
		"a zone offset with seconds (not written)": {UpdatedAt: full.UpdatedAt.In(time.FixedZone("LMT", 3600+17*60+33))},
		"a zone offset of 23:59, the largest":      {UpdatedAt: full.UpdatedAt.In(time.FixedZone("", 24*3600-60))},
		"strings json.Marshal escapes":             {AOR: "\x00\x01\x1f\x7f\b\f\n\r\t\"\\/<>&", Contact: "a\u2028b\u2029c\u2027\u202a", CallID: "\xff\xfe\xed\xa0\x80\xc3", Source: "é😀\uFFFD"},
		"invalid UTF-8 at the end of a string":     {UserAgent: "abc\xe2\x82"},
	}
}

func TestAppendBindingSameAsMarshal(t *testing.T) {
	cases := sampleBindings()
	zone24 := time.FixedZone("", 24*3600)
	cases["a year before 0 is an error"] = Binding{ExpiresAt: time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC)}
	cases["a year after 9999 is an error"] = Binding{UpdatedAt: time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)}
	cases["a zone offset of a day is an error"] = Binding{AuthAt: time.Date(2026, 1, 1, 0, 0, 0, 0, zone24)}
	for name, b := range cases {
		t.Run(name, func(t *testing.T) {
			want, wantErr := marshalReference(b)
			prefix := []byte("prefix")
			got, err := appendBinding(prefix, b)
			if (err == nil) != (wantErr == nil) || err != nil && err.Error() != wantErr.Error() {
				t.Fatalf("error %v, json.Marshal's %v", err, wantErr)
			}
			if !bytes.HasPrefix(got, []byte("prefix")) || !bytes.Equal(got[len("prefix"):], want) {
				t.Fatalf("appendBinding wrote\n%s\njson.Marshal\n%s", got, want)
			}
		})
	}
}

func TestDecodeBindingSameAsUnmarshal(t *testing.T) {
	stored, _ := appendBinding(nil, storedBinding())
	deep := `{"x":` + strings.Repeat("[", maxSkipDepth+1) + strings.Repeat("]", maxSkipDepth+1) + `,"aor":"a"}`
	notDeep := `{"x":` + strings.Repeat("[", maxSkipDepth) + strings.Repeat("]", maxSkipDepth) + `,"aor":"a"}`
	cases := []struct {
		name string
		raw  string
		fast bool // read by the fast path, json.Unmarshal not consulted
	}{
		{"as appendBinding and json.Marshal write it", string(stored), true},
		{"the empty object", `{}`, true},
		{"keys in any ASCII case", `{"AOR":"a","Contact":"c","EXPIRES_AT":"2026-12-01T15:15:45Z","Supports_WebRTC":true,"CSeq":7}`, true},
		{"the last of duplicate keys wins", `{"aor":"a","AOR":"b","granted":1,"granted":2,"nat":true,"nat":false,"auth_at":"2026-01-01T00:00:00Z","auth_at":"2027-01-01T00:00:00Z"}`, true},
		{"null leaves a field as it is", `{"aor":"a","aor":null,"granted":5,"granted":null,"cseq":3,"cseq":null,"nat":true,"nat":null,"expires_at":"2026-12-01T15:15:45Z","expires_at":null}`, true},
		{"unknown fields are skipped whatever they hold", `{"x":{"a":[1,-2.5e-3,0,1E+9,true,false,null,"s\u00e9\"",{}],"b":{"c":[]}},"aor":"a","y":[],"z":"\ud800"}`, true},
		{"nesting up to the fast path's depth", notDeep, true},
		{"whitespace everywhere", " \t\r\n{ \"aor\" :\n\"a\" ,\t\"granted\" : 60 , \"nat\":true } \n", true},
		{"escapes in strings", `{"aor":"\u003c\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00\u2028\u0000","contact":"\uD83D\uDE00"}`, true},
		{"lone and broken surrogates become U+FFFD", `{"aor":"\ud800x\udc00\ud800\u0041\ud83d\ud83d\ude00\ude00"}`, true},
		{"invalid UTF-8 becomes U+FFFD", "{\"aor\":\"\xff\xed\xa0\x80é\xe2\x82\",\"contact\":\"\xc3\"}", true},
		{"invalid UTF-8 next to an escape", "{\"aor\":\"\\n\xff\"}", true},
		{"integers at the ends of their ranges", `{"granted":-9223372036854775808,"cseq":4294967295}`, true},
		{"the largest int", `{"granted":9223372036854775807,"cseq":0}`, true},
		{"minus zero for an int", `{"granted":-0}`, true},
		{"times with offsets and fractions", `{"expires_at":"2026-12-01T16:15:45.5+01:00","auth_at":"2026-12-01T05:45:45.000000001-09:30","updated_at":"2026-12-01T15:15:45.123Z"}`, true},
		{"a time as time.Parse reads RFC 3339 loosely", `{"expires_at":"2026-12-01T15:15:45,5Z","auth_at":"2026-12-01T15:15:45+24:00"}`, true},
		{"year 0", `{"expires_at":"0000-01-01T00:00:00Z"}`, true},

		// json.Unmarshal decides these.
		{"a key with an escape", `{"\u0061or":"a"}`, false},
		{"a non-ASCII key encoding/json folds onto a field", `{"ſource":"1.2.3.4:5","tranſport":"tcp"}`, false},
		{"a non-ASCII key matching no field", `{"é":1,"aor":"a"}`, false},
		{"null for the whole binding", `null`, false},
		{"nesting deeper than the fast path reads", deep, false},
		{"a string for an int", `{"granted":"60"}`, false},
		{"a fraction for an int", `{"granted":60.0}`, false},
		{"an exponent for an int", `{"granted":1e2}`, false},
		{"an int overflowing", `{"granted":9223372036854775808}`, false},
		{"an int underflowing", `{"granted":-9223372036854775809}`, false},
		{"a huge int", `{"granted":123456789012345678901234567890}`, false},
		{"a uint32 overflowing", `{"cseq":4294967296}`, false},
		{"a negative uint32", `{"cseq":-1}`, false},
		{"minus zero for a uint32", `{"cseq":-0}`, false},
		{"a number for a string", `{"aor":1}`, false},
		{"a string for a bool", `{"nat":"true"}`, false},
		{"an object for a string", `{"aor":{}}`, false},
		{"a time that is no time", `{"expires_at":"yesterday"}`, false},
		{"a time as a number", `{"expires_at":0}`, false},
		{"a time with an escape", `{"expires_at":"2026-12-01T15:15:45\u005a"}`, false},
		{"a year after 9999", `{"expires_at":"10000-01-01T00:00:00Z"}`, false},
		{"a time longer than the fast path holds", `{"expires_at":"` + strings.Repeat("1", 70) + `"}`, false},
		{"an error after fields were filled", `{"aor":"a","granted":"x","contact":"c","nat":true}`, false},
		{"leading zeros", `{"granted":01}`, false},
		{"a bad escape", `{"aor":"\x"}`, false},
		{"a bad escape in an unknown field", `{"x":"\u12"}`, false},
		{"a control byte in a string", "{\"aor\":\"a\nb\"}", false},
		{"a trailing comma", `{"aor":"a",}`, false},
		{"trailing data", `{}x`, false},
		{"two objects", `{}{}`, false},
		{"truncated", string(stored[:len(stored)-1]), false},
		{"truncated in a string", `{"aor":"ab`, false},
		{"an array", `[]`, false},
		{"nothing", ``, false},
		{"a bad literal", `{"nat":tru}`, false},
		{"a bad number in an unknown field", `{"x":-}`, false},
		{"a fraction without digits", `{"x":1.}`, false},
		{"an exponent without digits", `{"x":1e+}`, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			want, wantOK := unmarshalReference([]byte(c.raw))
			if got, ok := decodeBinding(c.raw); ok != wantOK || !reflect.DeepEqual(got, want) {
				t.Errorf("decodeBinding = %+v, %v\njson.Unmarshal %+v, %v", got, ok, want, wantOK)
			}
			if got, ok := decodeBinding([]byte(c.raw)); ok != wantOK || !reflect.DeepEqual(got, want) {
				t.Errorf("decodeBinding([]byte) = %+v, %v\njson.Unmarshal %+v, %v", got, ok, want, wantOK)
			}
			if _, fast := fastBinding(c.raw); fast != c.fast {
				t.Errorf("fast path took it: %v, want %v", fast, c.fast)
			}
		})
	}
}

// Stored bindings are read by the fast path: a change that sent them to encoding/json would
// still decode them right, and only show here (and in the CPU profile).
func TestStoredBindingsStayOnFastPath(t *testing.T) {
	for name, b := range sampleBindings() {
		t.Run(name, func(t *testing.T) {
			raw, err := appendBinding(nil, b)
			if err != nil {
				t.Fatal(err)
			}
			got, ok := fastBinding(string(raw))
			want, wantOK := unmarshalReference(raw)
			if !ok || !wantOK || !reflect.DeepEqual(got, want) {
				t.Fatalf("fast path %+v, %v\njson.Unmarshal %+v, %v\nfor %s", got, ok, want, wantOK, raw)
			}
		})
	}
}

// A binding without escapes decodes without allocating: its strings are slices of what
// Redis returned.
func TestDecodeBindingSlicesItsInput(t *testing.T) {
	b := storedBinding()
	b.InstanceID = "urn:uuid:5a4a8e6e-7c5d-4b3e-9f0a-0d6e5c1b2a3f"
	raw, _ := appendBinding(nil, b)
	s := string(raw)
	if n := testing.AllocsPerRun(100, func() { decodeBinding(s) }); n != 0 {
		t.Fatalf("%v allocations per decode, want 0", n)
	}
}

func FuzzAppendBinding(f *testing.F) {
	for _, b := range sampleBindings() {
		_, zone := b.AuthAt.Zone()
		f.Add(b.AOR, b.Contact, b.CallID, b.Source, b.Transport, b.UserAgent, b.InstanceID, b.Q,
			b.DisplayName, b.CallHook, b.CallStatusHook, b.Granted, b.CSeq, b.NAT, b.WebRTC,
			b.ExpiresAt.Unix(), int64(b.ExpiresAt.Nanosecond()), b.AuthAt.Unix(), int64(b.AuthAt.Nanosecond()),
			b.UpdatedAt.Unix(), int64(b.UpdatedAt.Nanosecond()), zone)
	}
	f.Add("", "", "", "", "", "", "", "", "", "", "", 0, uint32(0), false, false,
		int64(253402300800), int64(0), int64(-62167219201), int64(-1), int64(0), int64(0), 86400)
	f.Fuzz(func(t *testing.T, aor, contact, callID, source, transport, userAgent, instanceID, q,
		displayName, callHook, callStatusHook string, granted int, cseq uint32, nat, webRTC bool,
		expSec, expNsec, authSec, authNsec, updSec, updNsec int64, zone int) {
		loc := time.UTC
		if zone != 0 {
			loc = time.FixedZone("", zone)
		}
		b := Binding{
			AOR: aor, Contact: contact, ExpiresAt: time.Unix(expSec, expNsec).In(loc), Granted: granted,
			AuthAt: time.Unix(authSec, authNsec).In(loc), UpdatedAt: time.Unix(updSec, updNsec),
			CallID: callID, CSeq: cseq, Source: source, Transport: transport, UserAgent: userAgent,
			InstanceID: instanceID, Q: q, NAT: nat, DisplayName: displayName, CallHook: callHook,
			CallStatusHook: callStatusHook, WebRTC: webRTC,
		}
		want, wantErr := marshalReference(b)
		got, err := appendBinding([]byte("x"), b)
		if (err == nil) != (wantErr == nil) || err != nil && err.Error() != wantErr.Error() {
			t.Fatalf("error %v, json.Marshal's %v", err, wantErr)
		}
		if string(got[:1]) != "x" || !bytes.Equal(got[1:], want) {
			t.Fatalf("appendBinding wrote\n%q\njson.Marshal\n%q", got, want)
		}
		if err != nil {
			return
		}
		// What appendBinding writes, the fast path reads, as json.Unmarshal does.
		dec, ok := fastBinding(string(want))
		ref, refOK := unmarshalReference(want)
		if !ok || !refOK || !reflect.DeepEqual(dec, ref) {
			t.Fatalf("fast path %+v, %v\njson.Unmarshal %+v, %v\nfor %s", dec, ok, ref, refOK, want)
		}
	})
}

func FuzzDecodeBinding(f *testing.F) {
	for _, b := range sampleBindings() {
		raw, _ := appendBinding(nil, b)
		f.Add(raw)
	}
	for _, s := range []string{
		`{"AOR":"a","aor":null,"Granted":-0,"cseq":4294967295,"nat":true,"NAT":null}`,
		`{"x":{"a":[1,-2.5e-3,true,false,null,"s\u00e9"]},"expires_at":"2026-12-01T16:15:45.5+01:00"}`,
		`{"aor":"\ud800x\udc00\ud83d\ude00\u003c","ſource":"s","\u0061or":"b"}`,
		"{\"aor\":\"\xff\xed\xa0\x80\",\"contact\":\"\\n\xc3\"}",
		`{"aor":"a","granted":"x","contact":"c","updated_at":"2026-12-01T15:15:45,5Z"}`,
		`null`, ` {} `, `[]`, `{"granted":1e2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		want, wantOK := unmarshalReference(raw)
		got, ok := decodeBinding(string(raw))
		if ok != wantOK || !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeBinding = %+v, %v\njson.Unmarshal %+v, %v", got, ok, want, wantOK)
		}
		got, ok = decodeBinding(raw)
		if ok != wantOK || !reflect.DeepEqual(got, want) {
			t.Fatalf("decodeBinding([]byte) = %+v, %v\njson.Unmarshal %+v, %v", got, ok, want, wantOK)
		}
	})
}

// The store encodes each binding it writes and decodes each one it reads (every REGISTER
// reads its AOR once or twice and writes it once).
func BenchmarkBindingEncode(b *testing.B) {
	bd := storedBinding()
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(bd); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("appendBinding", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := appendBinding(nil, bd); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkBindingDecode(b *testing.B) {
	raw, _ := appendBinding(nil, storedBinding())
	v := string(raw) // go-redis hands hash values over as strings
	b.Run("json.Unmarshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			var bd Binding
			if json.Unmarshal([]byte(v), &bd) != nil {
				b.Fatal("not decoded")
			}
		}
	})
	b.Run("decodeBinding", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := decodeBinding(v); !ok {
				b.Fatal("not decoded")
			}
		}
	})
}
