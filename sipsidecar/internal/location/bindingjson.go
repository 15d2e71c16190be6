package location

import (
	"encoding/json"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/softphone-gateway/softphone-gateway/internal/jsonquote"
)

// Bindings as the Redis store keeps them, JSON by hand. At 10,000 REGISTER/s json.Unmarshal
// of bindings took 13% of the sidecar's CPU and json.Marshal a few percent more, for one flat
// object of known fields. The stored format does not change: operators read it with
// redis-cli, and what is already in Redis must keep being read.
//
// appendBinding writes json.Marshal's exact bytes (FuzzAppendBinding holds them together).
//
// decodeBinding is a fast path with encoding/json behind it. The fast path reads JSON as the
// scanner defines it (whitespace, escapes, surrogate pairs, invalid UTF-8 and lone
// surrogates coerced to U+FFFD, unknown fields skipped whatever they hold) and fills the
// fields as encoding/json does: keys matched without regard to ASCII case, the last of
// duplicate keys wins, null leaves a field as it is, each time through
// time.Time.UnmarshalJSON itself. It only ever answers "decoded": whatever it does not fully
// understand — a key with an escape or a non-ASCII byte (encoding/json folds some of those
// onto field names, "ſource" is source), a value of the wrong type, a number that is not a
// plain in-range integer, a time that does not parse, nesting deeper than maxSkipDepth, and
// anything invalid — goes to json.Unmarshal, which decides, so the Binding and the verdict
// are always json.Unmarshal's (FuzzDecodeBinding compares the two).

// appendBinding appends b as json.Marshal(b) writes it. The error, json.Marshal's own, comes
// with a time RFC 3339 cannot hold (a year outside [0,9999], a zone offset of a day or more);
// dst is then returned as it was.
func appendBinding(dst []byte, b Binding) ([]byte, error) {
	start := len(dst)
	dst = slices.Grow(dst, bindingSizeHint(b))
	var expOK, authOK, updOK bool
	dst = append(dst, `{"aor":`...)
	dst = jsonquote.Append(dst, b.AOR)
	dst = append(dst, `,"contact":`...)
	dst = jsonquote.Append(dst, b.Contact)
	dst = append(dst, `,"expires_at":`...)
	dst, expOK = appendJSONTime(dst, b.ExpiresAt)
	dst = append(dst, `,"granted":`...)
	dst = strconv.AppendInt(dst, int64(b.Granted), 10)
	dst = append(dst, `,"auth_at":`...)
	dst, authOK = appendJSONTime(dst, b.AuthAt)
	dst = append(dst, `,"updated_at":`...)
	dst, updOK = appendJSONTime(dst, b.UpdatedAt)
	dst = append(dst, `,"call_id":`...)
	dst = jsonquote.Append(dst, b.CallID)
	dst = append(dst, `,"cseq":`...)
	dst = strconv.AppendUint(dst, uint64(b.CSeq), 10)
	dst = append(dst, `,"source":`...)
	dst = jsonquote.Append(dst, b.Source)
	dst = append(dst, `,"transport":`...)
	dst = jsonquote.Append(dst, b.Transport)
	if b.UserAgent != "" {
		dst = append(dst, `,"user_agent":`...)
		dst = jsonquote.Append(dst, b.UserAgent)
	}
	if b.InstanceID != "" {
		dst = append(dst, `,"instance_id":`...)
		dst = jsonquote.Append(dst, b.InstanceID)
	}
	if b.Q != "" {
		dst = append(dst, `,"q":`...)
		dst = jsonquote.Append(dst, b.Q)
	}
	dst = append(dst, `,"nat":`...)
	dst = strconv.AppendBool(dst, b.NAT)
	if b.DisplayName != "" {
		dst = append(dst, `,"display_name":`...)
		dst = jsonquote.Append(dst, b.DisplayName)
	}
	if b.CallHook != "" {
		dst = append(dst, `,"call_hook":`...)
		dst = jsonquote.Append(dst, b.CallHook)
	}
	if b.CallStatusHook != "" {
		dst = append(dst, `,"call_status_hook":`...)
		dst = jsonquote.Append(dst, b.CallStatusHook)
	}
	if b.WebRTC {
		dst = append(dst, `,"supports_webrtc":true`...)
	}
	dst = append(dst, '}')
	if !expOK || !authOK || !updOK {
		// Rare enough to let json.Marshal say it in its own words.
		v, err := json.Marshal(b)
		return append(dst[:start], v...), err
	}
	return dst, nil
}

