package authhook

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
)

// The encoding/json code the hand decoder replaced, kept as the reference it must agree with.

func refDecodeVerdict(raw []byte) (Verdict, error) {
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil { // also refuses trailing data
		return Verdict{}, fmt.Errorf("%w: answer is not one JSON object", ErrUnavailable)
	}
	switch a.Status {
	case "ok":
		v := Verdict{OK: true, CallHook: a.CallHook, CallStatusHook: a.CallStatusHook, DisplayName: a.DisplayName}
		if a.Expires != nil {
			if *a.Expires < 0 {
				return Verdict{}, fmt.Errorf("%w: negative expires", ErrUnavailable)
			}
			v.Expires = *a.Expires
		}
		return v, nil
	case "fail":
		return Verdict{OK: false, Msg: a.Msg}, nil
	}
	return Verdict{}, fmt.Errorf("%w: unknown status %q", ErrUnavailable, a.Status)
}

func refDecodeAnswers(raw []byte, n int) ([]outcome, error) {
	var answers []json.RawMessage
	if jerr := json.Unmarshal(raw, &answers); jerr != nil || len(answers) != n {
		return nil, fmt.Errorf("%w: batch answer is not an array of %d answers", ErrUnavailable, n)
	}
	outs := make([]outcome, n)
	for i := range answers {
		v, err := refDecodeVerdict(answers[i])
		outs[i] = outcome{v: v, err: err}
	}
	return outs, nil
}

// sameOutcome reports how got differs from want: the verdict, and the error's text.
func sameOutcome(got, want outcome) string {
	if got.v != want.v || (got.err == nil) != (want.err == nil) {
		return fmt.Sprintf("%+v, %v; want %+v, %v", got.v, got.err, want.v, want.err)
	}
	if got.err != nil && (got.err.Error() != want.err.Error() || !errors.Is(got.err, ErrUnavailable)) {
		return fmt.Sprintf("error %q, want %q", got.err, want.err)
	}
	return ""
}

// checkAnswer holds decodeVerdict to the reference on raw as a single answer, and
// decodeAnswers on raw as a batch of n.
func checkAnswer(t *testing.T, raw []byte, n int) {
	t.Helper()
	v, err := decodeVerdict(raw)
	rv, rerr := refDecodeVerdict(raw)
	if d := sameOutcome(outcome{v, err}, outcome{rv, rerr}); d != "" {
		t.Errorf("single answer %q: %s", raw, d)
	}
	outs := make([]outcome, n)
	err = decodeAnswers(raw, outs)
	want, werr := refDecodeAnswers(raw, n)
	if (err == nil) != (werr == nil) || err != nil && err.Error() != werr.Error() {
		t.Fatalf("batch of %d %q: error %v, want %v", n, raw, err, werr)
	}
	if err != nil {
		return
	}
	for i := range outs {
		if d := sameOutcome(outs[i], want[i]); d != "" {
			t.Errorf("batch of %d %q, answer %d: %s", n, raw, i, d)
		}
	}
}

// expect is a verdict, or "no verdict" when unavail.
type expect struct {
	v       Verdict
	unavail bool
}

var noVerdict = expect{unavail: true}

