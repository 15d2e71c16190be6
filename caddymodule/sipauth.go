package caddymodule

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/seclog"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/users"
	"github.com/softphone-gateway/softphone-gateway/internal/sipdigest"
)

// SIPAuthConfig configures the SIP digest callback (`POST {prefix}/sip/auth`), the jambonz
// contract the sidecar calls for every REGISTER it must authenticate.
type SIPAuthConfig struct {
	// Shared secret of the `Jambonz-Signature` HMAC-SHA256 header. Empty: callbacks are
	// accepted from loopback peers only, unsigned.
	Secret string `json:"secret,omitempty"`
	// With a secret set, accept signed callbacks from any address. Default false: a signed
	// callback must also come from loopback.
	AllowRemote bool `json:"allow_remote,omitempty"`
	// How far a signature's timestamp may be from now. Default 5m.
	MaxSkew caddy.Duration `json:"max_skew,omitempty"`
	// Largest registration expiry granted, in seconds; 0 grants what the phone asked.
	MaxExpires int `json:"max_expires,omitempty"`
	// call_hook answered for users that have none of their own.
	CallHook string `json:"call_hook,omitempty"`
	// call_status_hook answered for users that have none of their own.
	CallStatusHook string `json:"call_status_hook,omitempty"`
}

// maxSIPAuthBody bounds a callback body.
const maxSIPAuthBody = 8 << 10

// sipAuthRequest is the jambonz callback body.
type sipAuthRequest struct {
	Method        string `json:"method"`
	Expires       *int   `json:"expires"`
	Scheme        string `json:"scheme"`
	Username      string `json:"username"`
	Realm         string `json:"realm"`
	Nonce         string `json:"nonce"`
	URI           string `json:"uri"`
	Response      string `json:"response"`
	QOP           string `json:"qop"`
	NC            string `json:"nc"`
	CNonce        string `json:"cnonce"`
	Algorithm     string `json:"algorithm"`
	SourceAddress string `json:"source_address"`
	SourcePort    int    `json:"source_port"`
}

type sipAuthAnswer struct {
	Status         string `json:"status"`
	Msg            string `json:"msg,omitempty"`
	Expires        *int   `json:"expires,omitempty"`
	CallHook       string `json:"call_hook,omitempty"`
	CallStatusHook string `json:"call_status_hook,omitempty"`
	DisplayName    string `json:"display_name,omitempty"`
}

// sipAuthFailed is the one answer for an unknown user, a wrong response and a disabled user.
var sipAuthFailed = sipAuthAnswer{Status: "fail", Msg: "authentication failed"}

// sipAuth decides a REGISTER's digest from the user backends: it recomputes the response
// from the plain secret or the stored HA1 (MD5 or SHA-256). The caller must be on loopback
// and/or sign the body, as configured.
func (a *API) sipAuth(w http.ResponseWriter, r *http.Request) error {
	app, now := a.app, a.app.now()
	cfg := app.SIPAuth
	if !cfg.AllowRemote || cfg.Secret == "" {
		// Before the body is read: a caller who may not ask costs no buffer.
		if !loopbackPeer(r) {
			metrics.sipAuth.WithLabelValues("forbidden").Inc()
			writeError(w, http.StatusForbidden, msgForbidden, now)
			return nil
		}
	}
	body, err := readBody(w, r, maxSIPAuthBatchBody)
	if err != nil {
		metrics.sipAuth.WithLabelValues("bad_request").Inc()
		bodyError(w, err, now)
		return nil
	}
	if cfg.Secret != "" && !validSignature(r.Header.Get("Jambonz-Signature"), body, cfg.Secret, now, time.Duration(cfg.MaxSkew)) {
		metrics.sipAuth.WithLabelValues("forbidden").Inc()
		writeError(w, http.StatusForbidden, msgForbidden, now)
		return nil
	}
	if b := bytes.TrimLeft(body, " \t\r\n"); len(b) > 0 && b[0] == '[' {
		return a.sipAuthBatch(w, r, body)
	}
	if len(body) > maxSIPAuthBody {
		writeError(w, http.StatusRequestEntityTooLarge, msgTooLarge, now)
		return nil
	}
	var req sipAuthRequest
	if err := decodeSIPAuthRequest(body, &req); err != nil {
		metrics.sipAuth.WithLabelValues("bad_request").Inc()
		writeError(w, http.StatusBadRequest, msgBadRequest, now)
		return nil
	}
	creds, err := req.credentials()
	if err != nil {
		metrics.sipAuth.WithLabelValues("bad_request").Inc()
		writeError(w, http.StatusBadRequest, msgBadRequest, now)
		return nil
	}
	ans, err := a.decideSIPAuth(r, &req, creds)
	if err != nil {
		writeError(w, http.StatusServiceUnavailable, msgUnavailable, now)
		return nil
	}
	w.Header()[sipAuthBatchHeader] = sipAuthBatchOffer
	writeRaw(w, http.StatusOK, sipAuthAnswerJSON(&ans))
	return nil
}

