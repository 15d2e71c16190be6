package authhook

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/softphone-gateway/softphone-gateway/internal/jsonquote"
)

// The callback bodies and the hook's answers, by hand. At 18,000 REGISTER/s json.Marshal and
// json.Unmarshal took 2.3% and 2.8% of the sidecar's CPU, for flat objects of known fields.
//
// encodeRequest writes json.Marshal's exact bytes (FuzzEncodeRequest holds them together).
//
// The answer decoder is a fast path with encoding/json behind it. It reads JSON as the
// scanner defines it (whitespace, nested unknown values, escapes, invalid UTF-8 coerced to
// U+FFFD as encoding/json does) and the answer fields as encoding/json fills them (keys
// matched without regard to ASCII case, the last of duplicate keys wins, null leaves a string
// alone and clears expires, a value of the wrong type spoils the element). Whatever it does
// not fully understand — a key with an escape or a non-ASCII byte (encoding/json folds some of
// those onto field names), nesting deeper than maxSkipDepth, and anything invalid, a wrong
// element count or trailing data included — it leaves to encoding/json, which then decides
// the whole answer. So every verdict and every error is the one encoding/json gave
// (FuzzDecodeAnswers compares the two).

// encodeRequest appends r as json.Marshal(r) writes it.
func encodeRequest(dst []byte, r Request) []byte {
	dst = slices.Grow(dst, 224+len(r.Method)+len(r.Scheme)+len(r.Username)+len(r.Realm)+len(r.Nonce)+
		len(r.URI)+len(r.Response)+len(r.QOP)+len(r.NC)+len(r.CNonce)+len(r.Algorithm)+len(r.SourceAddress))
	dst = append(dst, `{"method":`...)
	dst = jsonquote.Append(dst, r.Method)
	dst = append(dst, `,"expires":`...)
	dst = strconv.AppendInt(dst, int64(r.Expires), 10)
	dst = append(dst, `,"scheme":`...)
	dst = jsonquote.Append(dst, r.Scheme)
	dst = append(dst, `,"username":`...)
	dst = jsonquote.Append(dst, r.Username)
	dst = append(dst, `,"realm":`...)
	dst = jsonquote.Append(dst, r.Realm)
	dst = append(dst, `,"nonce":`...)
	dst = jsonquote.Append(dst, r.Nonce)
	dst = append(dst, `,"uri":`...)
	dst = jsonquote.Append(dst, r.URI)
	dst = append(dst, `,"response":`...)
	dst = jsonquote.Append(dst, r.Response)
	if r.QOP != "" {
		dst = append(dst, `,"qop":`...)
		dst = jsonquote.Append(dst, r.QOP)
	}
	if r.NC != "" {
		dst = append(dst, `,"nc":`...)
		dst = jsonquote.Append(dst, r.NC)
	}
	if r.CNonce != "" {
		dst = append(dst, `,"cnonce":`...)
		dst = jsonquote.Append(dst, r.CNonce)
	}
	dst = append(dst, `,"algorithm":`...)
	dst = jsonquote.Append(dst, r.Algorithm)
	dst = append(dst, `,"source_address":`...)
	dst = jsonquote.Append(dst, r.SourceAddress)
	dst = append(dst, `,"source_port":`...)
	dst = strconv.AppendInt(dst, int64(r.SourcePort), 10)
	return append(dst, '}')
}

// errNotObject is a hook's answer encoding/json could not decode into an answer.
var errNotObject = fmt.Errorf("%w: answer is not one JSON object", ErrUnavailable)

// decodeVerdict reads one answer object.
func decodeVerdict(raw []byte) (Verdict, error) {
	d := decoder{data: raw}
	d.space()
	if o, ok := d.answer(); ok {
		if d.space(); d.i == len(raw) {
			return o.v, o.err
		}
	}
	return decodeVerdictJSON(raw)
}

// decodeAnswers reads a batch answer, an array of len(outs) answers, into outs in order.
// An error fails the whole batch; an answer that is no verdict fails only its own outcome.
func decodeAnswers(raw []byte, outs []outcome) error {
	if fastAnswers(raw, outs) {
		return nil
	}
	return decodeAnswersJSON(raw, outs)
}