func TestDecodeVerdict(t *testing.T) {
	ok := func(v Verdict) expect { v.OK = true; return expect{v: v} }
	cases := []struct {
		name   string
		answer string
		want   expect
	}{
		{"all fields", `{"status":"ok","msg":"m","expires":600,"call_hook":"h","call_status_hook":"s","display_name":"d"}`,
			ok(Verdict{Expires: 600, CallHook: "h", CallStatusHook: "s", DisplayName: "d"})},
		{"fail keeps msg only", `{"status":"fail","msg":"bad","display_name":"d","expires":5}`, expect{v: Verdict{Msg: "bad"}}},
		{"whitespace everywhere", " \t\r\n{ \"status\" :\n\"ok\" ,\t\"expires\" : 7 } \n", ok(Verdict{Expires: 7})},
		{"Go's HTML escapes are unquoted", `{"status":"ok","call_hook":"http://x/c?a=1\u0026b=\u003c2\u003e"}`, ok(Verdict{CallHook: "http://x/c?a=1&b=<2>"})},
		{"short escapes", `{"status":"fail","msg":"a\"b\\c\/d\b\f\n\r\t"}`, expect{v: Verdict{Msg: "a\"b\\c/d\b\f\n\r\t"}}},
		{"escaped status", `{"status":"\u006fk"}`, ok(Verdict{})},
		{"surrogate pair", `{"status":"ok","display_name":"\ud83d\ude00"}`, ok(Verdict{DisplayName: "😀"})},
		{"lone high surrogate", `{"status":"ok","display_name":"a\ud83db"}`, ok(Verdict{DisplayName: "a\ufffdb"})},
		{"high surrogate then a non-pair escape", `{"status":"ok","display_name":"\ud83d\u0041"}`, ok(Verdict{DisplayName: "\ufffdA"})},
		{"lone low surrogate", `{"status":"ok","display_name":"\ude00"}`, ok(Verdict{DisplayName: "\ufffd"})},
		{"UTF-8 as it is", `{"status":"ok","display_name":"Zoë 李"}`, ok(Verdict{DisplayName: "Zoë 李"})},
		{"invalid UTF-8 becomes U+FFFD", "{\"status\":\"ok\",\"display_name\":\"a\xffb\xed\xa0\x80\"}", ok(Verdict{DisplayName: "a\ufffdb\ufffd\ufffd\ufffd"})},
		{"keys match in any ASCII case", `{"STATUS":"ok","Display_Name":"d","eXpires":3}`, ok(Verdict{DisplayName: "d", Expires: 3})},
		{"a non-ASCII key folds onto a field name", `{"ſtatus":"ok"}`, ok(Verdict{})},
		{"Kelvin sign folds onto k", `{"status":"ok","call_hoo` + "\u212a" + `":"h"}`, ok(Verdict{CallHook: "h"})},
		{"escaped key", `{"st\u0061tus":"ok"}`, ok(Verdict{})},
		{"last duplicate wins", `{"status":"fail","status":"ok","expires":1,"Expires":2}`, ok(Verdict{Expires: 2})},
		{"null leaves a string as it was", `{"status":"ok","status":null,"display_name":"d","display_name":null}`, ok(Verdict{DisplayName: "d"})},
		{"null clears expires", `{"status":"ok","expires":-5,"expires":null}`, ok(Verdict{})},
		{"expires -0", `{"status":"ok","expires":-0}`, ok(Verdict{})},
		{"largest expires", `{"status":"ok","expires":9223372036854775807}`, ok(Verdict{Expires: 1<<63 - 1})},
		{"unknown fields of every kind skipped", `{"x":{"a":[1,2.5e-3,{"b":null}],"c":"\u00e9"},"status":"ok","y":[],"z":true,"w":false,"v":-1E+2}`, ok(Verdict{})},
		{"empty object has no status", `{}`, noVerdict},
		{"null has no status", `null`, noVerdict},
		{"unknown status", `{"status":"OK"}`, noVerdict},
		{"negative expires", `{"status":"ok","expires":-1}`, noVerdict},
		{"expires as a string", `{"status":"ok","expires":"60"}`, noVerdict},
		{"fractional expires", `{"status":"ok","expires":60.0}`, noVerdict},
		{"expires with an exponent", `{"status":"ok","expires":6e1}`, noVerdict},
		{"expires overflows", `{"status":"ok","expires":9223372036854775808}`, noVerdict},
		{"overflowing expires spoils a fail too", `{"status":"fail","expires":-9223372036854775809}`, noVerdict},
		{"status as a number", `{"status":1}`, noVerdict},
		{"status as an object", `{"status":{}}`, noVerdict},
		{"display_name as an array", `{"status":"ok","display_name":["d"]}`, noVerdict},
		{"msg as a bool", `{"status":"fail","msg":false}`, noVerdict},
		{"wrong type, then the right one", `{"status":1,"status":"ok"}`, noVerdict},
		{"an array", `[{"status":"ok"}]`, noVerdict},
		{"a string", `"ok"`, noVerdict},
		{"trailing data", `{"status":"ok"}x`, noVerdict},
		{"two objects", `{"status":"ok"}{"status":"ok"}`, noVerdict},
		{"trailing comma", `{"status":"ok",}`, noVerdict},
		{"leading zero", `{"status":"ok","expires":01}`, noVerdict},
		{"control byte in a string", "{\"status\":\"ok\",\"msg\":\"a\x01\"}", noVerdict},
		{"bad escape", `{"status":"ok","msg":"\'"}`, noVerdict},
		{"short \\u escape", `{"status":"ok","msg":"\u00e"}`, noVerdict},
		{"single quotes", `{'status':'ok'}`, noVerdict},
		{"truncated", `{"status":"ok"`, noVerdict},
		{"empty", ``, noVerdict},
		{"deep unknown value", `{"status":"ok","x":` + strings.Repeat("[", 100) + strings.Repeat("]", 100) + `}`, ok(Verdict{})},
		{"too deep for encoding/json", `{"status":"ok","x":` + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + `}`, noVerdict},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v, err := decodeVerdict([]byte(c.answer))
			if c.want.unavail {
				if !errors.Is(err, ErrUnavailable) || v != (Verdict{}) {
					t.Fatalf("%+v, %v: want no verdict", v, err)
				}
			} else if err != nil || v != c.want.v {
				t.Fatalf("%+v, %v: want %+v", v, err, c.want.v)
			}
			checkAnswer(t, []byte(c.answer), 1)
			checkAnswer(t, []byte("[ "+c.answer+" ]"), 1) // batch of one (invalid JSON fails it whole)
		})
	}
}

