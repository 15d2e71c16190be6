package caddymodule

import (
	"encoding/json"
	"strconv"
)

// The callback body decoded by hand. Under load the sidecar posts batches of up to
// maxSIPAuthBatch flat objects, and encoding/json (a Decoder per element, the array
// validated and scanned twice) took 37% of the gateway's CPU at 14,000 REGISTER/s. The fast
// path takes the objects encoding/json writes for the sidecar's authhook.Request: known keys,
// each once, string values (one with an escape or a non-ASCII byte is unquoted by
// encoding/json), integers, JSON whitespace. Anything else (an unknown or differently cased
// key, a key given twice, null where a string belongs, a float, a nested value, trailing
// data…) goes to decodeStrictJSON, and a batch element the fast path does not take is cut out
// by skipping strings and counting brackets and judged by json.Valid, so what is accepted,
// refused or answered 400 and the struct decoded stay encoding/json's. FuzzSIPAuthRequest and
// FuzzSIPAuthBatch hold the two paths together. The answers, flat too, are written by hand in
// json.Marshal's exact bytes (FuzzSIPAuthAnswer).

// The keys of a callback object, numbered for scanSIPAuthRequest's masks: the string fields
// first, sipStringKeys of them.
const (
	sipKeyMethod = iota
	sipKeyScheme
	sipKeyUsername
	sipKeyRealm
	sipKeyNonce
	sipKeyURI
	sipKeyResponse
	sipKeyQOP
	sipKeyNC
	sipKeyCNonce
	sipKeyAlgorithm
	sipKeySourceAddress
	sipKeyExpires
	sipKeySourcePort

	sipStringKeys = sipKeyExpires
)

func sipAuthKey(k []byte) int {
	switch string(k) {
	case "method":
		return sipKeyMethod
	case "scheme":
		return sipKeyScheme
	case "username":
		return sipKeyUsername
	case "realm":
		return sipKeyRealm
	case "nonce":
		return sipKeyNonce
	case "uri":
		return sipKeyURI
	case "response":
		return sipKeyResponse
	case "qop":
		return sipKeyQOP
	case "nc":
		return sipKeyNC
	case "cnonce":
		return sipKeyCNonce
	case "algorithm":
		return sipKeyAlgorithm
	case "source_address":
		return sipKeySourceAddress
	case "expires":
		return sipKeyExpires
	case "source_port":
		return sipKeySourcePort
	}
	return -1
}

// decodeSIPAuthRequest decodes a single callback body into req as decodeStrictJSON does.
func decodeSIPAuthRequest(body []byte, req *sipAuthRequest) error {
	if end, ok := scanSIPAuthRequest(body, skipJSONSpace(body, 0), req, nil); ok && skipJSONSpace(body, end) == len(body) {
		return nil
	}
	*req = sipAuthRequest{}
	return decodeStrictJSON(body, req)
}

// sipAuthItem is one element of a batch.
type sipAuthItem struct {
	req     sipAuthRequest
	expires int  // what req.Expires points to when the fast path set it
	valid   bool // the element is a callback object (req is its content)
}

// decodeSIPAuthBatch splits a batch body and decodes its elements as the strict path did
// (the array with json.Unmarshal into raw elements, each with decodeStrictJSON). ok false:
// the whole batch is refused, being no valid JSON array with nothing after it, empty, or
// longer than maxSIPAuthBatch. An element that is no callback object, or longer than
// maxSIPAuthBody, comes back not valid.
func decodeSIPAuthBatch(body []byte) (items []sipAuthItem, ok bool) {
	i := skipJSONSpace(body, 0)
	if i == len(body) || body[i] != '[' {
		return nil, false
	}
	i = skipJSONSpace(body, i+1)
	if i < len(body) && body[i] == ']' {
		return nil, false
	}
	// Full capacity up front: the elements' req.Expires point into the slice.
	items = make([]sipAuthItem, 0, maxSIPAuthBatch)
	for {
		if len(items) == maxSIPAuthBatch {
			return nil, false
		}
		items = items[:len(items)+1]
		it := &items[len(items)-1]
		end, ok := scanSIPAuthRequest(body, i, &it.req, &it.expires)
		if ok {
			it.valid = end-i <= maxSIPAuthBody
		} else {
			if end, ok = jsonValueEnd(body, i); !ok {
				return nil, false
			}
			it.req = sipAuthRequest{}
			it.valid = end-i <= maxSIPAuthBody && decodeStrictJSON(body[i:end], &it.req) == nil
		}
		i = skipJSONSpace(body, end)
		if i == len(body) {
			return nil, false
		}
		switch body[i] {
		case ',':
			i = skipJSONSpace(body, i+1)
		case ']':
			if skipJSONSpace(body, i+1) != len(body) {
				return nil, false
			}
			return items, true
		default:
			return nil, false
		}
	}
}