// decodeVerdictJSON is decodeVerdict by encoding/json.
func decodeVerdictJSON(raw []byte) (Verdict, error) {
	var a answer
	if err := json.Unmarshal(raw, &a); err != nil { // also refuses trailing data
		return Verdict{}, errNotObject
	}
	return a.verdict()
}

// decodeAnswersJSON is decodeAnswers by encoding/json: the array is refused when any element
// is invalid JSON, and each element is judged on its own.
func decodeAnswersJSON(raw []byte, outs []outcome) error {
	var answers []json.RawMessage
	if err := json.Unmarshal(raw, &answers); err != nil || len(answers) != len(outs) {
		return fmt.Errorf("%w: batch answer is not an array of %d answers", ErrUnavailable, len(outs))
	}
	for i, a := range answers {
		v, err := decodeVerdictJSON(a)
		outs[i] = outcome{v: v, err: err}
	}
	return nil
}

// fastAnswers is decodeAnswers' fast path. false: the answer is not one it fully
// understands (outs may hold debris).
func fastAnswers(raw []byte, outs []outcome) bool {
	d := decoder{data: raw}
	d.space()
	if d.next() != '[' {
		return false
	}
	d.space()
	n := 0
	if d.peek() == ']' {
		d.i++
	} else {
		for {
			if n == len(outs) {
				return false
			}
			o, ok := d.answer()
			if !ok {
				return false
			}
			outs[n] = o
			n++
			d.space()
			c := d.next()
			if c == ']' {
				break
			}
			if c != ',' {
				return false
			}
			d.space()
		}
	}
	d.space()
	return n == len(outs) && d.i == len(raw)
}

// decoder walks JSON text. A method that returns ok false has met something it does not
// fully understand, valid or not, and the caller leaves the whole text to encoding/json.
type decoder struct {
	data []byte
	i    int
}

// maxSkipDepth bounds the nesting of the unknown values the fast path skips; encoding/json's
// own bound is far above it.
const maxSkipDepth = 32

// peek returns the byte at the cursor, 0 at the end (never valid JSON there).
func (d *decoder) peek() byte {
	if d.i < len(d.data) {
		return d.data[d.i]
	}
	return 0
}

// next returns the byte at the cursor and moves past it.
func (d *decoder) next() byte {
	c := d.peek()
	d.i++
	return c
}

