package sipserver

import (
	"strings"

	"github.com/emiago/sipgo/sip"
)

// parseRequest parses a datagram holding a request of the plain shape phones send (a
// REGISTER or OPTIONS whose headers sipgo's parser would read without any of its special
// cases) into the same sip.Request sipgo's parser makes, field for field, at a fraction of
// its cost: one copy of the datagram that every string of the request points into, and
// one allocation for all its typed headers and their parameters, where sipgo's makes a
// string and an object per header and a slice per parameter list (for SIPp's REGISTER
// with credentials, 40 allocations and about 3 µs on the bench's VM; this, 8 and under 2).
//
// It returns nil for anything else, and the caller parses with sipgo: a response, a body,
// a folded line, a header list with commas, a quoted string with escapes, a URI that is not
// plain sip:/sips: (IPv6 literals, passwords, URI headers, other schemes), a parameter
// without a plain name or value, and any header sipgo reads itself that this does not
// (Content-Type, Route, Record-Route, Refer-To, Referred-By). Being strict costs only
// speed: FuzzParseRequest holds every request this returns to sipgo's reading of the same
// bytes.
func parseRequest(data []byte) *sip.Request {
	if len(data) > sip.ParseMaxMessageLength || len(data) < 16 {
		return nil
	}
	msg := string(data)
	end := indexCRLF(msg)
	if end < 0 || !plainStartLine(msg[:end]) {
		return nil
	}
	a := new(arena)
	line := msg[:end]
	sp1 := strings.IndexByte(line, ' ')
	sp2 := sp1 + 1 + strings.IndexByte(line[sp1+1:], ' ')
	var recipient sip.Uri
	if !a.parseURI(line[sp1+1:sp2], &recipient) {
		return nil
	}
	req := sip.NewRequest(sip.RequestMethod(line[:sp1]), recipient)
	req.SipVersion = line[sp2+1:]

	pos := end + 2
	length, haveLength := uint64(0), false
	for {
		rest := msg[pos:]
		end := indexCRLF(rest)
		if end < 0 {
			return nil
		}
		if end == 0 {
			pos += 2
			break
		}
		if next := end + 2; next < len(rest) && (rest[next] == ' ' || rest[next] == '\t') {
			return nil // a folded line
		}
		line := rest[:end]
		pos += end + 2

		colon := strings.IndexByte(line, ':')
		if colon <= 0 {
			return nil
		}
		name := trimBlank(line[:colon])
		value := trimBlank(line[colon+1:])
		if !isAll(name, cToken) || !plainEdges(value) {
			return nil
		}
		var h sip.Header
		switch kind := headerKind(name); kind {
		case hGeneric:
			h = sip.NewHeader(name, value)
		case hVia:
			v := a.newVia()
			if !a.parseVia(value, v) {
				return nil
			}
			h = v
		case hFrom:
			f := a.newFrom()
			if !a.parseAddress(value, &f.DisplayName, &f.Address, &f.Params) {
				return nil
			}
			h = f
		case hTo:
			t := a.newTo()
			if !a.parseAddress(value, &t.DisplayName, &t.Address, &t.Params) {
				return nil
			}
			h = t
		case hContact:
			if strings.IndexByte(value, ',') >= 0 {
				return nil // a list: sipgo splits it
			}
			c := a.newContact()
			if !a.parseAddress(value, &c.DisplayName, &c.Address, &c.Params) {
				return nil
			}
			h = c
		case hCallID:
			if value == "" {
				return nil
			}
			c := a.newCallID()
			*c = sip.CallIDHeader(value)
			h = c
		case hCSeq:
			c := a.newCSeq()
			if !cseq(value, c) {
				return nil
			}
			h = c
		case hMaxForwards:
			n, ok := decimal(value, 10)
			if !ok || n > 1<<32-1 {
				return nil
			}
			m := a.newMaxForwards()
			*m = sip.MaxForwardsHeader(n)
			h = m
		case hContentLength:
			n, ok := decimal(value, 10)
			if !ok || n > 1<<32-1 {
				return nil
			}
			length, haveLength = n, true
			l := a.newContentLength()
			*l = sip.ContentLengthHeader(n)
			h = l
		default: // one sipgo parses and this does not
			return nil
		}
		req.AppendHeader(h)
	}
	// sipgo reads a body of the last Content-Length, or all that follows when there is none.
	if haveLength && length != 0 || !haveLength && pos != len(msg) {
		return nil
	}
	return req
}