func TestDecodeAnswers(t *testing.T) {
	okV := expect{v: Verdict{OK: true}}
	cases := []struct {
		name   string
		answer string
		n      int
		want   []expect // nil: the whole batch fails
	}{
		{"answers in order", `[{"status":"ok","display_name":"a"},{"status":"fail","msg":"b"},{"status":"ok","expires":3}]`, 3,
			[]expect{{v: Verdict{OK: true, DisplayName: "a"}}, {v: Verdict{Msg: "b"}}, {v: Verdict{OK: true, Expires: 3}}}},
		{"whitespace", "\n[ {\"status\":\"ok\"} ,\r\n\t{\"status\":\"ok\"} ]\n", 2, []expect{okV, okV}},
		{"a bad answer fails only its own callback", `[{"status":"ok"},{"status":"ok","expires":"60"},null,7,"x",[],{"status":"maybe"},{"status":"ok","expires":-1},{"status":"ok"}]`, 9,
			[]expect{okV, noVerdict, noVerdict, noVerdict, noVerdict, noVerdict, noVerdict, noVerdict, okV}},
		{"invalid JSON in one answer fails them all", `[{"status":"ok"},{"status":"ok",}]`, 2, nil},
		{"too few", `[{"status":"ok"}]`, 2, nil},
		{"too many", `[{"status":"ok"},{"status":"ok"}]`, 1, nil},
		{"empty array", `[]`, 1, nil},
		{"null", `null`, 1, nil},
		{"an object", `{"status":"ok"}`, 1, nil},
		{"trailing data", `[{"status":"ok"}] x`, 1, nil},
		{"trailing comma", `[{"status":"ok"},]`, 1, nil},
		{"a folding key takes the slow path, in order", `[{"status":"fail"},{"ſtatus":"ok"}]`, 2, []expect{{v: Verdict{}}, okV}},
		{"truncated", `[{"status":"ok"}`, 1, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			outs := make([]outcome, c.n)
			err := decodeAnswers([]byte(c.answer), outs)
			if c.want == nil {
				if !errors.Is(err, ErrUnavailable) {
					t.Fatalf("error %v, want ErrUnavailable for the batch", err)
				}
			} else {
				if err != nil {
					t.Fatalf("batch failed: %v", err)
				}
				for i, w := range c.want {
					if o := outs[i]; w.unavail != errors.Is(o.err, ErrUnavailable) || o.v != w.v {
						t.Errorf("answer %d: %+v, %v; want %+v", i, o.v, o.err, w)
					}
				}
			}
			checkAnswer(t, []byte(c.answer), c.n)
		})
	}
}