// bindingSizeHint is a little more than appendBinding writes for b unless its strings need
// escapes: the keys, three times at their longest, the numbers at their longest.
func bindingSizeHint(b Binding) int {
	const fixed = len(`{"aor":"","contact":"","expires_at":"","granted":,"auth_at":"","updated_at":"",`+
		`"call_id":"","cseq":,"source":"","transport":"","user_agent":"","instance_id":"","q":"",`+
		`"nat":false,"display_name":"","call_hook":"","call_status_hook":"","supports_webrtc":true}`) +
		3*len(time.RFC3339Nano) + len("-9223372036854775808") + len("4294967295")
	return fixed + len(b.AOR) + len(b.Contact) + len(b.CallID) + len(b.Source) + len(b.Transport) +
		len(b.UserAgent) + len(b.InstanceID) + len(b.Q) + len(b.DisplayName) + len(b.CallHook) +
		len(b.CallStatusHook)
}

// appendJSONTime appends t quoted as time.Time.MarshalJSON writes it (RFC 3339, nanoseconds
// without trailing zeros); false when t has no RFC 3339 form.
func appendJSONTime(dst []byte, t time.Time) ([]byte, bool) {
	dst = append(dst, '"')
	out, err := t.AppendText(dst) // MarshalJSON's format and checks, without its allocation
	if err != nil {
		return dst, false
	}
	return append(out, '"'), true
}

// decodeBinding reads one stored binding: the Binding and the verdict of
// json.Unmarshal(raw, &b) == nil, also when it is false (then b holds what json.Unmarshal
// had filled in). A string raw is not copied: the binding's strings are sliced from it.
func decodeBinding[T string | []byte](raw T) (Binding, bool) {
	if b, ok := fastBinding(string(raw)); ok {
		return b, true
	}
	var b Binding
	err := json.Unmarshal([]byte(raw), &b)
	return b, err == nil
}

// fastBinding is decodeBinding's fast path. false: s is not a binding it fully understands
// (b then holds debris), json.Unmarshal decides.
func fastBinding(s string) (Binding, bool) {
	var b Binding
	d := jsonScan{s: s}
	d.space()
	if !d.take('{') {
		return b, false
	}
	d.space()
	if !d.take('}') {
		for {
			key, ok := d.key()
			if !ok {
				return b, false
			}
			d.space()
			if !d.take(':') {
				return b, false
			}
			d.space()
			if !d.field(&b, key) {
				return b, false
			}
			d.space()
			if d.take(',') {
				d.space()
				continue
			}
			if d.take('}') {
				break
			}
			return b, false
		}
	}
	d.space()
	return b, d.i == len(s)
}

// jsonScan reads JSON from s, at i.
type jsonScan struct {
	s string
	i int
}