// arena holds a request's typed headers and their parameters: usually all of them, so
// that a request is one allocation here, not one per header, URI and parameter list.
// Lists are cut to their own length (s[:n:n]), so that a later Add to one reallocates it
// instead of writing over its neighbour.
type arena struct {
	via        [1]sip.ViaHeader
	contact    [1]sip.ContactHeader
	from       sip.FromHeader
	to         sip.ToHeader
	callID     sip.CallIDHeader
	cseq       sip.CSeqHeader
	maxFwd     sip.MaxForwardsHeader
	length     sip.ContentLengthHeader
	kv         [8]sip.HeaderKV
	nkv        int
	nvia, ncon int
	used       uint8 // which of the single headers are taken (a second one is allocated)
}

const (
	usedFrom = 1 << iota
	usedTo
	usedCallID
	usedCSeq
	usedMaxFwd
	usedLength
)

func (a *arena) newVia() *sip.ViaHeader {
	if a.nvia < len(a.via) {
		a.nvia++
		return &a.via[a.nvia-1]
	}
	return new(sip.ViaHeader)
}

func (a *arena) newContact() *sip.ContactHeader {
	if a.ncon < len(a.contact) {
		a.ncon++
		return &a.contact[a.ncon-1]
	}
	return new(sip.ContactHeader)
}

// single returns mine when bit is still free, else a new T.
func single[T any](a *arena, bit uint8, mine *T) *T {
	if a.used&bit == 0 {
		a.used |= bit
		return mine
	}
	return new(T)
}

func (a *arena) newFrom() *sip.FromHeader     { return single(a, usedFrom, &a.from) }
func (a *arena) newTo() *sip.ToHeader         { return single(a, usedTo, &a.to) }
func (a *arena) newCallID() *sip.CallIDHeader { return single(a, usedCallID, &a.callID) }
func (a *arena) newCSeq() *sip.CSeqHeader     { return single(a, usedCSeq, &a.cseq) }
func (a *arena) newMaxForwards() *sip.MaxForwardsHeader {
	return single(a, usedMaxFwd, &a.maxFwd)
}
func (a *arena) newContentLength() *sip.ContentLengthHeader {
	return single(a, usedLength, &a.length)
}

// params returns an empty list with the arena's free room behind it.
func (a *arena) params() sip.HeaderParams { return sip.HeaderParams(a.kv[a.nkv:a.nkv:len(a.kv)]) }

// keep closes a list params returned: the room it used is taken, its capacity cut.
func (a *arena) keep(p sip.HeaderParams) sip.HeaderParams {
	if a.nkv < len(a.kv) && cap(p) > 0 && &p[:1][0] == &a.kv[a.nkv] { // still in the arena (Add may have moved it)
		a.nkv += len(p)
	}
	return p[:len(p):len(p)]
}

// parseVia parses "SIP/2.0/UDP host[:port][;params]" as sipgo's Via parser does.
func (a *arena) parseVia(s string, h *sip.ViaHeader) bool {
	if strings.IndexAny(s, ",[") >= 0 {
		return false // a list, or an IPv6 literal
	}
	slash1 := strings.IndexByte(s, '/')
	if slash1 <= 0 {
		return false
	}
	slash2 := slash1 + 1 + strings.IndexByte(s[slash1+1:], '/')
	if slash2 <= slash1+1 {
		return false
	}
	space := slash2 + 1 + strings.IndexByte(s[slash2+1:], ' ')
	if space <= slash2+1 {
		return false
	}
	name, version, transport := s[:slash1], s[slash1+1:slash2], s[slash2+1:space]
	if !isAll(name, cToken) || !isAll(version, cToken) || !isAll(transport, cToken) {
		return false
	}
	h.ProtocolName, h.ProtocolVersion, h.Transport = name, version, transport
	var ok bool
	h.Host, h.Port, h.Params, ok = a.parseHostPort(s[space+1:])
	return ok
}

// parseHostPort parses host[:port][;params], the end of a Via or a URI; params is nil
// when there are none, as sipgo has it.
func (a *arena) parseHostPort(s string) (host string, port int, params sip.HeaderParams, ok bool) {
	hostEnd := strings.IndexByte(s, ';')
	if hostEnd < 0 {
		hostEnd = len(s)
	}
	host = s[:hostEnd]
	if colon := strings.IndexByte(host, ':'); colon >= 0 {
		n, ok := decimal(host[colon+1:], 5)
		if !ok {
			return "", 0, nil, false
		}
		port, host = int(n), host[:colon]
	}
	if !isAll(host, cHost) {
		return "", 0, nil, false
	}
	if hostEnd == len(s) {
		return host, port, nil, true
	}
	params, ok = a.parseParams(s[hostEnd+1:], cParam)
	return host, port, params, ok
}