// The shapes hooks send (json.Marshal's, with its escapes, a JavaScript hook's, pretty
// printed) must not fall back to encoding/json, or the fast path is gone without a test failing.
func TestFastPathTakesCommonShapes(t *testing.T) {
	for _, raw := range []string{
		`[{"status":"ok","expires":3600,"call_hook":"https://h.example/call?t=7\u0026u=201","display_name":"Zoë"}]`,
		`[{"status":"fail","msg":"authentication failed"}]`,
		"[\n  {\n    \"status\": \"ok\",\n    \"expires\": null,\n    \"extra\": {\"a\": [1, true]}\n  }\n]",
		`[{"status":"ok","msg":"say \"hi\"\n"}]`,
		`[{"status":"ok","expires":"60"}]`, // no verdict, decided without encoding/json
		`[null]`,
	} {
		if !fastAnswers([]byte(raw), make([]outcome, 1)) {
			t.Errorf("fast path refused %s", raw)
		}
	}
	for _, raw := range []string{
		`[{"ſtatus":"ok"}]`,      // encoding/json folds it onto status
		`[{"st\u0061tus":"ok"}]`, // escaped key
		`[{"status":"ok"},]`,     // invalid: encoding/json has the last word
	} {
		if fastAnswers([]byte(raw), make([]outcome, 1)) {
			t.Errorf("fast path took %s", raw)
		}
	}
}

func TestEncodeRequest(t *testing.T) {
	cases := map[string]Request{
		"typical":                    req,
		"zero":                       {},
		"omitempty fields left out":  {Method: "REGISTER", Username: "201", Expires: -1, SourcePort: 65535},
		"HTML characters":            {Username: `<script>&"x"</script>`, URI: "sip:a@b;x=<y>"},
		"control bytes":              {Realm: "\x00\x01\b\f\n\r\t\x1f\x7f\\"},
		"line and paragraph sep":     {Response: "a\u2028b\u2029c\u2027"},
		"invalid UTF-8":              {Nonce: "\xff\xfe a \xed\xa0\x80 \xc3"},
		"UTF-8":                      {Username: "Zoë 李 😀 \ufffd"},
		"extreme ints":               {Expires: -1 << 63, SourcePort: 1<<63 - 1},
		"only the omitempty strings": {QOP: "auth-int", NC: "0", CNonce: " "},
	}
	for name, r := range cases {
		t.Run(name, func(t *testing.T) {
			want, err := json.Marshal(r)
			if err != nil {
				t.Fatal(err)
			}
			if got := encodeRequest([]byte("prefix"), r); !bytes.Equal(got, append([]byte("prefix"), want...)) {
				t.Fatalf("got  %s\nwant prefix%s", got, want)
			}
		})
	}
}

