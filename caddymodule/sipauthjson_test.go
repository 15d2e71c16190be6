package caddymodule

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/softphone-gateway/softphone-gateway/internal/sipdigest"
)

// sidecarRequest mirrors the sidecar's authhook.Request (an internal package of sipsidecar,
// so not importable here): the sidecar marshals it with encoding/json, and that byte form,
// key order and omitempty included, is the body this endpoint decodes under load.
type sidecarRequest struct {
	Method        string `json:"method"`
	Expires       int    `json:"expires"`
	Scheme        string `json:"scheme"`
	Username      string `json:"username"`
	Realm         string `json:"realm"`
	Nonce         string `json:"nonce"`
	URI           string `json:"uri"`
	Response      string `json:"response"`
	QOP           string `json:"qop,omitempty"`
	NC            string `json:"nc,omitempty"`
	CNonce        string `json:"cnonce,omitempty"`
	Algorithm     string `json:"algorithm"`
	SourceAddress string `json:"source_address"`
	SourcePort    int    `json:"source_port"`
}

// sidecarCallback is the sidecar's body for a REGISTER of a test user (201 or 202, whose
// secrets testUsers holds) with the right digest; i varies the nonce, cnonce and source.
func sidecarCallback(i int) []byte {
	user, secret, alg := "201", "b749601f329a635a19c4a87bc359be3d", sipdigest.MD5
	if i%2 == 1 {
		user, secret, alg = "202", "secret-202", sipdigest.SHA256
	}
	c := sipdigest.Credentials{Username: user, Realm: "pbx.example.com", URI: "sip:pbx.example.com",
		// The sidecar's nonces are 48 base64url characters (digest.Nonces.Make).
		Nonce:     "AAAAAGhJ3kQ" + strconv.Itoa(100000+i) + "Zk9uY2VNYWNPZlNpeHRlZW5CeXRlcw-_xyzab",
		Algorithm: alg, QOP: "auth", NC: "00000001", CNonce: strconv.FormatInt(int64(0x6b8b4567+i), 16)}
	c.Response = sipdigest.Response(c, "REGISTER", sipdigest.HA1(alg, user, c.Realm, secret))
	b, _ := json.Marshal(sidecarRequest{Method: "REGISTER", Expires: 3600, Scheme: "digest",
		Username: user, Realm: c.Realm, Nonce: c.Nonce, URI: c.URI, Response: c.Response, QOP: c.QOP,
		NC: c.NC, CNonce: c.CNonce, Algorithm: alg, SourceAddress: "203.0.113." + strconv.Itoa(i%250+1),
		SourcePort: 5060 + i})
	return b
}

// sidecarBatch is a batch of n callbacks joined as the sidecar's sendBatch joins them.
func sidecarBatch(n int) []byte {
	body := []byte{'['}
	for i := range n {
		if i > 0 {
			body = append(body, ',')
		}
		body = append(body, sidecarCallback(i)...)
	}
	return append(body, ']')
}

// BenchmarkSIPAuthBatchHandler posts a 64-callback batch as the sidecar sends it through the
// provisioned server's handler chain (no network): decoding, 64 digests, the answer array.
func BenchmarkSIPAuthBatchHandler(b *testing.B) {
	g := startGateway(b, "sip_auth {\n max_expires 1800\n}", "softphone_api")
	srv := activeServer(b)
	body := sidecarBatch(maxSIPAuthBatch)
	base := httptest.NewRequest("POST", g.API+"/sip/auth", nil)
	base.RemoteAddr = "127.0.0.1:40000"
	base.Header.Set("Content-Type", "application/json")
	rd := bytes.NewReader(body)
	w := &discardWriter{}
	serve := func() {
		r := *base
		rd.Reset(body)
		r.Body = io.NopCloser(rd)
		r.ContentLength = int64(len(body))
		r.Header = base.Header.Clone()
		w.h = http.Header{}
		w.status = 0
		srv.ServeHTTP(w, &r)
	}
	serve()
	if w.status != http.StatusOK {
		b.Fatalf("status %d", w.status)
	}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	cpu := cpuTime()
	for b.Loop() {
		serve()
	}
	reportCPU(b, cpu)
}