// parseAddress parses a From, To or Contact value (RFC 3261 §20.10) as sipgo's
// ParseAddressValue does: a display name, quoted or not, and a URI in < >, or a bare URI;
// then header parameters.
func (a *arena) parseAddress(s string, display *string, uri *sip.Uri, params *sip.HeaderParams) bool {
	var rest string
	switch lt := strings.IndexByte(s, '<'); {
	case s == "":
		return false
	case s[0] == '"':
		q := strings.IndexByte(s[1:], '"') + 1
		if q <= 0 || !isAll(s[1:q], cQuoted) {
			return false
		}
		*display = s[1:q]
		after := trimBlank(s[q+1:])
		if after == "" || after[0] != '<' {
			return false
		}
		rest = after[1:]
	case lt >= 0:
		// sipgo trims Unicode spaces too: the name's ends must be ASCII.
		name := trimBlank(s[:lt])
		if name != "" && (!isAll(name, cDisplay) || name[0] >= 0x80 || name[len(name)-1] >= 0x80) {
			return false
		}
		*display = name
		rest = s[lt+1:]
	default: // a bare URI: its parameters are the header's
		semi := strings.IndexByte(s, ';')
		if semi < 0 {
			semi = len(s)
		}
		*display = ""
		if !a.parseURI(s[:semi], uri) {
			return false
		}
		*params = nil
		if semi == len(s) {
			return true
		}
		p, ok := a.parseParams(s[semi+1:], cHeaderValue)
		*params = p
		return ok
	}
	gt := strings.IndexByte(rest, '>')
	if gt < 0 || !a.parseURI(rest[:gt], uri) {
		return false
	}
	*params = nil
	rest = rest[gt+1:]
	if rest == "" {
		return true
	}
	if rest[0] != ';' {
		return false
	}
	p, ok := a.parseParams(rest[1:], cHeaderValue)
	*params = p
	return ok
}

// parseURI parses a plain sip: or sips: URI, [user@]host[:port][;params], as sipgo's ParseUri
// does.
func (a *arena) parseURI(s string, u *sip.Uri) bool {
	switch {
	case strings.HasPrefix(s, "sip:"):
		u.Scheme, s = s[:3], s[4:]
	case strings.HasPrefix(s, "sips:"):
		u.Scheme, s = s[:4], s[5:]
	default:
		return false
	}
	if strings.IndexAny(s, "[?") >= 0 {
		return false // an IPv6 literal, URI headers
	}
	if at := strings.IndexByte(s, '@'); at >= 0 {
		if !isAll(s[:at], cUser) {
			return false
		}
		u.User, s = s[:at], s[at+1:]
	}
	var ok bool
	u.Host, u.Port, u.UriParams, ok = a.parseHostPort(s)
	return ok
}

// parseParams parses name[=value] pairs separated by ';', every name a token and every value
// non-empty and of valueClass, into a list from the arena; false for anything else (an
// empty pair, a second '='). Names repeat as sipgo's Add has them: the last value wins.
func (a *arena) parseParams(s string, valueClass uint8) (sip.HeaderParams, bool) {
	p := a.params()
	for {
		pair := s
		semi := strings.IndexByte(s, ';')
		if semi >= 0 {
			pair, s = s[:semi], s[semi+1:]
		}
		name, value := pair, ""
		if eq := strings.IndexByte(pair, '='); eq >= 0 {
			name, value = pair[:eq], pair[eq+1:]
			if value == "" || !isAll(value, valueClass) {
				return nil, false
			}
		}
		if !isAll(name, cToken) {
			return nil, false
		}
		p.Add(name, value)
		if semi < 0 {
			return a.keep(p), true
		}
	}
}

// cseq parses "number METHOD" as sipgo does.
func cseq(s string, h *sip.CSeqHeader) bool {
	space := strings.IndexByte(s, ' ')
	if space <= 0 {
		return false
	}
	n, ok := decimal(s[:space], 10)
	method := s[space+1:]
	if !ok || n > 1<<31-1 || method == "" || !isAll(method, cUpper) {
		return false
	}
	h.SeqNo, h.MethodName = uint32(n), sip.RequestMethod(method)
	return true
}

// plainStartLine reports whether line is "METHOD sip-or-sips-URI SIP/2.0", the method in
// upper case (sipgo upper-cases it: a copy for any other).
func plainStartLine(line string) bool {
	sp1 := strings.IndexByte(line, ' ')
	if sp1 <= 0 || !isAll(line[:sp1], cUpper) {
		return false
	}
	rest := line[sp1+1:]
	sp2 := strings.IndexByte(rest, ' ')
	return sp2 > 0 && rest[sp2+1:] == "SIP/2.0"
}

