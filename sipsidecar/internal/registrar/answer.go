package registrar

import (
	"bytes"
	"net"
	"strconv"
	"strings"

	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/digest"
)

// answer is a response decided but not yet written: its status, and what it adds to the
// headers every answer copies from the request. Handle writes it straight into the
// server's buffer (write), so no sipgo Response or header objects are built for it.
type answer struct {
	code     int
	reason   string
	contacts []boundContact // a 200 to REGISTER: one Contact per live binding
	digest   challenge      // a 401: one WWW-Authenticate per offered algorithm
	fields   []field        // further headers, in order
	inline   [2]field       // room for fields without another allocation
}

type field struct{ name, value string }

// challenge is what a 401's WWW-Authenticate headers offer (digest.AppendChallenge).
type challenge struct {
	realm, nonce string
	algorithms   []string
	stale        bool
}

// boundContact is a Contact of a 200 to REGISTER.
type boundContact struct {
	uri      string // as stored: the URI sipgo printed from the REGISTER
	instance string // +sip.instance, if any
	expires  int    // seconds left
}

// reply starts an answer with its status; add, contacts and digest fill in the rest.
func (r *Registrar) reply(code int, reason string) *answer {
	a := &answer{code: code, reason: reason}
	a.fields = a.inline[:0]
	return a
}

// add appends a header; value must already be safe in a header (no CR or LF).
func (a *answer) add(name, value string) *answer {
	a.fields = append(a.fields, field{name, value})
	return a
}

// write writes a as the answer to req (RFC 3261 §8.2.6): the status line (in SIP/2.0, the
// only version handle answers with anything but 505); Record-Route on a 2xx to anything but
// REGISTER (as sipgo's NewResponseFromRequest does); every Via, the top one with the rport
// and received the phone asked for (RFC 3581 §4); From; To with a tag added when it has
// none; Call-ID and CSeq; Allow and Server; what a adds; and Content-Length: 0 last.
// TestWriteMatchesSipgo holds it to sipgo's own rendering.
func (r *Registrar) write(w *bytes.Buffer, req *sip.Request, a *answer) {
	w.WriteString("SIP/2.0 ")
	w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(a.code), 10))
	w.WriteByte(' ')
	w.WriteString(a.reason)
	w.WriteString("\r\n")
	if req.Method != sip.REGISTER && a.code >= 200 && a.code < 300 {
		for _, h := range req.Headers() {
			if strings.EqualFold(h.Name(), "Record-Route") {
				h.StringWrite(w)
				w.WriteString("\r\n")
			}
		}
	}
	top := true
	for _, h := range req.Headers() {
		if via, ok := h.(*sip.ViaHeader); ok {
			writeVia(w, via, top, req.Source())
			top = false
		}
	}
	if h := req.From(); h != nil {
		writeNameAddr(w, "From", h.DisplayName, &h.Address, h.Params)
		w.WriteString("\r\n")
	}
	if h := req.To(); h != nil {
		writeNameAddr(w, "To", h.DisplayName, &h.Address, h.Params)
		if !h.Params.Has("tag") {
			w.WriteString(";tag=")
			writeTag(w)
		}
		w.WriteString("\r\n")
	}
	if h := req.CallID(); h != nil {
		w.WriteString("Call-ID: ")
		w.WriteString(string(*h))
		w.WriteString("\r\n")
	}
	if h := req.CSeq(); h != nil {
		w.WriteString("CSeq: ")
		w.Write(strconv.AppendUint(w.AvailableBuffer(), uint64(h.SeqNo), 10))
		w.WriteByte(' ')
		w.WriteString(string(h.MethodName))
		w.WriteString("\r\n")
	}
	w.WriteString("Allow: " + allowed + "\r\nServer: ")
	w.WriteString(r.cfg.ServerName)
	w.WriteString("\r\n")
	for _, c := range a.contacts {
		w.WriteString("Contact: <")
		w.WriteString(c.uri)
		w.WriteString(">;expires=")
		w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(c.expires), 10))
		if c.instance != "" {
			w.WriteString(`;+sip.instance="`)
			w.WriteString(c.instance)
			w.WriteByte('"')
		}
		w.WriteString("\r\n")
	}
	if c := &a.digest; len(c.algorithms) > 0 {
		for _, alg := range c.algorithms {
			w.WriteString("WWW-Authenticate: ")
			w.Write(digest.AppendChallenge(w.AvailableBuffer(), c.realm, c.nonce, alg, c.stale))
			w.WriteString("\r\n")
		}
	}
	for _, f := range a.fields {
		w.WriteString(f.name)
		w.WriteString(": ")
		w.WriteString(f.value)
		w.WriteString("\r\n")
	}
	w.WriteString("Content-Length: 0\r\n\r\n")
}

// writeVia writes a Via header as sipgo prints it. On the top Via, an rport without a value
// gets the source port, and received the source address (replacing one the phone sent);
// sipgo's ViaHeader.StringWrite would build the value in a string first.
func writeVia(w *bytes.Buffer, via *sip.ViaHeader, top bool, source string) {
	w.WriteString("Via: ")
	w.WriteString(via.ProtocolName)
	w.WriteByte('/')
	w.WriteString(via.ProtocolVersion)
	w.WriteByte('/')
	w.WriteString(via.Transport)
	w.WriteByte(' ')
	w.Write(appendHost(w.AvailableBuffer(), via.Host))
	if via.Port > 0 {
		w.WriteByte(':')
		w.Write(strconv.AppendInt(w.AvailableBuffer(), int64(via.Port), 10))
	}
	var host, port string
	if top {
		if v, ok := via.Params.Get("rport"); ok && v == "" {
			if h, p, err := net.SplitHostPort(source); err == nil {
				host, port = h, p
			}
		}
	}
	received := false
	for _, kv := range via.Params {
		w.WriteByte(';')
		v := kv.V
		switch {
		case port != "" && kv.K == "rport":
			v = port
		case port != "" && kv.K == "received":
			v, received = host, true
		}
		w.Write(appendParam(w.AvailableBuffer(), kv.K, v))
	}
	if port != "" && !received {
		w.WriteByte(';')
		w.Write(appendParam(w.AvailableBuffer(), "received", host))
	}
	w.WriteString("\r\n")
}

// writeNameAddr writes a From or To header as sipgo prints it, with the URI from appendURI
// (sipgo's printer parses the host as an IP address and allocates an error for every name).
func writeNameAddr(w *bytes.Buffer, name, display string, uri *sip.Uri, params sip.HeaderParams) {
	w.WriteString(name)
	w.WriteString(": ")
	if display != "" {
		w.WriteByte('"')
		w.WriteString(display)
		w.WriteString(`" `)
	}
	w.WriteByte('<')
	w.Write(appendURI(w.AvailableBuffer(), uri))
	w.WriteByte('>')
	if len(params) > 0 {
		w.WriteByte(';')
		w.Write(appendParams(w.AvailableBuffer(), params, ';'))
	}
}
