package caddymodule

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// bearerRealm is the realm of our WWW-Authenticate challenges (RFC 6750 §3).
const bearerRealm = "softphone"

// Error strings of the wire contract (reference/softphone-api.md); apps match on them.
const (
	msgBadCredentialsInput = "Invalid credentials provided"
	msgBadCredentials      = "Invalid credentials"
	msgThrottled           = "Too many failed login attempts. Try again later"
	msgInternal            = "Internal server error"
	msgUnavailable         = "Service temporarily unavailable"
	msgRefreshBadToken     = "Invalid or missing token"
	msgRefreshWrongType    = "Invalid token type. Refresh token required"
	msgUnauthorized        = "Unauthorized"
	msgProfileNoToken      = "Unauthorized. Token required"
	msgWrongType           = "Invalid token type"
	msgTwoTokens           = "Only one token may be sent"
	msgMethodNotAllowed    = "Method not allowed"
	msgNotFound            = "Not found"
	msgTooLarge            = "Request body too large"
	msgForbidden           = "Forbidden"
	msgBadRequest          = "Bad request"
	msgUnknownChannel      = "Unknown channel"
)

// Header values every API answer carries, built once (the canonical keys skip net/http's
// canonicalization, and the shared slices are never modified).
var (
	hdrJSON    = []string{"application/json"}
	hdrNoStore = []string{"no-store"}
	hdrNoCache = []string{"no-cache"}
	hdrNosniff = []string{"nosniff"}
	hdrZero    = []string{"0"}
)

// writeJSON sends v with status. Every API answer is uncacheable: most carry tokens or
// per-user data, and none benefits from a cache (RFC 6749 §5.1).
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		status, b = http.StatusInternalServerError, []byte(`{"success":false,"error":"Internal server error"}`)
	}
	writeRaw(w, status, append(b, '\n'))
}

// writeRaw sends a prepared JSON body.
func writeRaw(w http.ResponseWriter, status int, body []byte) {
	h := w.Header()
	h["Content-Type"] = hdrJSON
	h["Cache-Control"] = hdrNoStore
	h["Pragma"] = hdrNoCache
	h["X-Content-Type-Options"] = hdrNosniff
	h["Content-Length"] = []string{strconv.Itoa(len(body))}
	w.WriteHeader(status)
	w.Write(body)
}

// successJSON is the bare success answer, encoded once.
var successJSON = []byte(`{"success":true}` + "\n")

var hdrSuccessLength = []string{strconv.Itoa(len(successJSON))}

// writeMediaGrant answers a granted media check: successJSON with writeRaw's headers but
// Pragma. The answer carries no credential (RFC 6749 §5.1 asks Pragma of token answers,
// which keep it), Pragma means nothing in a response (RFC 9111 §5.4) beside Cache-Control:
// no-store, and this answer goes out once per audio chunk: with Caddy's Server header and
// the identity headers a ninth header would push the header map past the eight entries a
// small Go map holds, which net/http then grows, clones and iterates on every answer.
func writeMediaGrant(w http.ResponseWriter) {
	h := w.Header()
	h["Content-Type"] = hdrJSON
	h["Cache-Control"] = hdrNoStore
	h["X-Content-Type-Options"] = hdrNosniff
	h["Content-Length"] = hdrSuccessLength
	w.WriteHeader(http.StatusOK)
	w.Write(successJSON)
}

type errorBody struct {
	Success   bool   `json:"success"`
	Error     string `json:"error"`
	Timestamp int64  `json:"timestamp"`
}

// writeError sends the contract's error envelope.
func writeError(w http.ResponseWriter, status int, msg string, now time.Time) {
	writeJSON(w, status, errorBody{Error: msg, Timestamp: now.Unix()})
}

// challenge adds an RFC 6750 WWW-Authenticate header: bare when no token was sent, with
// error="invalid_token" (401) or "insufficient_scope" (403) or "invalid_request" (400)
// when one was.
func challenge(w http.ResponseWriter, code string) {
	v := `Bearer realm="` + bearerRealm + `"`
	if code != "" {
		v += `, error="` + code + `"`
	}
	w.Header().Set("WWW-Authenticate", v)
}