// Header kinds: the headers sipgo parses into types of their own, by name in any case
// and compact form, and all the rest (hGeneric).
const (
	hGeneric = iota
	hVia
	hFrom
	hTo
	hContact
	hCallID
	hCSeq
	hMaxForwards
	hContentLength
	hOther // one sipgo parses and parseRequest leaves to it
)

func headerKind(name string) int {
	switch len(name) {
	case 1:
		switch name[0] | 0x20 {
		case 'v':
			return hVia
		case 'f':
			return hFrom
		case 't':
			return hTo
		case 'm':
			return hContact
		case 'i':
			return hCallID
		case 'l':
			return hContentLength
		case 'c':
			return hOther // Content-Type
		}
		return hGeneric
	case 2:
		if strings.EqualFold(name, "to") {
			return hTo
		}
	case 3:
		if strings.EqualFold(name, "via") {
			return hVia
		}
	case 4:
		switch {
		case strings.EqualFold(name, "from"):
			return hFrom
		case strings.EqualFold(name, "cseq"):
			return hCSeq
		}
	case 5:
		if strings.EqualFold(name, "route") {
			return hOther
		}
	case 7:
		switch {
		case strings.EqualFold(name, "contact"):
			return hContact
		case strings.EqualFold(name, "call-id"):
			return hCallID
		}
	case 8:
		if strings.EqualFold(name, "refer-to") {
			return hOther
		}
	case 11:
		if strings.EqualFold(name, "referred-by") {
			return hOther
		}
	case 12:
		switch {
		case strings.EqualFold(name, "max-forwards"):
			return hMaxForwards
		case strings.EqualFold(name, "content-type"), strings.EqualFold(name, "record-route"):
			return hOther
		}
	case 14:
		if strings.EqualFold(name, "content-length") {
			return hContentLength
		}
	}
	return hGeneric
}

// decimal parses 1 to most ASCII digits.
func decimal(s string, most int) (uint64, bool) {
	if s == "" || len(s) > most {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// trimBlank trims spaces and tabs.
func trimBlank(s string) string {
	for s != "" && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for s != "" && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// plainEdges reports whether a value trimmed of spaces and tabs starts and ends with a
// visible ASCII character, or is empty: sipgo trims every Unicode space (and \v, \f, \n)
// there. What lies between is kept as it is by both parsers; typed values are checked
// character by character where they are parsed.
func plainEdges(s string) bool {
	return s == "" || visible(s[0]) && visible(s[len(s)-1])
}

func visible(c byte) bool { return c > ' ' && c < 0x7f }

// indexCRLF is where s's first line ends: the index of its CR, which must come before
// an LF; -1 when it has none or a CR comes alone.
func indexCRLF(s string) int {
	i := strings.IndexByte(s, '\r')
	if i < 0 || i+1 >= len(s) || s[i+1] != '\n' {
		return -1
	}
	return i
}

// Character classes, a bit each in class.
const (
	cToken       = 1 << iota // RFC 3261 token
	cHost                    // letters, digits, '.', '-', '_'
	cUser                    // a URI's user part, without ':' (no password)
	cParam                   // a URI or Via parameter's value
	cHeaderValue             // a From, To or Contact parameter's value (quotes allowed: +sip.instance)
	cDisplay                 // an unquoted display name (spaces inside)
	cQuoted                  // inside a quoted display name (no escapes)
	cUpper                   // A-Z
)

var class = func() (t [256]uint8) {
	set := func(chars string, bits uint8) {
		for i := 0; i < len(chars); i++ {
			t[chars[i]] |= bits
		}
	}
	const alnum = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	set(alnum, cToken|cHost|cUser|cParam|cHeaderValue|cDisplay|cQuoted)
	set("ABCDEFGHIJKLMNOPQRSTUVWXYZ", cUpper)
	set("-.!%*_+`'~", cToken)
	set(".-_", cHost)
	set("-_.!~*'()%&=+$", cUser)
	set("-_.!~*'()%+/:&$", cParam)
	set("-_.!~*'()%+/:&$\"<>@[]?`#{}|^", cHeaderValue)
	set("-_.!~*'()%+/:&$@[]?`#{}|^= \t", cDisplay)
	set("-_.!~*'()%+/:&$@[]?`#{}|^=<>;, \t", cQuoted)
	for c := 0x80; c < 0x100; c++ {
		t[c] |= cQuoted | cDisplay
	}
	return t
}()

// isAll reports whether s is not empty and every byte of it has one of bits.
func isAll(s string, bits uint8) bool {
	if len(s) == 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if class[s[i]]&bits == 0 {
			return false
		}
	}
	return true
}