// The batch form of the callback, an extension our sidecar uses once it has seen
// sipAuthBatchHeader on an answer: a JSON array of callback bodies (at most maxSIPAuthBatch)
// answered by an array of answers in the same order. One HTTP exchange then carries many
// REGISTERs' digests, which is what the callback costs under load. A jambonz hook never
// sees it.
const (
	maxSIPAuthBatch     = 256
	maxSIPAuthBatchBody = 256 << 10
	sipAuthBatchHeader  = "Softphone-Auth-Batch"
)

var sipAuthBatchOffer = []string{strconv.Itoa(maxSIPAuthBatch)}

// sipAuthBatch answers a batch. A malformed element is answered "fail" on its own, so one
// phone's odd digest cannot spoil the verdicts of the others in its batch.
func (a *API) sipAuthBatch(w http.ResponseWriter, r *http.Request, body []byte) error {
	now := a.app.now()
	items, ok := decodeSIPAuthBatch(body)
	if !ok {
		metrics.sipAuth.WithLabelValues("bad_request").Inc()
		writeError(w, http.StatusBadRequest, msgBadRequest, now)
		return nil
	}
	answers := make([]sipAuthAnswer, len(items))
	for i := range items {
		req := &items[i].req
		if !items[i].valid {
			metrics.sipAuth.WithLabelValues("bad_request").Inc()
			answers[i] = sipAuthFailed
			continue
		}
		creds, err := req.credentials()
		if err != nil {
			metrics.sipAuth.WithLabelValues("bad_request").Inc()
			answers[i] = sipAuthFailed
			continue
		}
		ans, err := a.decideSIPAuth(r, req, creds)
		if err != nil {
			writeError(w, http.StatusServiceUnavailable, msgUnavailable, now)
			return nil
		}
		answers[i] = ans
	}
	w.Header()[sipAuthBatchHeader] = sipAuthBatchOffer
	writeRaw(w, http.StatusOK, sipAuthAnswersJSON(answers))
	return nil
}

// decideSIPAuth gives the verdict on one well-formed callback; an error means the user
// backends could not be read.
func (a *API) decideSIPAuth(r *http.Request, req *sipAuthRequest, creds sipdigest.Credentials) (sipAuthAnswer, error) {
	app, cfg := a.app, a.app.SIPAuth
	u, err := app.lookupUser(r.Context(), req.Username)
	if err != nil {
		a.logger.Error("looking up user", zap.Error(err))
		metrics.sipAuth.WithLabelValues("error").Inc()
		return sipAuthAnswer{}, err
	}
	if !digestMatches(u, creds, req.Method) || !u.IsEnabled() {
		metrics.sipAuth.WithLabelValues("fail").Inc()
		app.event(seclog.AuthFailed, "Failed SIP registration for user: "+req.Username, req.SourceAddress)
		return sipAuthFailed, nil
	}
	ans := sipAuthAnswer{
		Status:         "ok",
		Expires:        req.Expires,
		CallHook:       firstNonEmpty(u.CallHook, cfg.CallHook),
		CallStatusHook: firstNonEmpty(u.CallStatusHook, cfg.CallStatusHook),
		DisplayName:    u.DisplayName,
	}
	if cfg.MaxExpires > 0 && req.Expires != nil && *req.Expires > cfg.MaxExpires {
		ans.Expires = &cfg.MaxExpires
	}
	metrics.sipAuth.WithLabelValues("ok").Inc()
	return ans, nil
}