func FuzzEncodeRequest(f *testing.F) {
	f.Add("REGISTER", 3600, "digest", "201", "pbx", "n", "sip:pbx", "r", "auth", "00000001", "c", "MD5", "203.0.113.7", 5060)
	f.Add("", 0, "", "", "", "", "", "", "", "", "", "", "", 0)
	f.Add("<&>", -1, "\u2028\u2029", "\xff", "\x00\x1f", `"\`, "\ufffd", "é", "\x7f", "\t", "\xed\xa0\x80", "😀", "::1", -65536)
	f.Fuzz(func(t *testing.T, method string, expires int, scheme, username, realm, nonce, uri, response, qop, nc, cnonce, algorithm, addr string, port int) {
		r := Request{Method: method, Expires: expires, Scheme: scheme, Username: username, Realm: realm, Nonce: nonce,
			URI: uri, Response: response, QOP: qop, NC: nc, CNonce: cnonce, Algorithm: algorithm, SourceAddress: addr, SourcePort: port}
		want, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		if got := encodeRequest(nil, r); !bytes.Equal(got, want) {
			t.Fatalf("got  %s\nwant %s", got, want)
		}
	})
}

func FuzzDecodeAnswers(f *testing.F) {
	for _, s := range []string{
		`[{"status":"ok","expires":600,"call_hook":"http://x/c?a\u0026b","call_status_hook":"s","display_name":"Zoë"},{"status":"fail","msg":"no"}]`,
		`{"status":"ok","expires":-0}`,
		`[{"status":"ok","expires":"60"},null,1,"s",[],{"status":"maybe"},{"status":"ok","expires":-1}]`,
		`[{"STATUS":"ok","Expires":1e2,"expires":null,"x":{"y":[true,false,null,-1.5E+3]}}]`,
		`[{"ſtatus":"ok","call_hoo` + "\u212a" + `":"h"}]`,
		`[{"st\u0061tus":"ok","display_name":"\ud83d\ude00\ud83d\u0041\ude00\u00"}]`,
		"[{\"status\":\"fail\",\"msg\":\"\xff\xed\xa0\x80\\\"\\\\\\/\\b\\f\\n\\r\\t\"}]",
		" [ { \"status\" : \"ok\" } , { } ] ",
		`[{"status":"ok"},]`,
		`[{"status":"ok"}] x`,
		`[{"status":"ok","expires":9223372036854775808}]`,
		`[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]`,
	} {
		f.Add([]byte(s), uint8(0))
	}
	f.Fuzz(func(t *testing.T, raw []byte, n uint8) {
		checkAnswer(t, raw, int(n%4)+1)
		// Also as many answers as the array holds, so its elements are judged.
		var answers []json.RawMessage
		if json.Unmarshal(raw, &answers) == nil && len(answers) > 0 {
			checkAnswer(t, raw, len(answers))
		}
	})
}

func BenchmarkEncodeRequest(b *testing.B) {
	b.Run("json.Marshal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := json.Marshal(req); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encodeRequest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			encodeRequest(nil, req)
		}
	})
}

// batchAnswer is a full batch as the gateway's hook answers it: json.Marshal's bytes,
// three passes with a call hook (escaped &) to one failure.
func batchAnswer() []byte {
	var b strings.Builder
	b.WriteByte('[')
	for i := range benchBatch {
		if i > 0 {
			b.WriteByte(',')
		}
		if i%4 == 3 {
			b.WriteString(`{"status":"fail","msg":"authentication failed"}`)
			continue
		}
		b.WriteString(`{"status":"ok","expires":3600,"call_hook":"https://hooks.example.com/call?tenant=7\u0026user=` +
			strconv.Itoa(200+i) + `","display_name":"User ` + strconv.Itoa(200+i) + `"}`)
	}
	b.WriteByte(']')
	return []byte(b.String())
}

// benchBatch is a full batch (Options.MaxBatch's default), a variable as len(batch) is
// in sendBatch, so that outs lands on the heap here too.
var benchBatch = 256

// BenchmarkDecodeAnswers measures what sendBatch does with a full batch's answer, before
// (encoding/json) and after.
func BenchmarkDecodeAnswers(b *testing.B) {
	raw, n := batchAnswer(), benchBatch
	if !fastAnswers(raw, make([]outcome, n)) {
		b.Fatal("the benchmark's answer takes the slow path")
	}
	b.Run("encoding-json", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			var answers []json.RawMessage
			if err := json.Unmarshal(raw, &answers); err != nil || len(answers) != n {
				b.Fatal(err)
			}
			for _, a := range answers {
				if v, err := refDecodeVerdict(a); err != nil || v.OK && v.CallHook == "" {
					b.Fatal(v, err)
				}
			}
		}
	})
	b.Run("hand", func(b *testing.B) {
		b.ReportAllocs()
		b.SetBytes(int64(len(raw)))
		for b.Loop() {
			outs := make([]outcome, n)
			if err := decodeAnswers(raw, outs); err != nil {
				b.Fatal(err)
			}
			for _, o := range outs {
				if o.err != nil || o.v.OK && o.v.CallHook == "" {
					b.Fatal(o)
				}
			}
		}
	})
}