// strictSIPAuthBatch decodes a batch as sipAuthBatch did before the hand-written decoder:
// the array into raw elements, then each with decodeStrictJSON. ok false: the whole batch is
// refused; otherwise reqs[i] is element i and valid[i] whether it was a callback object.
func strictSIPAuthBatch(body []byte) (reqs []sipAuthRequest, valid []bool, ok bool) {
	var items []json.RawMessage
	if err := json.Unmarshal(body, &items); err != nil || len(items) == 0 || len(items) > maxSIPAuthBatch {
		return nil, nil, false
	}
	reqs, valid = make([]sipAuthRequest, len(items)), make([]bool, len(items))
	for i, raw := range items {
		valid[i] = len(raw) <= maxSIPAuthBody && decodeStrictJSON(raw, &reqs[i]) == nil
	}
	return reqs, valid, true
}

func BenchmarkSIPAuthBatchDecode(b *testing.B) {
	body := sidecarBatch(maxSIPAuthBatch)
	b.Run("strict", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if _, _, ok := strictSIPAuthBatch(body); !ok {
				b.Fatal("refused")
			}
		}
	})
	b.Run("fast", func(b *testing.B) {
		b.SetBytes(int64(len(body)))
		b.ReportAllocs()
		for b.Loop() {
			if _, ok := decodeSIPAuthBatch(body); !ok {
				b.Fatal("refused")
			}
		}
	})
}

func BenchmarkSIPAuthAnswers(b *testing.B) {
	exp := 1800
	answers := make([]sipAuthAnswer, maxSIPAuthBatch)
	for i := range answers {
		answers[i] = sipAuthAnswer{Status: "ok", Expires: &exp, CallHook: "http://127.0.0.1:3000/call",
			CallStatusHook: "http://127.0.0.1:3000/status", DisplayName: "Alice"}
	}
	b.Run("json.Marshal", func(b *testing.B) { // what writeJSON did
		b.ReportAllocs()
		for b.Loop() {
			json.Marshal(answers)
		}
	})
	b.Run("append", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			sipAuthAnswersJSON(answers)
		}
	})
}

// checkSIPAuthRequest holds the single-body decoding to decodeStrictJSON: the same verdict
// and, when accepted, the same struct. The fast path alone must never take a body the strict
// path refuses or read it differently.
func checkSIPAuthRequest(t *testing.T, body []byte) {
	t.Helper()
	var want, got sipAuthRequest
	wantErr := decodeStrictJSON(body, &want)
	gotErr := decodeSIPAuthRequest(body, &got)
	if (wantErr == nil) != (gotErr == nil) {
		t.Fatalf("%q: strict error %v, decodeSIPAuthRequest error %v", body, wantErr, gotErr)
	}
	if wantErr == nil && !reflect.DeepEqual(want, got) {
		t.Fatalf("%q:\nstrict %+v\nfast   %+v", body, want, got)
	}
	var fast sipAuthRequest
	if end, ok := scanSIPAuthRequest(body, skipJSONSpace(body, 0), &fast, nil); ok && skipJSONSpace(body, end) == len(body) {
		if wantErr != nil {
			t.Fatalf("%q: fast path took a body the strict path refuses (%v)", body, wantErr)
		}
		if !reflect.DeepEqual(want, fast) {
			t.Fatalf("%q:\nstrict    %+v\nfast path %+v", body, want, fast)
		}
	}
}