// space skips JSON whitespace.
func (d *jsonScan) space() {
	for d.i < len(d.s) {
		switch d.s[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// take consumes c if it is next.
func (d *jsonScan) take(c byte) bool {
	if d.i < len(d.s) && d.s[d.i] == c {
		d.i++
		return true
	}
	return false
}

// literal consumes lit if it is next.
func (d *jsonScan) literal(lit string) bool {
	if strings.HasPrefix(d.s[d.i:], lit) {
		d.i += len(lit)
		return true
	}
	return false
}

// key reads an object key made of printable ASCII without escapes (any other key might
// unescape or fold onto a field name: false).
func (d *jsonScan) key() (string, bool) {
	if !d.take('"') {
		return "", false
	}
	start := d.i
	for d.i < len(d.s) && plainInString[d.s[d.i]] {
		d.i++
	}
	if !d.take('"') {
		return "", false
	}
	return d.s[start : d.i-1], true
}

// plainInString holds the bytes a JSON string holds as they are, one to a character: ASCII
// but control bytes, the quote and the backslash.
var plainInString = func() (t [256]bool) {
	for c := ' '; c < utf8.RuneSelf; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// longestField is the length of the longest Binding key, "call_status_hook".
const longestField = len("call_status_hook")

// field reads the value of key into b, as encoding/json matches keys to fields: without
// regard to ASCII case (key holds only ASCII), unknown keys skipped.
func (d *jsonScan) field(b *Binding, key string) bool {
	var lower [longestField]byte
	if len(key) <= longestField && hasUpper(key) {
		for i := range len(key) {
			c := key[i]
			if 'A' <= c && c <= 'Z' {
				c += 'a' - 'A'
			}
			lower[i] = c
		}
		key = string(lower[:len(key)])
	}
	switch key {
	case "aor":
		return d.stringField(&b.AOR)
	case "contact":
		return d.stringField(&b.Contact)
	case "expires_at":
		return d.timeField(&b.ExpiresAt)
	case "granted":
		return d.intField(&b.Granted)
	case "auth_at":
		return d.timeField(&b.AuthAt)
	case "updated_at":
		return d.timeField(&b.UpdatedAt)
	case "call_id":
		return d.stringField(&b.CallID)
	case "cseq":
		return d.uint32Field(&b.CSeq)
	case "source":
		return d.stringField(&b.Source)
	case "transport":
		return d.stringField(&b.Transport)
	case "user_agent":
		return d.stringField(&b.UserAgent)
	case "instance_id":
		return d.stringField(&b.InstanceID)
	case "q":
		return d.stringField(&b.Q)
	case "nat":
		return d.boolField(&b.NAT)
	case "display_name":
		return d.stringField(&b.DisplayName)
	case "call_hook":
		return d.stringField(&b.CallHook)
	case "call_status_hook":
		return d.stringField(&b.CallStatusHook)
	case "supports_webrtc":
		return d.boolField(&b.WebRTC)
	}
	return d.skip(0)
}

func hasUpper(s string) bool {
	for i := range len(s) {
		if 'A' <= s[i] && s[i] <= 'Z' {
			return true
		}
	}
	return false
}

// stringField reads a string or null (which leaves *v alone).
func (d *jsonScan) stringField(v *string) bool {
	if d.literal("null") {
		return true
	}
	s, ok := d.str()
	if ok {
		*v = s
	}
	return ok
}

// boolField reads true, false or null (which leaves *v alone).
func (d *jsonScan) boolField(v *bool) bool {
	switch {
	case d.literal("true"):
		*v = true
	case d.literal("false"):
		*v = false
	case d.literal("null"):
	default:
		return false
	}
	return true
}

// intField reads an integer in int's range or null (which leaves *v alone).
func (d *jsonScan) intField(v *int) bool {
	if d.literal("null") {
		return true
	}
	neg := d.take('-')
	n, ok := d.digits()
	switch {
	case !ok:
		return false
	case !neg && n <= math.MaxInt:
		*v = int(n)
	case neg && n <= -math.MinInt:
		*v = int(-n) // two's complement: -(1<<63) too
	default:
		return false
	}
	return true
}

// uint32Field reads an integer in uint32's range or null (which leaves *v alone). A minus
// sign, even on 0, is for encoding/json to refuse.
func (d *jsonScan) uint32Field(v *uint32) bool {
	if d.literal("null") {
		return true
	}
	n, ok := d.digits()
	if !ok || n > math.MaxUint32 {
		return false
	}
	*v = uint32(n)
	return true
}

// digits reads the digits of a JSON integer, 0 or one not starting with 0 (a fraction or an
// exponent that follows is left unread, the caller's next check refuses it); false when
// there are none or the value overflows uint64.
func (d *jsonScan) digits() (uint64, bool) {
	start := d.i
	if d.take('0') {
		return 0, true
	}
	var n uint64
	for ; d.i < len(d.s) && '0' <= d.s[d.i] && d.s[d.i] <= '9'; d.i++ {
		c := uint64(d.s[d.i] - '0')
		if n > (math.MaxUint64-c)/10 {
			return 0, false
		}
		n = n*10 + c
	}
	return n, d.i > start
}

// maxTimeLiteral bounds a time value's JSON text, quotes included, held on the stack for
// time.Time.UnmarshalJSON (RFC 3339 with nanoseconds is 35 bytes).
const maxTimeLiteral = 64

// timeField reads a time as encoding/json does: its JSON string as it stands, escapes and
// all, handed to time.Time.UnmarshalJSON; null leaves *v alone.
func (d *jsonScan) timeField(v *time.Time) bool {
	if d.literal("null") {
		return true
	}
	start := d.i
	if d.peek() != '"' || !d.skipString() || d.i-start > maxTimeLiteral {
		return false
	}
	var lit [maxTimeLiteral]byte
	n := copy(lit[:], d.s[start:d.i])
	var t time.Time
	if t.UnmarshalJSON(lit[:n]) != nil {
		return false
	}
	*v = t
	return true
}

func (d *jsonScan) peek() byte {
	if d.i < len(d.s) {
		return d.s[d.i]
	}
	return 0
}

// str reads a JSON string as encoding/json unquotes it. One without escapes and in valid
// UTF-8, the usual case, is a slice of s.
func (d *jsonScan) str() (string, bool) {
	if !d.take('"') {
		return "", false
	}
	start := d.i
	for {
		for d.i < len(d.s) && plainInString[d.s[d.i]] {
			d.i++
		}
		if d.i == len(d.s) {
			return "", false
		}
		switch c := d.s[d.i]; {
		case c == '"':
			d.i++
			return d.s[start : d.i-1], true
		case c < utf8.RuneSelf: // a backslash or a control byte
			return d.unquote(start)
		default:
			r, n := utf8.DecodeRuneInString(d.s[d.i:])
			if r == utf8.RuneError && n == 1 {
				return d.unquote(start)
			}
			d.i += n
		}
	}
}

// unquote finishes str for a string with escapes or invalid UTF-8, from its first byte at
// start: as encoding/json, a surrogate pair becomes its rune, a lone surrogate U+FFFD, and
// each byte of invalid UTF-8 U+FFFD.
func (d *jsonScan) unquote(start int) (string, bool) {
	whole := jsonScan{s: d.s, i: start - 1}
	if !whole.skipString() {
		return "", false
	}
	var buf strings.Builder
	buf.Grow(whole.i - start) // escapes only shorten, invalid UTF-8 (rare) lengthens
	buf.WriteString(d.s[start:d.i])
	for d.i < len(d.s) {
		c := d.s[d.i]
		switch {
		case c == '"':
			d.i++
			return buf.String(), true
		case c < ' ':
			return "", false
		case c == '\\':
			if d.i+1 >= len(d.s) {
				return "", false
			}
			switch e := d.s[d.i+1]; e {
			case '"', '\\', '/':
				buf.WriteByte(e)
			case 'b':
				buf.WriteByte('\b')
			case 'f':
				buf.WriteByte('\f')
			case 'n':
				buf.WriteByte('\n')
			case 'r':
				buf.WriteByte('\r')
			case 't':
				buf.WriteByte('\t')
			case 'u':
				r := hex4(d.s[d.i:])
				if r < 0 {
					return "", false
				}
				if utf16.IsSurrogate(r) {
					if pair := utf16.DecodeRune(r, hex4(d.s[d.i+6:])); pair != utf8.RuneError {
						buf.WriteRune(pair)
						d.i += 12
						continue
					}
					r = utf8.RuneError // the next \u, if any, is read on its own
				}
				buf.WriteRune(r)
				d.i += 6
				continue
			default:
				return "", false
			}
			d.i += 2
		case c < utf8.RuneSelf:
			buf.WriteByte(c)
			d.i++
		default:
			r, n := utf8.DecodeRuneInString(d.s[d.i:])
			buf.WriteRune(r) // RuneError for a byte of invalid UTF-8
			d.i += n
		}
	}
	return "", false
}

// hex4 is the code unit of the \uXXXX escape s starts with, -1 when it does not start with
// one.
func hex4(s string) rune {
	if len(s) < 6 || s[0] != '\\' || s[1] != 'u' {
		return -1
	}
	var r rune
	for _, c := range []byte(s[2:6]) {
		switch {
		case '0' <= c && c <= '9':
			c -= '0'
		case 'a' <= c && c <= 'f':
			c -= 'a' - 10
		case 'A' <= c && c <= 'F':
			c -= 'A' - 10
		default:
			return -1
		}
		r = r<<4 | rune(c)
	}
	return r
}

// maxSkipDepth bounds the nesting of an unknown field's value the fast path skips; deeper
// goes to encoding/json.
const maxSkipDepth = 32

// skip consumes one JSON value of an unknown field, checking it as encoding/json's scanner
// does.
func (d *jsonScan) skip(depth int) bool {
	switch d.peek() {
	case '"':
		return d.skipString()
	case '{':
		return d.skipComposite(depth, '}', true)
	case '[':
		return d.skipComposite(depth, ']', false)
	case 't':
		return d.literal("true")
	case 'f':
		return d.literal("false")
	case 'n':
		return d.literal("null")
	default:
		return d.skipNumber()
	}
}

// skipComposite consumes an object (keyed) or an array, whose opening byte is next.
func (d *jsonScan) skipComposite(depth int, end byte, keyed bool) bool {
	if depth >= maxSkipDepth {
		return false
	}
	d.i++
	d.space()
	if d.take(end) {
		return true
	}
	for {
		if keyed {
			if d.peek() != '"' || !d.skipString() {
				return false
			}
			d.space()
			if !d.take(':') {
				return false
			}
			d.space()
		}
		if !d.skip(depth + 1) {
			return false
		}
		d.space()
		if d.take(',') {
			d.space()
			continue
		}
		return d.take(end)
	}
}

// skipString consumes a JSON string, whose quote is next: no control bytes, only the
// escapes JSON has. Any other byte is allowed, invalid UTF-8 included.
func (d *jsonScan) skipString() bool {
	d.i++
	for d.i < len(d.s) {
		c := d.s[d.i]
		switch {
		case plainInString[c] || c >= utf8.RuneSelf:
			d.i++
		case c == '"':
			d.i++
			return true
		case c == '\\':
			if d.i+1 >= len(d.s) {
				return false
			}
			switch d.s[d.i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				d.i += 2
			case 'u':
				if hex4(d.s[d.i:]) < 0 {
					return false
				}
				d.i += 6
			default:
				return false
			}
		default:
			return false // a control byte
		}
	}
	return false
}

// skipNumber consumes a JSON number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
func (d *jsonScan) skipNumber() bool {
	d.take('-')
	switch c := d.peek(); {
	case c == '0':
		d.i++
	case '1' <= c && c <= '9':
		d.skipDigits()
	default:
		return false
	}
	if d.take('.') && !d.skipDigits() {
		return false
	}
	if d.take('e') || d.take('E') {
		if !d.take('+') {
			d.take('-')
		}
		if !d.skipDigits() {
			return false
		}
	}
	return true
}

// skipDigits consumes [0-9]*; false when there were none.
func (d *jsonScan) skipDigits() bool {
	start := d.i
	for d.i < len(d.s) && '0' <= d.s[d.i] && d.s[d.i] <= '9' {
		d.i++
	}
	return d.i > start
}
