package caddymodule

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/token"
)

// verdict is the outcome of a token check.
type verdict int

const (
	verdictOK verdict = iota
	verdictMissing
	verdictInvalid
	verdictExpired
	verdictRevoked
	verdictWrongType
	verdictTwoTokens
	verdictUnavailable
)

func (v verdict) String() string {
	return [...]string{"ok", "missing", "invalid", "expired", "revoked", "wrong_type", "two_tokens", "unavailable"}[v]
}

// tokenSources says where a token may come from.
type tokenSources int

const (
	headerOnly       tokenSources = iota // Authorization header
	headerOrQuery                        // … or ?authorization= / ?token= / ?access_token= on this URL
	headerOrAnyQuery                     // … or on this URL or the original URI in X-Forwarded-Uri (forward_auth)
)

// queryTokenParams are the query parameters that may carry a token.
var queryTokenParams = [...]string{"authorization", "token", "access_token"}

// authenticate finds exactly one token, verifies it for want and checks its session is not
// revoked. The store is only read. The claims are returned with verdictWrongType too, so a
// caller can name the user in its log line.
func (app *App) authenticate(r *http.Request, want token.Type, from tokenSources) (*token.Claims, verdict) {
	raw, v := findToken(r, from)
	if v != verdictOK {
		return nil, v
	}
	return app.check(r, raw, want)
}

// check verifies raw and consults the revocation store.
func (app *App) check(r *http.Request, raw string, want token.Type) (*token.Claims, verdict) {
	c, err := app.issuer.Verify(raw, want)
	switch {
	case err == nil:
	case errors.Is(err, token.ErrWrongType):
		return c, verdictWrongType
	case errors.Is(err, token.ErrExpired):
		return nil, verdictExpired
	default:
		return nil, verdictInvalid
	}
	var revoked bool
	if want == token.Refresh {
		// A refresh mints new credentials (a refresh token outliving the session's
		// revocation, if it raced a logout): ask the shared state itself rather than a mirror
		// that may not have heard yet of a logout another gateway has just answered.
		revoked, err = app.store.RevokedNow(r.Context(), c.SessionID(), string(c.Subject), time.Unix(c.IssuedAt, 0))
	} else {
		revoked, err = app.store.Revoked(r.Context(), c.SessionID(), string(c.Subject), time.Unix(c.IssuedAt, 0))
	}
	if err != nil {
		if app.Store.failOpen() && want == token.Access {
			app.logger.Warn("state store unavailable: accepting the token unchecked for revocation (on_error open)", zap.Error(err))
			return c, verdictOK
		}
		app.logger.Error("checking revocation", zap.Error(err))
		return nil, verdictUnavailable
	}
	if revoked {
		return nil, verdictRevoked
	}
	return c, verdictOK
}

// findToken collects every place a token may be; more than one is refused (RFC 6750 §2:
// a client must not use more than one method). The common case, a header token and no query
// to look at, stays in this small frame: the handler chain above it is deep, and a frame
// that crosses the goroutine's first 8 KiB of stack makes the runtime copy the stack again
// after every GC shrank it (that was 2% of the CPU of a check-media-access).
func findToken(r *http.Request, from tokenSources) (string, verdict) {
	var hdr string
	if hs := r.Header["Authorization"]; len(hs) > 0 {
		if len(hs) > 1 {
			return "", verdictTwoTokens
		}
		t, err := token.FromHeader(hs[0])
		switch {
		case errors.Is(err, token.ErrTwoTokens):
			return "", verdictTwoTokens
		case errors.Is(err, token.ErrNoToken):
		case err != nil:
			return "", verdictInvalid
		default:
			hdr = t
		}
	}
	var query, forwarded string
	if from != headerOnly {
		query = r.URL.RawQuery
		if from == headerOrAnyQuery {
			forwarded = forwardedQuery(r)
		}
	}
	if query == "" && forwarded == "" {
		if hdr == "" {
			return "", verdictMissing
		}
		return hdr, verdictOK
	}
	return queryToken(hdr, query, forwarded)
}

// queryToken adds the tokens of up to two raw queries to hdr (the header's token, or ""):
// none at all is verdictMissing, two that differ verdictTwoTokens. forward_auth keeps the
// original query on the auth request and repeats the URI in X-Forwarded-Uri, so one token
// may be seen twice; two different ones are refused.
func queryToken(hdr string, queries ...string) (string, verdict) {
	found := hdr
	for _, raw := range queries {
		if raw == "" {
			continue
		}
		q, err := url.ParseQuery(raw)
		if err != nil {
			return "", verdictInvalid
		}
		for _, name := range queryTokenParams {
			for _, val := range q[name] {
				t, err := token.FromQueryValue(val)
				if err != nil {
					return "", verdictInvalid
				}
				if found == "" {
					found = t
				} else if t != found {
					return "", verdictTwoTokens
				}
			}
		}
	}
	if found == "" {
		return "", verdictMissing
	}
	return found, verdictOK
}

// forwardedQuery is the query of the original URI forward_auth passes in X-Forwarded-Uri.
func forwardedQuery(r *http.Request) string {
	u := headerValue(r.Header, "X-Forwarded-Uri")
	if u == "" {
		return ""
	}
	_, q, _ := strings.Cut(u, "?")
	if i := strings.IndexByte(q, '#'); i >= 0 {
		q = q[:i]
	}
	return q
}

// headerValue is h.Get(name) for a name in canonical form. net/http, and Caddy's HTTP/2 and
// HTTP/3 servers, store request header names canonicalised, so the look-up need not
// canonicalise name again on every media request.
func headerValue(h http.Header, name string) string {
	if v := h[name]; len(v) > 0 {
		return v[0]
	}
	return ""
}
