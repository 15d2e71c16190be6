// Package redact shows URLs as a log or an error may show them.
package redact

import "net/url"

// URL is raw without its userinfo, query values or fragment, any of which may hold a
// credential (http://user:pass@host/hook?key=…); a query is marked "?…". It is "" when raw
// is no scheme://host URL: what such a string holds cannot be told apart (in redis//:pass@host
// the password would read as part of a path), so none of it is shown.
func URL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" || u.Opaque != "" {
		return ""
	}
	r := url.URL{Scheme: u.Scheme, Host: u.Host, Path: u.Path, RawPath: u.RawPath}
	s := r.String()
	if u.RawQuery != "" || u.ForceQuery {
		s += "?…"
	}
	return s
}
