package caddymodule

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func init() {
	caddy.RegisterModule(Transport{})
}

// Transport (`http.reverse_proxy.transport.softphone`) answers forward_auth's subrequest to
// check-media-access inside this Caddy, with no loopback connection: the subrequest runs
// straight through the same handler a network upstream would reach, and its answer goes
// back to forward_auth as the response. It answers nothing else: any other path is an error
// (502 from the proxy), so a misconfigured reverse_proxy cannot reach the rest of the API.
//
//	forward_auth localhost {
//		uri /pbxcore/api/module-softphone-backend/v1/check-media-access
//		copy_headers X-Softphone-User-Id X-Softphone-Username X-Softphone-Role
//		transport softphone
//	}
//
// The check sees the client's own address (Caddy's client IP, honouring trusted_proxies),
// not 127.0.0.1, and there is no second access-log line for the subrequest.
type Transport struct {
	// Path prefix of the API whose check-media-access is answered. Default
	// /pbxcore/api/module-softphone-backend/v1, as softphone_api.
	Prefix string `json:"prefix,omitempty"`

	api   API
	check string // the one path answered
}

// CaddyModule returns the Caddy module information.
func (Transport) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{ID: "http.reverse_proxy.transport.softphone", New: func() caddy.Module { return new(Transport) }}
}

// Provision sets up the API handler the subrequests run through.
func (t *Transport) Provision(ctx caddy.Context) error {
	t.api.Prefix = t.Prefix
	if err := t.api.Provision(ctx); err != nil {
		return err
	}
	t.check = t.api.under + "check-media-access"
	return nil
}

// Validate rejects what softphone_api would.
func (t *Transport) Validate() error {
	return t.api.Validate()
}

// RoundTrip runs the subrequest through check-media-access and hands back its answer.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL.Path != t.check {
		return nil, fmt.Errorf("softphone transport: only %s is answered here, not %q", t.check, req.URL.Path)
	}
	w := &localAnswer{header: make(http.Header, 8)}
	if err := t.api.ServeHTTP(w, req, unhandled); err != nil {
		return nil, err
	}
	if w.status == 0 {
		w.status = http.StatusOK
	}
	res := &http.Response{
		Status:        strconv.Itoa(w.status) + " " + http.StatusText(w.status),
		StatusCode:    w.status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        w.header,
		ContentLength: int64(w.body.Len()),
		Body:          http.NoBody,
		Request:       req,
	}
	if w.body.Len() > 0 {
		res.Body = io.NopCloser(&w.body)
	}
	return res, nil
}

// unhandled is the API's next handler here. It is never reached: the API answers every path
// under its prefix, check-media-access among them.
var unhandled = caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
	return errors.New("softphone transport: request not handled")
})

// localAnswer collects a handler's answer for RoundTrip.
type localAnswer struct {
	header http.Header
	status int
	body   bytes.Buffer
}

func (w *localAnswer) Header() http.Header { return w.header }

func (w *localAnswer) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
}

func (w *localAnswer) Write(p []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	return w.body.Write(p)
}

// UnmarshalCaddyfile reads the transport's block:
//
//	transport softphone {
//		prefix <path>
//	}
func (t *Transport) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // the transport's name
	if d.NextArg() {
		return d.ArgErr()
	}
	seen := false
	for d.NextBlock(0) {
		if d.Val() != "prefix" {
			return d.Errf("transport softphone: unknown subdirective %q", d.Val())
		}
		if seen {
			return d.Err("transport softphone: prefix is given twice")
		}
		seen = true
		p, err := oneArg(d)
		if err != nil {
			return err
		}
		t.Prefix = p
	}
	return nil
}

// Interface guards
var (
	_ caddy.Provisioner     = (*Transport)(nil)
	_ caddy.Validator       = (*Transport)(nil)
	_ http.RoundTripper     = (*Transport)(nil)
	_ caddyfile.Unmarshaler = (*Transport)(nil)
)