// space skips JSON whitespace.
func (d *decoder) space() {
	for d.i < len(d.data) {
		switch d.data[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// literal reads the literal word at the cursor.
func (d *decoder) literal(word string) bool {
	if len(d.data)-d.i < len(word) || string(d.data[d.i:d.i+len(word)]) != word {
		return false
	}
	d.i += len(word)
	return true
}

// answer reads one element of an answer and judges it as decodeVerdictJSON would: null is an
// answer with no status, any other value that is no object is no answer.
func (d *decoder) answer() (outcome, bool) {
	var a answer
	var expires int
	given, bad := false, false
	switch d.peek() {
	case '{':
		var ok bool
		if given, bad, ok = d.object(&a, &expires); !ok {
			return outcome{}, false
		}
	case 'n':
		if !d.literal("null") {
			return outcome{}, false
		}
	default:
		if !d.skip(0) {
			return outcome{}, false
		}
		bad = true
	}
	if bad {
		return outcome{err: errNotObject}, true
	}
	v, err := a.judge(expires, given)
	return outcome{v: v, err: err}, true
}

// The answer's fields, as numbered by field.
const (
	fieldUnknown = iota
	fieldStatus
	fieldMsg
	fieldExpires
	fieldCallHook
	fieldCallStatusHook
	fieldDisplayName
)

var fieldNames = [...]string{
	fieldStatus:         "status",
	fieldMsg:            "msg",
	fieldExpires:        "expires",
	fieldCallHook:       "call_hook",
	fieldCallStatusHook: "call_status_hook",
	fieldDisplayName:    "display_name",
}

// field returns the field an ASCII key names. Like encoding/json it takes the exact name
// first, then one equal under ASCII case folding.
func field(key []byte) int {
	switch string(key) {
	case "status":
		return fieldStatus
	case "msg":
		return fieldMsg
	case "expires":
		return fieldExpires
	case "call_hook":
		return fieldCallHook
	case "call_status_hook":
		return fieldCallStatusHook
	case "display_name":
		return fieldDisplayName
	}
	for f, name := range fieldNames {
		if name != "" && equalFoldASCII(key, name) {
			return f
		}
	}
	return fieldUnknown
}

// equalFoldASCII reports whether key is name with any of its letters upper-cased. name is
// lower-case ASCII.
func equalFoldASCII(key []byte, name string) bool {
	if len(key) != len(name) {
		return false
	}
	for i, c := range key {
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

// object reads the object at the cursor into a, as encoding/json would into *a, but for
// expires: given, it is *expires (a.Expires is left nil, see judge).
// bad: a known field had a value of the wrong type (encoding/json's UnmarshalTypeError,
// which spoils the answer).
func (d *decoder) object(a *answer, expires *int) (given, bad, ok bool) {
	d.i++ // {
	d.space()
	if d.peek() == '}' {
		d.i++
		return false, false, true
	}
	for {
		key, ok := d.key()
		if !ok {
			return false, false, false
		}
		d.space()
		if d.next() != ':' {
			return false, false, false
		}
		d.space()
		switch f := field(key); f {
		case fieldUnknown:
			if !d.skip(1) {
				return false, false, false
			}
		case fieldExpires:
			switch c := d.peek(); {
			case c == 'n':
				if !d.literal("null") {
					return false, false, false
				}
				given = false
			case c == '-' || '0' <= c && c <= '9':
				num, integer, ok := d.number()
				if !ok {
					return false, false, false
				}
				n, err := strconv.ParseInt(string(num), 10, 0)
				if !integer || err != nil {
					bad = true
					break
				}
				*expires, given = int(n), true
			default:
				if !d.skip(1) {
					return false, false, false
				}
				bad = true
			}
		default:
			switch d.peek() {
			case '"':
				s, plain, ok := d.str()
				if !ok {
					return false, false, false
				}
				switch dst := a.field(f); {
				case f == fieldStatus && plain && string(s) == "ok":
					*dst = "ok"
				case f == fieldStatus && plain && string(s) == "fail":
					*dst = "fail"
				case plain:
					*dst = string(s)
				default:
					*dst = unquote(s)
				}
			case 'n': // null leaves a string as it was
				if !d.literal("null") {
					return false, false, false
				}
			default:
				if !d.skip(1) {
					return false, false, false
				}
				bad = true
			}
		}
		d.space()
		switch d.next() {
		case ',':
			d.space()
		case '}':
			return given, bad, true
		default:
			return false, false, false
		}
	}
}

// field returns the string field f of a.
func (a *answer) field(f int) *string {
	switch f {
	case fieldStatus:
		return &a.Status
	case fieldMsg:
		return &a.Msg
	case fieldCallHook:
		return &a.CallHook
	case fieldCallStatusHook:
		return &a.CallStatusHook
	}
	return &a.DisplayName
}

// key reads an object key made of printable ASCII without escapes (any other is not
// understood: encoding/json folds some non-ASCII keys onto field names).
func (d *decoder) key() ([]byte, bool) {
	if d.next() != '"' {
		return nil, false
	}
	start := d.i
	for ; d.i < len(d.data); d.i++ {
		switch c := d.data[d.i]; {
		case c == '"':
			d.i++
			return d.data[start : d.i-1], true
		case c == '\\' || c < ' ' || c >= utf8.RuneSelf:
			return nil, false
		}
	}
	return nil, false
}

// str reads the string at the cursor and returns its contents as written. plain: they are
// its value (no escape, valid UTF-8); otherwise unquote gives it.
func (d *decoder) str() (s []byte, plain, ok bool) {
	d.i++ // "
	start := d.i
	plain, ascii := true, true
	for d.i < len(d.data) {
		c := d.data[d.i]
		switch {
		case c == '"':
			s = d.data[start:d.i]
			d.i++
			if !ascii && plain {
				plain = utf8.Valid(s)
			}
			return s, plain, true
		case c == '\\':
			plain = false
			d.i++
			switch d.peek() {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				d.i++
			case 'u':
				if len(d.data)-d.i < 5 || hex4(d.data[d.i+1:d.i+5]) < 0 {
					return nil, false, false
				}
				d.i += 5
			default:
				return nil, false, false
			}
		case c < ' ':
			return nil, false, false
		default:
			if c >= utf8.RuneSelf {
				ascii = false
			}
			d.i++
		}
	}
	return nil, false, false
}

// hex4 returns the value of four hex digits, -1 if they are not.
func hex4(b []byte) rune {
	var r rune
	for _, c := range b[:4] {
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

// unquote returns the value of string contents str has checked, as encoding/json decodes
// them: a surrogate escape that is not half of a pair, and each byte of invalid UTF-8, become
// U+FFFD.
func unquote(s []byte) string {
	var b strings.Builder
	b.Grow(len(s))
	for i := 0; i < len(s); {
		c := s[i]
		switch {
		case c == '\\' && s[i+1] == 'u':
			r := hex4(s[i+2:])
			i += 6
			if utf16.IsSurrogate(r) {
				if i+6 <= len(s) && s[i] == '\\' && s[i+1] == 'u' {
					if pair := utf16.DecodeRune(r, hex4(s[i+2:])); pair != utf8.RuneError {
						b.WriteRune(pair)
						i += 6
						continue
					}
				}
				r = utf8.RuneError
			}
			b.WriteRune(r)
		case c == '\\':
			switch e := s[i+1]; e {
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default: // " \ /
				b.WriteByte(e)
			}
			i += 2
		case c < utf8.RuneSelf:
			b.WriteByte(c)
			i++
		default:
			r, size := utf8.DecodeRune(s[i:])
			b.WriteRune(r) // RuneError for a bad byte
			i += size
		}
	}
	return b.String()
}

// number reads the number at the cursor. integer: it has no fraction and no exponent.
func (d *decoder) number() (num []byte, integer, ok bool) {
	start := d.i
	if d.peek() == '-' {
		d.i++
	}
	switch c := d.peek(); {
	case c == '0':
		d.i++
	case '1' <= c && c <= '9':
		d.digits()
	default:
		return nil, false, false
	}
	integer = true
	if d.peek() == '.' {
		d.i++
		if !d.digits() {
			return nil, false, false
		}
		integer = false
	}
	if c := d.peek(); c == 'e' || c == 'E' {
		d.i++
		if c := d.peek(); c == '+' || c == '-' {
			d.i++
		}
		if !d.digits() {
			return nil, false, false
		}
		integer = false
	}
	return d.data[start:d.i], integer, true
}

// digits reads one or more decimal digits.
func (d *decoder) digits() bool {
	start := d.i
	for d.i < len(d.data) && '0' <= d.data[d.i] && d.data[d.i] <= '9' {
		d.i++
	}
	return d.i > start
}

// skip reads any value at the cursor, depth levels down in the answer.
func (d *decoder) skip(depth int) bool {
	switch c := d.peek(); {
	case c == '"':
		_, _, ok := d.str()
		return ok
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || '0' <= c && c <= '9':
		_, _, ok := d.number()
		return ok
	case c == '{' || c == '[':
		if depth >= maxSkipDepth {
			return false
		}
		end := byte('}')
		if c == '[' {
			end = ']'
		}
		d.i++
		d.space()
		if d.peek() == end {
			d.i++
			return true
		}
		for {
			if c == '{' {
				if d.peek() != '"' {
					return false
				}
				if _, _, ok := d.str(); !ok {
					return false
				}
				d.space()
				if d.next() != ':' {
					return false
				}
				d.space()
			}
			if !d.skip(depth + 1) {
				return false
			}
			d.space()
			switch d.next() {
			case ',':
				d.space()
			case end:
				return true
			default:
				return false
			}
		}
	}
	return false
}