// credentials checks the body's shape and turns it into digest credentials.
func (req *sipAuthRequest) credentials() (sipdigest.Credentials, error) {
	if !strings.EqualFold(req.Scheme, "digest") && req.Scheme != "" {
		return sipdigest.Credentials{}, errors.New("scheme is not digest")
	}
	if req.Method == "" || req.Username == "" || req.Realm == "" || req.Nonce == "" || req.URI == "" || req.Response == "" {
		return sipdigest.Credentials{}, errors.New("a required field is empty")
	}
	if len(req.Username) > users.MaxUsernameLen || (req.Expires != nil && *req.Expires < 0) {
		return sipdigest.Credentials{}, errors.New("field out of range")
	}
	alg := req.Algorithm
	if alg == "" {
		alg = sipdigest.MD5
	}
	if !strings.EqualFold(alg, sipdigest.MD5) && !strings.EqualFold(alg, sipdigest.SHA256) {
		return sipdigest.Credentials{}, sipdigest.ErrAlgorithm
	}
	if req.QOP != "" && (req.QOP != "auth" || req.NC == "" || req.CNonce == "") {
		return sipdigest.Credentials{}, errors.New("qop needs auth, nc and cnonce")
	}
	return sipdigest.Credentials{
		Username: req.Username, Realm: req.Realm, Nonce: req.Nonce, URI: req.URI,
		Response: req.Response, Algorithm: alg, CNonce: req.CNonce, QOP: req.QOP, NC: req.NC,
	}, nil
}

// digestMatches recomputes the response for u (nil = unknown user, checked against a decoy so
// that it costs the same) and compares in constant time.
func digestMatches(u *users.User, c sipdigest.Credentials, method string) bool {
	known := u != nil
	if !known {
		u = sipDecoy
	}
	ha1, ok := u.HA1For(c.Algorithm, c.Realm)
	if !ok {
		ha1 = sipdigest.HA1(c.Algorithm, u.Username, c.Realm, "no secret for this algorithm")
	}
	// A user stored as HA1 has it for one realm: a different realm cannot match.
	match := sipdigest.Equal(sipdigest.Response(c, method, ha1), c.Response)
	return known && ok && match
}

var sipDecoy = &users.User{ID: 1, Username: "decoy", Password: "decoy-secret-never-matches"}

// validSignature checks `Jambonz-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>`.
func validSignature(header string, body []byte, secret string, now time.Time, skew time.Duration) bool {
	if header == "" || len(header) > 512 {
		return false
	}
	if skew <= 0 {
		skew = 5 * time.Minute
	}
	var ts string
	var sigs []string
	for _, part := range strings.Split(header, ",") {
		k, v, _ := strings.Cut(strings.TrimSpace(part), "=")
		switch k {
		case "t":
			ts = v
		case "v1":
			sigs = append(sigs, v)
		}
	}
	t, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || now.Sub(time.Unix(t, 0)).Abs() > skew {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	mac.Write([]byte{'.'})
	mac.Write(body)
	want := mac.Sum(nil)
	ok := false
	for _, s := range sigs {
		got, err := hex.DecodeString(s)
		if err == nil && hmac.Equal(got, want) {
			ok = true
		}
	}
	return ok
}

// loopbackPeer reports whether the TCP peer is a loopback address. X-Forwarded-For and
// Caddy's trusted_proxies are deliberately ignored: only the socket counts.
func loopbackPeer(r *http.Request) bool {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// bodyError answers a body that could not be read: 413 when it was over its limit, 400 when
// it broke off or was malformed.
func bodyError(w http.ResponseWriter, err error, now time.Time) {
	var tooBig *http.MaxBytesError
	if errors.As(err, &tooBig) {
		writeError(w, http.StatusRequestEntityTooLarge, msgTooLarge, now)
		return
	}
	writeError(w, http.StatusBadRequest, msgBadRequest, now)
}

// readBody reads r's body, at most limit bytes (an error beyond). With a Content-Length it
// reads into one buffer of that size: a 64-callback batch is about 25 KiB, which
// io.ReadAll would reach by growing and copying its buffer six times.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	body := http.MaxBytesReader(w, r.Body, limit)
	if n := r.ContentLength; n > 0 && n <= limit {
		buf := make([]byte, n)
		// net/http ends the body at Content-Length, so a full buffer is the whole body and
		// a short one an error, as io.ReadAll would report it.
		if _, err := io.ReadFull(body, buf); err != nil {
			return nil, err
		}
		return buf, nil
	}
	return io.ReadAll(body)
}