// scanSIPAuthRequest decodes the callback object that starts at b[i] into req (which must be
// zero) and returns the index after its closing brace. ok false: the object is not one the
// fast path takes, and req holds debris. A non-null expires is stored in *expires (a new int
// when expires is nil) and req.Expires points to it. The string fields share one allocation,
// a copy of the object's bytes.
func scanSIPAuthRequest(b []byte, i int, req *sipAuthRequest, expires *int) (end int, ok bool) {
	start := i
	if i >= len(b) || b[i] != '{' {
		return 0, false
	}
	dst := [sipStringKeys]*string{&req.Method, &req.Scheme, &req.Username, &req.Realm, &req.Nonce,
		&req.URI, &req.Response, &req.QOP, &req.NC, &req.CNonce, &req.Algorithm, &req.SourceAddress}
	var spans [sipStringKeys][2]int // plain string values, as offsets into b
	var seen, plain uint16
	i = skipJSONSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		// A key: plain ASCII only, anything else (escapes included) is not a known key as written.
		if i >= len(b) || b[i] != '"' {
			return 0, false
		}
		j := i + 1
		for j < len(b) && jsonPlain[b[j]] {
			j++
		}
		if j == len(b) || b[j] != '"' {
			return 0, false
		}
		k := sipAuthKey(b[i+1 : j])
		if k < 0 || seen&(1<<k) != 0 {
			return 0, false
		}
		seen |= 1 << k
		i = skipJSONSpace(b, j+1)
		if i == len(b) || b[i] != ':' {
			return 0, false
		}
		i = skipJSONSpace(b, i+1)
		switch k {
		case sipKeyExpires:
			if len(b)-i >= 4 && string(b[i:i+4]) == "null" {
				i += 4
				break
			}
			v, n, ok := scanJSONInt(b, i)
			if !ok {
				return 0, false
			}
			if expires == nil {
				expires = new(int)
			}
			*expires, req.Expires, i = v, expires, n
		case sipKeySourcePort:
			v, n, ok := scanJSONInt(b, i)
			if !ok {
				return 0, false
			}
			req.SourcePort, i = v, n
		default:
			if i == len(b) || b[i] != '"' {
				return 0, false
			}
			j := i + 1
			for j < len(b) && jsonPlain[b[j]] {
				j++
			}
			if j < len(b) && b[j] == '"' {
				spans[k], plain = [2]int{i + 1, j}, plain|1<<k
				i = j + 1
				break
			}
			// An escape or a byte outside printable ASCII: encoding/json decodes the string
			// (and refuses control characters and bad escapes).
			j, ok := jsonStringEnd(b, i)
			if !ok || json.Unmarshal(b[i:j], dst[k]) != nil {
				return 0, false
			}
			i = j
		}
		i = skipJSONSpace(b, i)
		if i == len(b) {
			return 0, false
		}
		if b[i] == '}' {
			i++
			break
		}
		if b[i] != ',' {
			return 0, false
		}
		i = skipJSONSpace(b, i+1)
	}
	if plain != 0 {
		s := string(b[start:i])
		for k := range sipStringKeys {
			if plain&(1<<k) != 0 {
				*dst[k] = s[spans[k][0]-start : spans[k][1]-start]
			}
		}
	}
	return i, true
}

// jsonPlain marks the bytes a JSON string holds as they are: printable ASCII but the quote
// and the backslash.
var jsonPlain = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// scanJSONInt reads the JSON integer at b[i] of at most 18 digits (any int holds it) and
// returns it with the index after it. A longer one, or a fraction or exponent, is left to
// the caller's look at the byte that follows, which is then no delimiter.
func scanJSONInt(b []byte, i int) (v, end int, ok bool) {
	neg := i < len(b) && b[i] == '-'
	if neg {
		i++
	}
	if i == len(b) || b[i] < '0' || b[i] > '9' {
		return 0, 0, false
	}
	if b[i] == '0' {
		return 0, i + 1, true
	}
	for n := 0; i < len(b) && n < 18 && b[i] >= '0' && b[i] <= '9'; n++ {
		v = v*10 + int(b[i]-'0')
		i++
	}
	if neg {
		v = -v
	}
	return v, i, true
}

func skipJSONSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// jsonStringEnd returns the index after the string that starts with the quote at b[i]. It
// only finds the closing quote; whether the string is valid JSON is the caller's to check.
func jsonStringEnd(b []byte, i int) (int, bool) {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1, true
		}
	}
	return 0, false
}

// jsonMaxDepth is encoding/json's bound on nesting (its scanner's maxNestingDepth): deeper,
// json.Unmarshal refuses the whole document.
const jsonMaxDepth = 10000

// jsonValueEnd returns the index after the batch element that starts at b[i], one the fast
// path did not take, and whether it is valid JSON: its extent is found by skipping strings and
// counting brackets, then json.Valid judges it. The element sits in the batch array, one
// level down, so it may nest one level less than jsonMaxDepth.
func jsonValueEnd(b []byte, i int) (int, bool) {
	start := i
	if i == len(b) {
		return 0, false
	}
	switch b[i] {
	case '"':
		end, ok := jsonStringEnd(b, i)
		return end, ok && json.Valid(b[start:end])
	case '{', '[':
		depth, deepest := 0, 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				end, ok := jsonStringEnd(b, i)
				if !ok {
					return 0, false
				}
				i = end - 1
			case '{', '[':
				depth++
				deepest = max(deepest, depth)
			case '}', ']':
				depth--
			}
			if depth == 0 {
				end := i + 1
				return end, deepest < jsonMaxDepth && json.Valid(b[start:end])
			}
		}
		return 0, false
	default: // a number, true, false, null, or garbage
		for i < len(b) && b[i] != ',' && b[i] != ']' && b[i] != '}' && b[i] != ' ' && b[i] != '\t' && b[i] != '\n' && b[i] != '\r' {
			i++
		}
		return i, i > start && json.Valid(b[start:i])
	}
}

// sipAuthAnswerJSON is the answer as writeJSON sends it: json.Marshal's bytes and a newline.
func sipAuthAnswerJSON(a *sipAuthAnswer) []byte {
	return append(a.appendJSON(make([]byte, 0, a.encodedSize()+1)), '\n')
}

// sipAuthAnswersJSON is the answer array as writeJSON sends it.
func sipAuthAnswersJSON(answers []sipAuthAnswer) []byte {
	n := len("[]\n")
	for i := range answers {
		n += answers[i].encodedSize() + len(",")
	}
	return append(appendSIPAuthAnswers(make([]byte, 0, n), answers), '\n')
}

// encodedSize bounds the answer's encoding when its strings need no escapes: every field's
// key, quotes and punctuation, 20 characters for expires, and the strings.
func (a *sipAuthAnswer) encodedSize() int {
	const fixed = len(`{"status":"","msg":"","expires":,"call_hook":"","call_status_hook":"","display_name":""}`) + 20
	return fixed + len(a.Status) + len(a.Msg) + len(a.CallHook) + len(a.CallStatusHook) + len(a.DisplayName)
}

// appendSIPAuthAnswers appends answers as json.Marshal writes them.
func appendSIPAuthAnswers(b []byte, answers []sipAuthAnswer) []byte {
	b = append(b, '[')
	for i := range answers {
		if i > 0 {
			b = append(b, ',')
		}
		b = answers[i].appendJSON(b)
	}
	return append(b, ']')
}

// appendJSON appends the answer as json.Marshal writes it, omitempty fields left out.
func (a *sipAuthAnswer) appendJSON(b []byte) []byte {
	b = append(b, `{"status":`...)
	b = appendJSONString(b, a.Status)
	if a.Msg != "" {
		b = append(b, `,"msg":`...)
		b = appendJSONString(b, a.Msg)
	}
	if a.Expires != nil {
		b = append(b, `,"expires":`...)
		b = strconv.AppendInt(b, int64(*a.Expires), 10)
	}
	if a.CallHook != "" {
		b = append(b, `,"call_hook":`...)
		b = appendJSONString(b, a.CallHook)
	}
	if a.CallStatusHook != "" {
		b = append(b, `,"call_status_hook":`...)
		b = appendJSONString(b, a.CallStatusHook)
	}
	if a.DisplayName != "" {
		b = append(b, `,"display_name":`...)
		b = appendJSONString(b, a.DisplayName)
	}
	return append(b, '}')
}

// appendJSONString appends s quoted as json.Marshal quotes it. Printable ASCII but the quote,
// the backslash and the characters json.Marshal escapes for HTML (<, >, &) goes as it is;
// any other string goes through json.Marshal.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !jsonPlain[c] || c == '<' || c == '>' || c == '&' {
			q, _ := json.Marshal(s) // a string always marshals
			return append(b, q...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