// checkSIPAuthBatch holds decodeSIPAuthBatch to strictSIPAuthBatch: the same 400 decision,
// the same number of elements, the same elements refused, the same structs for the others.
func checkSIPAuthBatch(t *testing.T, body []byte) {
	t.Helper()
	reqs, valid, ok := strictSIPAuthBatch(body)
	items, gotOK := decodeSIPAuthBatch(body)
	if ok != gotOK {
		t.Fatalf("%q: strict accepts the batch %v, fast %v", body, ok, gotOK)
	}
	if len(items) != len(reqs) {
		t.Fatalf("%q: %d elements, strict %d", body, len(items), len(reqs))
	}
	for i := range reqs {
		if items[i].valid != valid[i] {
			t.Fatalf("%q: element %d valid %v, strict %v", body, i, items[i].valid, valid[i])
		}
		if valid[i] && !reflect.DeepEqual(items[i].req, reqs[i]) {
			t.Fatalf("%q: element %d:\nstrict %+v\nfast   %+v", body, i, reqs[i], items[i].req)
		}
	}
}

// sipAuthRequestSeeds are callback bodies: the sidecar's, the tests' (a map, so sorted keys),
// and each way a body can stray from the plain form the fast path takes.
func sipAuthRequestSeeds(t testing.TB) []string {
	good := string(sidecarCallback(0))
	return []string{
		good, string(sidecarCallback(1)),
		mustJSON(digestBody(t, "201", "b749601f329a635a19c4a87bc359be3d", "pbx.example.com", "MD5", "auth")),
		mustJSON(digestBody(t, "202", "secret-202", "pbx.example.com", "SHA-256", "")),
		`{}`, ` { } `, `{"expires":null}`, `{"expires":-0}`, `{"expires":-17}`, `{"expires":0}`,
		`{"source_port":65535,"expires":123456789012345678}`, `{"expires":1234567890123456789}`,
		`{"expires":99999999999999999999}`, `{"expires":1.0}`, `{"expires":1e3}`, `{"expires":01}`,
		`{"expires":"3600"}`, `{"expires":true}`, `{"expires":nul}`, `{"expires":nulls}`, `{"expires":nulx}`,
		`{"expires":9999999999999999999}`, `{"expires":-9223372036854775808}`, "{\"method\":\"a\x1f\"}",
		`{"expires":1,"expires":null}`, `{"expires":null,"expires":2}`, `{"source_port":1,"source_port":2}`,
		`{"source_port":null}`, `{"source_port":-}`,
		`{"method":null}`, `{"method":"A","method":"B"}`, `{"method":"A","METHOD":"B"}`,
		`{"Method":"REGISTER"}`, `{"m\u0065thod":"REGISTER"}`, `{"other":1,"method":"x"}`,
		`{"method":"REG\"ISTER"}`, `{"username":"Jos\u00e9"}`, `{"username":"José"}`,
		`{"username":"a\u003cb\u003e\u0026"}`, `{"username":"\ud800"}`, "{\"username\":\"\xff\xfe\"}",
		"{\"username\":\"a\tb\"}", `{"username":"a\qb"}`, `{"username":"\u12"}`,
		`{"uri":"sip:a@b;transport=tcp","nonce":"x/y+z="}`, `{"method":["REGISTER"]}`, `{"method":{}}`,
		"\n\t{ \"method\" :\r\"REGISTER\" ,\"expires\": 60 }\n", "\v" + good + "\f", good + "]", good + "}",
		good + " x", good + good, good + ",", `{"method":"a",}`, `{"method":"a"`, `{"method"}`,
		`{"method":"a" "scheme":"b"}`, `{,}`, `[]`, `null`, `"text"`, ``, `{"method":"a"}` + "\u00a0",
	}
}

func TestDecodeSIPAuthRequest(t *testing.T) {
	for _, s := range sipAuthRequestSeeds(t) {
		checkSIPAuthRequest(t, []byte(s))
	}
	// The hot case must not fall back: the sidecar's bodies and the tests' digest bodies.
	for _, body := range [][]byte{sidecarCallback(0), sidecarCallback(1),
		[]byte(mustJSON(digestBody(t, "201", "x", "pbx.example.com", "MD5", "auth")))} {
		var req sipAuthRequest
		if end, ok := scanSIPAuthRequest(body, 0, &req, nil); !ok || end != len(body) {
			t.Fatalf("%s: not taken by the fast path", body)
		}
	}
}

