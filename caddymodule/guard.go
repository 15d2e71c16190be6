package caddymodule

import (
	"fmt"
	"net/http"
	"net/url"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/token"
)

func init() {
	caddy.RegisterModule(Guard{})
}

// Guard (`http.handlers.softphone_guard`) lets a request through only with a live access
// token, from the Authorization header or the query (`authorization`, `token`,
// `access_token`, for <audio> links). It sets {http.auth.user.id}, {http.auth.user.username}
// and {http.auth.user.role}, and the X-Softphone-User-Id/-Username/-Role request headers, and
// removes a query token before the request goes on.
type Guard struct {
	app    *App
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Guard) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.handlers.softphone_guard", New: func() caddy.Module { return new(Guard) }}
}

// Provision finds the softphone app.
func (g *Guard) Provision(ctx caddy.Context) error {
	g.logger = ctx.Logger()
	app, err := ctx.App("softphone")
	if err != nil {
		return fmt.Errorf("loading softphone app: %w", err)
	}
	g.app = app.(*App)
	return nil
}

// ServeHTTP checks the token and calls next, or answers 400/401/403/503.
func (g *Guard) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	app, now := g.app, g.app.now()
	c, v := app.authenticate(r, token.Access, headerOrQuery)
	countCheck(siteGuard, v)
	app.mediaDecision(r, c, v)
	if refuse(w, v, msgWrongType, msgUnauthorized, now) {
		return nil
	}

	repl := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer)
	repl.Set("http.auth.user.id", string(c.Subject))
	repl.Set("http.auth.user.username", c.Username)
	repl.Set("http.auth.user.role", c.Role)
	setIdentityHeaders(r.Header, c)
	stripQueryToken(r)
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		r.Header.Del("Authorization") // nothing downstream (a proxied media server) sees the token
	}
	return next.ServeHTTP(w, r)
}

// stripQueryToken removes token parameters from the request URL so that nothing downstream
// (a proxied upstream, a template) sees the token.
func stripQueryToken(r *http.Request) {
	if r.URL.RawQuery == "" {
		return
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return
	}
	changed := false
	for _, name := range queryTokenParams {
		if q.Has(name) {
			q.Del(name)
			changed = true
		}
	}
	if changed {
		r.URL.RawQuery = q.Encode()
		r.RequestURI = r.URL.RequestURI()
	}
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Guard)(nil)
	_ caddyhttp.MiddlewareHandler = (*Guard)(nil)
)
