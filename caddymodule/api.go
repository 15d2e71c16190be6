package caddymodule

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/seclog"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/token"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/users"
)

func init() {
	caddy.RegisterModule(API{})
}

// DefaultPrefix is where MikoPBX's ModuleSoftphoneBackend serves its API.
const DefaultPrefix = "/pbxcore/api/module-softphone-backend/v1"

// maxLoginBody bounds a login request body.
const maxLoginBody = 8 << 10

// API (`http.handlers.softphone_api`) serves the softphone REST API under Prefix. Requests
// outside the prefix go to the next handler.
type API struct {
	// Path prefix of the API. Default /pbxcore/api/module-softphone-backend/v1.
	Prefix string `json:"prefix,omitempty"`

	app    *App
	logger *zap.Logger
	routes map[string]route
	under  string // Prefix + "/", what every API path starts with
}

type route struct {
	methods string // "GET" also allows HEAD
	serve   func(a *API, w http.ResponseWriter, r *http.Request) error
}

// CaddyModule returns the Caddy module information.
func (API) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.softphone_api", New: func() caddy.Module { return new(API) }}
}

// Provision finds the softphone app.
func (a *API) Provision(ctx caddy.Context) error {
	a.logger = ctx.Logger()
	if a.Prefix == "" {
		a.Prefix = DefaultPrefix
	}
	a.Prefix = strings.TrimRight(a.Prefix, "/")
	a.under = a.Prefix + "/"
	app, err := ctx.App("softphone")
	if err != nil {
		return fmt.Errorf("loading softphone app: %w", err)
	}
	a.app = app.(*App)
	a.routes = map[string]route{
		"auth/login":         {"POST", (*API).login},
		"auth/refresh":       {"POST", (*API).refresh},
		"auth/logout":        {"POST", (*API).logout},
		"profile":            {"GET", (*API).profile},
		"health":             {"GET", (*API).health},
		"check-media-access": {"GET", (*API).checkMediaAccess},
		"sip/auth":           {"POST", (*API).sipAuth},
		"admin/logout-all":   {"POST", (*API).logoutAll},
		"users":              {"GET", (*API).users},
	}
	return nil
}

// Validate rejects a prefix that is not an absolute path.
func (a *API) Validate() error {
	if !strings.HasPrefix(a.Prefix, "/") {
		return fmt.Errorf("softphone_api: prefix %q must start with /", a.Prefix)
	}
	return nil
}

// ServeHTTP routes the API's paths and passes anything else to next.
func (a *API) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	rest, ok := strings.CutPrefix(r.URL.Path, a.under)
	if !ok {
		return next.ServeHTTP(w, r)
	}
	if ch, ok := strings.CutPrefix(rest, "pub/"); ok {
		return a.publish(w, r, ch)
	}
	if ch, ok := strings.CutPrefix(rest, "sub/"); ok {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			writeError(w, http.StatusMethodNotAllowed, msgMethodNotAllowed, a.app.now())
			return nil
		}
		return a.subscribe(w, r, ch)
	}
	rt, ok := a.routes[rest]
	if !ok {
		writeError(w, http.StatusNotFound, msgNotFound, a.app.now())
		return nil
	}
	if r.Method != rt.methods && !(rt.methods == "GET" && r.Method == http.MethodHead) {
		allow := rt.methods
		if allow == "GET" {
			allow = "GET, HEAD"
		}
		w.Header().Set("Allow", allow)
		writeError(w, http.StatusMethodNotAllowed, msgMethodNotAllowed, a.app.now())
		return nil
	}
	return rt.serve(a, w, r)
}

type loginRequest struct {
	Username string `json:"username"`
	Password string `json:"password"`
}

type loginResponse struct {
	Success      bool   `json:"success"`
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token,omitempty"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
}