func TestDecodeSIPAuthBatch(t *testing.T) {
	good := string(sidecarCallback(0))
	odd := `{"username":"Jos\u00e9","x":["]","\"}"]}`
	deep := func(n int) string { return "[" + strings.Repeat("[", n) + strings.Repeat("]", n) + "]" }
	joined := func(n int, elem string) string {
		return "[" + strings.TrimSuffix(strings.Repeat(elem+",", n), ",") + "]"
	}
	big := mustJSON(with(digestBody(t, "201", "x", "r", "MD5", "auth"), "uri", strings.Repeat("u", 9000)))
	for name, body := range map[string]string{
		"the sidecar's batch":               string(sidecarBatch(maxSIPAuthBatch)),
		"one element":                       "[" + good + "]",
		"whitespace everywhere":             " \r\n[ " + good + "\t,\n" + good + " ]\n ",
		"bad elements fail alone":           "[" + good + `,"text",null,{},1,true,[],` + odd + `,{"method":null}]`,
		"escaped quotes and brackets":       `[{"a":"\"]}"},` + good + "]",
		"empty":                             "[]",
		"empty with space":                  "[ ]",
		"64 elements":                       joined(64, good),
		"65 elements":                       joined(65, good),
		"65 bad elements":                   joined(65, "1"),
		"trailing comma":                    "[" + good + ",]",
		"leading comma":                     "[," + good + "]",
		"missing comma":                     "[" + good + good + "]",
		"trailing data":                     "[" + good + "]]",
		"trailing value":                    "[" + good + "] 1",
		"array of arrays with garbage":      "[[" + good + "]]x",
		"unclosed":                          "[" + good,
		"unclosed element":                  `[{"method":"a"`,
		"unclosed string":                   `["abc`,
		"invalid element":                   `[{"method":01}]`,
		"invalid element taken slow":        `[{"x":01}]`,
		"invalid number":                    `[1.]`,
		"number then garbage":               `[12a]`,
		"literal typo":                      `[nul]`,
		"control character":                 "[{\"method\":\"a\x01\"}]",
		"invalid UTF-8 element":             "[{\"method\":\"\xff\"}]",
		"an oversized element fails alone":  "[" + big + "," + good + "]",
		"an oversized odd element":          "[" + strings.Replace(big, `{`, `{"x":1,`, 1) + "]",
		"nesting encoding/json takes":       deep(jsonMaxDepth - 1), // the batch array is one level more
		"nesting encoding/json refuses":     deep(jsonMaxDepth),
		"nested object too deep":            "[" + strings.Repeat(`{"a":`, jsonMaxDepth) + "1" + strings.Repeat("}", jsonMaxDepth) + "]",
		"not an array":                      good,
		"null":                              "null",
		"mismatched brackets":               `[{"a":[}]]`,
		"the sidecar's batch with an extra": strings.Replace(string(sidecarBatch(3)), `"method"`, `"x":{"y":[1,2]},"method"`, 1),
	} {
		t.Run(name, func(t *testing.T) { checkSIPAuthBatch(t, []byte(body)) })
	}
	// The hot case must not fall back to encoding/json.
	body := sidecarBatch(maxSIPAuthBatch)
	if n := testing.AllocsPerRun(10, func() { decodeSIPAuthBatch(body) }); n > maxSIPAuthBatch+1 {
		t.Fatalf("decoding the sidecar's batch takes %v allocations, want at most %d", n, maxSIPAuthBatch+1)
	}
}

// The fuzz targets hold the hand-written decoder to encoding/json. Run each for a short while
// with a short minimizing time (minimizing over this binary, all of Caddy instrumented, can
// stall a worker for the default 60 s), e.g.
//
//	go test -run '^$' -fuzz '^FuzzSIPAuthBatch$' -fuzztime 30s -fuzzminimizetime 1s ./caddymodule/
func FuzzSIPAuthRequest(f *testing.F) {
	for _, s := range sipAuthRequestSeeds(f) {
		f.Add([]byte(s))
	}
	good := sidecarCallback(0)
	f.Fuzz(func(t *testing.T, body []byte) {
		checkSIPAuthRequest(t, body)
		// The same bytes as a batch element, alone and after a plain one: an execution costs
		// little next to the fuzzer's coverage bookkeeping over all of Caddy.
		checkSIPAuthBatch(t, slices.Concat([]byte("["), body, []byte("]")))
		checkSIPAuthBatch(t, slices.Concat([]byte("["), good, []byte(","), body, []byte("]")))
	})
}

func FuzzSIPAuthBatch(f *testing.F) {
	f.Add(sidecarBatch(3))
	good := string(sidecarCallback(0))
	for _, s := range sipAuthRequestSeeds(f) {
		f.Add([]byte("[" + s + "]"))
		f.Add([]byte("[" + good + "," + s + "]"))
	}
	for _, s := range []string{"[]", "[{", "[" + good + "]]", "[[" + good + "]]x", `[{"a":"\"]}"},1,"x",null,[{}]]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		checkSIPAuthBatch(t, body)
	})
}

// checkSIPAuthAnswer holds the hand-written answer to json.Marshal's bytes, alone and in an
// array.
func checkSIPAuthAnswer(t *testing.T, a sipAuthAnswer) {
	t.Helper()
	want, _ := json.Marshal(a)
	if got := sipAuthAnswerJSON(&a); !bytes.Equal(got, append(want, '\n')) {
		t.Fatalf("sipAuthAnswerJSON %s, json.Marshal %s", got, want)
	}
	list := []sipAuthAnswer{a, sipAuthFailed, a}
	want, _ = json.Marshal(list)
	if got := sipAuthAnswersJSON(list); !bytes.Equal(got, append(want, '\n')) {
		t.Fatalf("sipAuthAnswersJSON %s, json.Marshal %s", got, want)
	}
}

func TestSIPAuthAnswerJSON(t *testing.T) {
	exp, zero, neg := 1800, 0, -5
	for _, a := range []sipAuthAnswer{
		sipAuthFailed, {}, {Status: "ok"}, {Status: "ok", Expires: &zero}, {Status: "ok", Expires: &neg},
		{Status: "ok", Expires: &exp, CallHook: "http://127.0.0.1:3000/call", CallStatusHook: "http://127.0.0.1:3000/status", DisplayName: "Alice"},
		{Status: "ok", DisplayName: `A "quoted" \\ name`}, {Status: "ok", DisplayName: "<b>Tom & Jerry</b>"},
		{Status: "ok", DisplayName: "a<b"}, {Status: "ok", DisplayName: "a>b"}, {Status: "ok", DisplayName: "a&b"},
		{Status: "ok", DisplayName: "José 日本 \u2028\u2029"}, {Status: "ok", DisplayName: "bad \xff utf-8"},
		{Status: "ok", DisplayName: "tab\tnew\nline\r\x00\x01\x1f\x7f\b\f"},
		{Status: "ok", CallHook: "https://hooks.example.com/call?a=1&b=2"},
	} {
		checkSIPAuthAnswer(t, a)
	}
}

func FuzzSIPAuthAnswer(f *testing.F) {
	f.Add("ok", "", true, 3600, "http://127.0.0.1:3000/call", "http://127.0.0.1:3000/status", "Alice")
	f.Add("fail", "authentication failed", false, 0, "", "", "")
	f.Add("ok", "", true, -1, "https://h.example/?a=1&b=<2>", "\u2028", "José \"\\\xff\t")
	f.Fuzz(func(t *testing.T, status, msg string, hasExpires bool, expires int, hook, statusHook, name string) {
		a := sipAuthAnswer{Status: status, Msg: msg, CallHook: hook, CallStatusHook: statusHook, DisplayName: name}
		if hasExpires {
			a.Expires = &expires
		}
		checkSIPAuthAnswer(t, a)
	})
}