// login checks a username and SIP secret and answers a token pair. Throttled keys are refused
// before any password work, so a blocked guesser learns nothing.
func (a *API) login(w http.ResponseWriter, r *http.Request) error {
	app, now := a.app, a.app.now()
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxLoginBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		metrics.logins.WithLabelValues("bad_request").Inc()
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, msgTooLarge, now)
			return nil
		}
		writeError(w, http.StatusBadRequest, msgBadCredentialsInput, now)
		return nil
	}
	var req loginRequest
	if err := decodeStrictJSON(body, &req); err != nil ||
		req.Username == "" || req.Password == "" ||
		len(req.Username) > users.MaxUsernameLen || len(req.Password) > 256 {
		metrics.logins.WithLabelValues("bad_request").Inc()
		writeError(w, http.StatusBadRequest, msgBadCredentialsInput, now)
		return nil
	}
	ip := clientIP(r)
	key := "login:" + req.Username + "|" + ip
	addrKey := "addr:" + ip
	n, left, err := app.store.Failures(r.Context(), key)
	var an int
	var aleft time.Duration
	if err == nil {
		an, aleft, err = app.store.Failures(r.Context(), addrKey)
	}
	if err != nil {
		a.logger.Error("reading login throttle", zap.Error(err))
		metrics.logins.WithLabelValues("error").Inc()
		writeError(w, http.StatusServiceUnavailable, msgUnavailable, now)
		return nil
	}
	if an >= app.LoginThrottle.MaxFailuresPerAddress {
		n, left = an, aleft
	}
	if n >= app.LoginThrottle.MaxFailures || an >= app.LoginThrottle.MaxFailuresPerAddress {
		metrics.logins.WithLabelValues("throttled").Inc()
		app.event(seclog.AuthFailed, "Failed login attempt for user: "+req.Username+" (throttled)", ip)
		w.Header().Set("Retry-After", retryAfter(left))
		writeError(w, http.StatusTooManyRequests, msgThrottled, now)
		return nil
	}

	u, err := app.lookupUser(r.Context(), req.Username)
	if err != nil {
		a.logger.Error("looking up user", zap.Error(err))
		metrics.logins.WithLabelValues("error").Inc()
		writeError(w, http.StatusInternalServerError, msgInternal, now)
		return nil
	}
	ok := users.CheckPassword(u, req.Password, app.Realm)
	if !ok || !u.IsEnabled() {
		window := time.Duration(app.LoginThrottle.Window)
		for _, k := range []string{key, addrKey} {
			if _, _, err := app.store.AddFailure(r.Context(), k, window); err != nil {
				a.logger.Error("counting login failure", zap.Error(err))
			}
		}
		metrics.logins.WithLabelValues("invalid").Inc()
		app.event(seclog.AuthFailed, "Failed login attempt for user: "+req.Username, ip)
		challenge(w, "")
		writeError(w, http.StatusUnauthorized, msgBadCredentials, now)
		return nil
	}
	pair, err := app.issuer.IssuePair(identity(u))
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	if n > 0 {
		if err := app.store.ClearFailures(r.Context(), key); err != nil {
			a.logger.Error("clearing login throttle", zap.Error(err))
		}
	}
	metrics.logins.WithLabelValues("ok").Inc()
	app.event(seclog.AuthSuccess, "User "+u.Username+" logged in successfully", ip)
	writeJSON(w, http.StatusOK, loginResponse{
		Success:      true,
		AccessToken:  pair.Access,
		RefreshToken: pair.Refresh,
		TokenType:    "Bearer",
		ExpiresIn:    int64(app.issuer.AccessTTL() / time.Second),
	})
	return nil
}

// refresh trades a live refresh token for a new access token in the same session. The user
// must still exist and be enabled; the new token carries their current role.
func (a *API) refresh(w http.ResponseWriter, r *http.Request) error {
	app, now := a.app, a.app.now()
	raw, v := findToken(r, headerOnly)
	var c *token.Claims
	if v == verdictOK {
		c, v = app.check(r, raw, token.Refresh)
	}
	if v == verdictWrongType {
		metrics.refreshes.WithLabelValues(v.String()).Inc()
	}
	if refuse(w, v, msgRefreshWrongType, msgRefreshBadToken, now) {
		return nil
	}
	u, err := app.lookupUser(r.Context(), c.Username)
	if err != nil {
		a.logger.Error("looking up user", zap.Error(err))
		writeError(w, http.StatusInternalServerError, msgInternal, now)
		return nil
	}
	if u == nil || !u.IsEnabled() || u.IDString() != string(c.Subject) {
		deny(w, verdictInvalid, msgRefreshBadToken, now)
		return nil
	}
	if app.RefreshRotation != nil {
		return a.rotate(w, r, u, c, raw)
	}
	access, _, err := app.issuer.Issue(identity(u), token.Access, c.SessionID())
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	metrics.refreshes.WithLabelValues("ok").Inc()
	writeJSON(w, http.StatusOK, loginResponse{
		Success:     true,
		AccessToken: access,
		TokenType:   "Bearer",
		ExpiresIn:   int64(app.issuer.AccessTTL() / time.Second),
	})
	return nil
}

// rotate answers a refresh with a new pair and retires the presented refresh token
// (RFC 9700 §4.14.2). The pair is derived from the presented token id and the rotation
// time, so a concurrent retry within the grace window gets the very same pair; a retired
// token presented later revokes the whole session.
func (a *API) rotate(w http.ResponseWriter, r *http.Request, u *users.User, c *token.Claims, raw string) error {
	app, now := a.app, a.app.now()
	iss := app.issuer
	presented := iss.PresentedID(c, raw)
	next := iss.DeriveID("refresh", presented)
	rot, err := app.store.Rotate(r.Context(), c.SessionID(), presented, next, now,
		time.Duration(app.RefreshRotation.Grace), now.Add(iss.RefreshTTL()+time.Duration(app.Leeway)))
	if err != nil {
		a.logger.Error("rotating refresh token", zap.Error(err))
		metrics.refreshes.WithLabelValues("error").Inc()
		writeError(w, http.StatusServiceUnavailable, msgUnavailable, now)
		return nil
	}
	if rot.Outcome == store.Reused {
		metrics.refreshes.WithLabelValues("reused").Inc()
		live.cut(c.SessionID())
		app.event(seclog.AuthFailed, "Reused refresh token for user: "+c.Username+" (session revoked)", clientIP(r))
		deny(w, verdictRevoked, msgRefreshBadToken, now)
		return nil
	}
	id := identity(u)
	access, _, err := iss.IssueAt(id, token.Access, c.SessionID(), iss.DeriveID("access", presented), rot.At)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	refresh, _, err := iss.IssueAt(id, token.Refresh, c.SessionID(), next, rot.At)
	if err != nil {
		return caddyhttp.Error(http.StatusInternalServerError, err)
	}
	metrics.refreshes.WithLabelValues("ok").Inc()
	writeJSON(w, http.StatusOK, loginResponse{
		Success:      true,
		AccessToken:  access,
		RefreshToken: refresh,
		TokenType:    "Bearer",
		ExpiresIn:    int64(iss.AccessTTL() / time.Second),
	})
	return nil
}

// logout revokes the whole login session: its access and refresh tokens both die.
func (a *API) logout(w http.ResponseWriter, r *http.Request) error {
	app, now := a.app, a.app.now()
	c, v := app.authenticate(r, token.Access, headerOnly)
	metrics.logouts.WithLabelValues(v.String()).Inc()
	if refuse(w, v, msgWrongType, msgUnauthorized, now) {
		return nil
	}
	// The session's refresh tokens can live until refresh_ttl (+ leeway) after the last one
	// was issued, and with rotation that may be after this access token's iat: count from
	// now, after which the session gets no new one.
	until := now.Add(app.issuer.RefreshTTL() + time.Duration(app.Leeway))
	if err := app.store.RevokeSession(r.Context(), c.SessionID(), until); err != nil {
		a.logger.Error("revoking session", zap.Error(err))
		writeError(w, http.StatusServiceUnavailable, msgUnavailable, now)
		return nil
	}
	live.cut(c.SessionID())
	app.event(seclog.Logout, "User "+c.Username+" logged out", clientIP(r))
	writeJSON(w, http.StatusOK, struct {
		Success bool   `json:"success"`
		Message string `json:"message"`
	}{true, "Logged out successfully"})
	return nil
}

type profileUser struct {
	ID       token.UserID `json:"id"`
	Username string       `json:"username"`
	Role     string       `json:"role"`
}

// profile answers who the access token belongs to.
func (a *API) profile(w http.ResponseWriter, r *http.Request) error {
	now := a.app.now()
	c, v := a.app.authenticate(r, token.Access, headerOnly)
	countCheck(siteAPI, v)
	if refuse(w, v, msgWrongType, msgProfileNoToken, now) {
		return nil
	}
	writeJSON(w, http.StatusOK, struct {
		Success bool        `json:"success"`
		User    profileUser `json:"user"`
	}{true, profileUser{ID: c.Subject, Username: c.Username, Role: c.Role}})
	return nil
}

func (a *API) health(w http.ResponseWriter, _ *http.Request) error {
	writeJSON(w, http.StatusOK, struct {
		Success   bool   `json:"success"`
		Status    string `json:"status"`
		Timestamp int64  `json:"timestamp"`
	}{true, "ok", a.app.now().Unix()})
	return nil
}

// checkMediaAccess is the forward_auth target: 200 with identity headers for a live access
// token from the Authorization header or from the original URI's query (X-Forwarded-Uri,
// for <audio src="…?authorization=…"> links), 401/403 otherwise.
func (a *API) checkMediaAccess(w http.ResponseWriter, r *http.Request) error {
	app := a.app
	c, v := app.authenticate(r, token.Access, headerOrAnyQuery)
	countCheck(siteMedia, v)
	app.mediaDecision(r, c, v)
	if v != verdictOK {
		refuse(w, v, msgWrongType, msgUnauthorized, app.now())
		return nil
	}
	setIdentityHeaders(w.Header(), c)
	if headerValue(r.Header, "X-Forwarded-Uri") != "" && headerValue(r.Header, "X-Forwarded-Method") != "" {
		// A forward_auth subrequest reads only the status and headers, and Caddy closes the
		// body unread: with a body that closes the pooled connection, so every subrequest
		// would dial anew. An empty 200 keeps the connection reusable.
		h := w.Header()
		h["Cache-Control"] = hdrNoStore
		h["Content-Length"] = hdrZero
		w.WriteHeader(http.StatusOK)
		return nil
	}
	writeMediaGrant(w)
	return nil
}

// refuse answers every verdict but verdictOK as the contract wants and reports whether it
// did: a token of the other type is 403 wrongType, a store that cannot be read 503, anything
// else goes to deny with msg.
func refuse(w http.ResponseWriter, v verdict, wrongType, msg string, now time.Time) bool {
	switch v {
	case verdictOK:
		return false
	case verdictWrongType:
		challenge(w, "insufficient_scope")
		writeError(w, http.StatusForbidden, wrongType, now)
	case verdictUnavailable:
		writeError(w, http.StatusServiceUnavailable, msgUnavailable, now)
	default:
		deny(w, v, msg, now)
	}
	return true
}

// mediaDecision writes the security events of a media check (grant, or denial with why).
func (app *App) mediaDecision(r *http.Request, c *token.Claims, v verdict) {
	switch v {
	case verdictOK:
		if app.seclog != nil || app.debug { // else event would write it nowhere
			app.event(seclog.MediaAccessGranted, "Media access granted for user: "+c.Username, clientIP(r))
		}
	case verdictWrongType:
		app.event(seclog.MediaAccessDenied, "Media access denied: refresh token used for user: "+c.Username, clientIP(r))
	case verdictUnavailable:
	default:
		app.event(seclog.MediaAccessDenied, "Media access denied: "+v.String(), clientIP(r))
	}
}

// deny answers 401 (or 400 for two tokens) with the matching challenge.
func deny(w http.ResponseWriter, v verdict, msg string, now time.Time) {
	switch v {
	case verdictTwoTokens:
		challenge(w, "invalid_request")
		writeError(w, http.StatusBadRequest, msgTwoTokens, now)
	case verdictMissing:
		challenge(w, "")
		writeError(w, http.StatusUnauthorized, msg, now)
	default:
		challenge(w, "invalid_token")
		writeError(w, http.StatusUnauthorized, msg, now)
	}
}

func identity(u *users.User) token.Identity {
	return token.Identity{UserID: u.IDString(), Username: u.Username, Role: u.RoleOrDefault()}
}

// setIdentityHeaders writes the X-Softphone-* headers that forward_auth copies upstream. The
// names are canonical already; the three values share one allocation (each slice capped at
// its one value, so an append elsewhere copies instead of overwriting its neighbour).
func setIdentityHeaders(h http.Header, c *token.Claims) {
	v := make([]string, 3)
	v[0], v[1], v[2] = string(c.Subject), c.Username, c.Role
	h["X-Softphone-User-Id"] = v[0:1:1]
	h["X-Softphone-Username"] = v[1:2:2]
	h["X-Softphone-Role"] = v[2:3:3]
}

// clientIP is Caddy's client address (honouring trusted_proxies), else the TCP peer.
func clientIP(r *http.Request) string {
	if ip, ok := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string); ok && ip != "" {
		return ip
	}
	host, _, ok := strings.Cut(r.RemoteAddr, ":")
	if !ok || strings.Count(r.RemoteAddr, ":") > 1 {
		if i := strings.LastIndexByte(r.RemoteAddr, ':'); i > 0 {
			return strings.Trim(r.RemoteAddr[:i], "[]")
		}
		return r.RemoteAddr
	}
	return host
}

func retryAfter(d time.Duration) string {
	s := int64((d + time.Second - 1) / time.Second)
	if s < 1 {
		s = 1
	}
	return strconv.FormatInt(s, 10)
}

// decodeStrictJSON decodes exactly one JSON object into v: wrong field types and trailing
// data are errors. Unknown fields are allowed (apps may send device details).
func decodeStrictJSON(b []byte, v any) error {
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return errors.New("body is not a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner           = (*API)(nil)
	_ caddy.Validator             = (*API)(nil)
	_ caddyhttp.MiddlewareHandler = (*API)(nil)
)
