package caddymodule

import (
	"encoding/json"
	"strconv"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/dustin/go-humanize"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/users"
)

func init() {
	httpcaddyfile.RegisterGlobalOption("softphone", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("softphone_api", parseAPI)
	httpcaddyfile.RegisterDirectiveOrder("softphone_api", httpcaddyfile.Before, "respond")
	httpcaddyfile.RegisterHandlerDirective("softphone_guard", parseGuard)
	httpcaddyfile.RegisterDirectiveOrder("softphone_guard", httpcaddyfile.Before, "basic_auth")
}

// parseGlobalOption sets up the softphone app from the global options block:
//
//	softphone {
//		data_dir       <path>
//		key_file       <path>
//		access_ttl     <duration>
//		refresh_ttl    <duration>
//		leeway         <duration>
//		realm          <digest realm>
//		users file     <path>
//		users inline {
//			user <username> {
//				id               <n>
//				password         <secret>
//				ha1              <hex>
//				ha1_sha256       <hex>
//				display_name     <name>
//				role             <role>
//				enabled          true|false
//				call_hook        <url>
//				call_status_hook <url>
//			}
//		}
//		store          [memory | redis://… | rediss://…] {
//			prefix   <redis key prefix>
//			journal  <path>
//			on_error closed|open
//		}
//		refresh_rotation {
//			grace <duration>
//		}
//		security_log   <path> | off {
//			max_size <size>
//			keep     <n>
//		}
//		login_throttle {
//			max_failures             <n>
//			max_failures_per_address <n>
//			window                   <duration>
//		}
//		sip_auth {
//			secret           <shared secret>
//			allow_remote     [true|false]
//			max_skew         <duration>
//			max_expires      <seconds>
//			call_hook        <url>
//			call_status_hook <url>
//		}
//		pubsub {
//			nchan_url          [<url>]
//			channels           <name>...
//			buffer_length      <n>
//			subscriber_timeout <duration>
//			message_timeout    <duration>
//			max_message_size   <size>
//		}
//	}
//
// `users` may repeat; the backends are asked in the order written. Any other subdirective,
// or one of the others written twice, is an error. `store` with no argument (an empty
// environment variable) means memory.
func parseGlobalOption(d *caddyfile.Dispenser, existing any) (any, error) {
	if existing != nil {
		return nil, d.Err("the softphone global option may appear only once")
	}
	app := new(App)
	d.Next() // option name
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	seen := map[string]bool{}
	for d.NextBlock(0) {
		name := d.Val()
		if name != "users" {
			if seen[name] {
				return nil, d.Errf("softphone: %s is given twice", name)
			}
			seen[name] = true
		}
		var err error
		switch name {
		case "data_dir":
			app.DataDir, err = oneArg(d)
		case "key_file":
			app.KeyFile, err = oneArg(d)
		case "realm":
			app.Realm, err = oneArg(d)
		case "access_ttl":
			app.AccessTTL, err = durationArg(d)
		case "refresh_ttl":
			app.RefreshTTL, err = durationArg(d)
		case "leeway":
			app.Leeway, err = durationArg(d)
		case "users":
			var raw json.RawMessage
			raw, err = parseUsers(d)
			app.UsersRaw = append(app.UsersRaw, raw)
		case "store":
			app.Store, err = parseStore(d)
		case "refresh_rotation":
			app.RefreshRotation, err = parseRotation(d)
		case "security_log":
			app.SecurityLog, err = parseSecurityLog(d)
		case "login_throttle":
			app.LoginThrottle, err = parseThrottle(d)
		case "sip_auth":
			app.SIPAuth, err = parseSIPAuth(d)
		case "pubsub":
			app.PubSub, err = parsePubSub(d)
		default:
			return nil, d.Errf("softphone: unknown subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return httpcaddyfile.App{Name: "softphone", Value: caddyconfig.JSON(app, nil)}, nil
}

func oneArg(d *caddyfile.Dispenser) (string, error) {
	name := d.Val()
	if !d.NextArg() {
		return "", d.Errf("%s needs one argument", name)
	}
	v := d.Val()
	if d.NextArg() {
		return "", d.Errf("%s takes one argument", name)
	}
	if d.NextBlock(d.Nesting()) {
		return "", d.Errf("%s takes no block", name)
	}
	return v, nil
}

func durationArg(d *caddyfile.Dispenser) (caddy.Duration, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	dur, err := caddy.ParseDuration(v)
	if err != nil {
		return 0, d.Errf("%s: %v", name, err)
	}
	return caddy.Duration(dur), nil
}

func intArg(d *caddyfile.Dispenser) (int, error) {
	name := d.Val()
	v, err := oneArg(d)
	if err != nil {
		return 0, err
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, d.Errf("%s: %q is not an integer", name, v)
	}
	return n, nil
}

func parseUsers(d *caddyfile.Dispenser) (json.RawMessage, error) {
	if !d.NextArg() {
		return nil, d.Err("users needs a backend: file <path> or inline { … }")
	}
	switch kind := d.Val(); kind {
	case "file":
		path, err := oneArg(d)
		if err != nil {
			return nil, err
		}
		return caddyconfig.JSONModuleObject(FileUsers{Path: path}, "backend", "file", nil), nil
	case "inline":
		if d.NextArg() {
			return nil, d.ArgErr()
		}
		in := InlineUsers{}
		for nesting := d.Nesting(); d.NextBlock(nesting); {
			if d.Val() != "user" {
				return nil, d.Errf("users inline: unknown subdirective %q (want user)", d.Val())
			}
			u, err := parseInlineUser(d)
			if err != nil {
				return nil, err
			}
			in.Users = append(in.Users, u)
		}
		return caddyconfig.JSONModuleObject(in, "backend", "inline", nil), nil
	default:
		return nil, d.Errf("users: unknown backend %q (want file or inline)", kind)
	}
}

func parseInlineUser(d *caddyfile.Dispenser) (users.User, error) {
	var u users.User
	if !d.NextArg() {
		return u, d.Err("user needs a username")
	}
	u.Username = d.Val()
	if d.NextArg() {
		return u, d.ArgErr()
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return u, d.Errf("user %s: %s is given twice", u.Username, name)
		}
		seen[name] = true
		var err error
		switch name {
		case "id":
			var n int
			n, err = intArg(d)
			u.ID = int64(n)
		case "password":
			u.Password, err = oneArg(d)
		case "ha1":
			u.HA1, err = oneArg(d)
		case "ha1_sha256":
			u.HA1SHA256, err = oneArg(d)
		case "display_name":
			u.DisplayName, err = oneArg(d)
		case "role":
			u.Role, err = oneArg(d)
		case "call_hook":
			u.CallHook, err = oneArg(d)
		case "call_status_hook":
			u.CallStatusHook, err = oneArg(d)
		case "enabled":
			var v string
			v, err = oneArg(d)
			if err == nil {
				b, perr := strconv.ParseBool(v)
				if perr != nil {
					return u, d.Errf("user %s: enabled must be true or false", u.Username)
				}
				u.Enabled = &b
			}
		default:
			return u, d.Errf("user %s: unknown subdirective %q", u.Username, name)
		}
		if err != nil {
			return u, err
		}
	}
	return u, nil
}

func parseStore(d *caddyfile.Dispenser) (*StoreConfig, error) {
	cfg := &StoreConfig{}
	if d.NextArg() {
		v := d.Val()
		switch {
		case v == "memory":
			cfg.Engine = "memory"
		case strings.HasPrefix(v, "redis://") || strings.HasPrefix(v, "rediss://"):
			cfg.Engine, cfg.URL = "redis", v
		default:
			return nil, d.Errf("store: want memory or a redis:// URL, got %q", v)
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return nil, d.Errf("store: %s is given twice", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "prefix":
			cfg.Prefix, err = oneArg(d)
		case "journal":
			cfg.Journal, err = oneArg(d)
		case "on_error":
			cfg.OnError, err = oneArg(d)
			if err == nil && cfg.OnError != "closed" && cfg.OnError != "open" {
				err = d.Errf("store on_error: want closed or open, got %q", cfg.OnError)
			}
		default:
			return nil, d.Errf("store: unknown subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func parseRotation(d *caddyfile.Dispenser) (*RotationConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	cfg := new(RotationConfig)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return nil, d.Errf("refresh_rotation: %s is given twice", name)
		}
		seen[name] = true
		switch name {
		case "grace":
			g, err := durationArg(d)
			if err != nil {
				return nil, err
			}
			cfg.Grace = g
		default:
			return nil, d.Errf("refresh_rotation: unknown subdirective %q", name)
		}
	}
	return cfg, nil
}

func parseSecurityLog(d *caddyfile.Dispenser) (*SecurityLogConfig, error) {
	cfg := new(SecurityLogConfig)
	if d.NextArg() {
		if d.Val() == "off" {
			cfg.Disabled = true
		} else {
			cfg.Path = d.Val()
		}
		if d.NextArg() {
			return nil, d.ArgErr()
		}
	}
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return nil, d.Errf("security_log: %s is given twice", name)
		}
		seen[name] = true
		switch name {
		case "max_size":
			v, err := oneArg(d)
			if err != nil {
				return nil, err
			}
			n, err := humanize.ParseBytes(v)
			if err != nil || n == 0 || n > 1<<40 {
				return nil, d.Errf("security_log max_size: %q is not a size", v)
			}
			cfg.MaxSize = int64(n)
		case "keep":
			n, err := intArg(d)
			if err != nil {
				return nil, err
			}
			if n < 1 || n > 1000 {
				return nil, d.Err("security_log keep: want 1 to 1000")
			}
			cfg.Keep = n
		default:
			return nil, d.Errf("security_log: unknown subdirective %q", name)
		}
	}
	return cfg, nil
}

func parseThrottle(d *caddyfile.Dispenser) (*ThrottleConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	cfg := new(ThrottleConfig)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return nil, d.Errf("login_throttle: %s is given twice", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "max_failures":
			cfg.MaxFailures, err = intArg(d)
			if err == nil && cfg.MaxFailures < 1 {
				err = d.Err("login_throttle max_failures must be at least 1")
			}
		case "max_failures_per_address":
			cfg.MaxFailuresPerAddress, err = intArg(d)
			if err == nil && cfg.MaxFailuresPerAddress < 1 {
				err = d.Err("login_throttle max_failures_per_address must be at least 1")
			}
		case "window":
			cfg.Window, err = durationArg(d)
		default:
			return nil, d.Errf("login_throttle: unknown subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func parseSIPAuth(d *caddyfile.Dispenser) (*SIPAuthConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	cfg := new(SIPAuthConfig)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return nil, d.Errf("sip_auth: %s is given twice", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "secret":
			// An empty argument (an unset environment variable) means no secret.
			if d.NextArg() {
				cfg.Secret = d.Val()
				if d.NextArg() {
					return nil, d.ArgErr()
				}
			}
		case "allow_remote":
			cfg.AllowRemote = true
			if d.NextArg() { // an optional true|false, so an environment variable can decide
				b, perr := strconv.ParseBool(d.Val())
				if perr != nil {
					return nil, d.Errf("sip_auth allow_remote: want true or false, got %q", d.Val())
				}
				cfg.AllowRemote = b
				if d.NextArg() {
					return nil, d.ArgErr()
				}
			}
		case "max_skew":
			cfg.MaxSkew, err = durationArg(d)
		case "max_expires":
			cfg.MaxExpires, err = intArg(d)
			if err == nil && cfg.MaxExpires < 0 {
				err = d.Err("sip_auth max_expires must not be negative")
			}
		case "call_hook":
			cfg.CallHook, err = oneArg(d)
		case "call_status_hook":
			cfg.CallStatusHook, err = oneArg(d)
		default:
			return nil, d.Errf("sip_auth: unknown subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

func parsePubSub(d *caddyfile.Dispenser) (*PubSubConfig, error) {
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	cfg := new(PubSubConfig)
	seen := map[string]bool{}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := d.Val()
		if seen[name] {
			return nil, d.Errf("pubsub: %s is given twice", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "nchan_url":
			// An empty argument (an unset environment variable) means the embedded broker.
			if d.NextArg() {
				cfg.NchanURL = d.Val()
				if !strings.HasPrefix(cfg.NchanURL, "http://") && !strings.HasPrefix(cfg.NchanURL, "https://") {
					return nil, d.Errf("pubsub nchan_url: want an http:// or https:// URL, got %q", cfg.NchanURL)
				}
				if d.NextArg() {
					return nil, d.ArgErr()
				}
			}
		case "channels":
			cfg.Channels = d.RemainingArgs()
			if len(cfg.Channels) == 0 {
				return nil, d.Err("pubsub channels: name at least one channel")
			}
		case "buffer_length":
			cfg.BufferLength, err = intArg(d)
			if err == nil && (cfg.BufferLength < 1 || cfg.BufferLength > 1000) {
				err = d.Err("pubsub buffer_length: want 1 to 1000")
			}
		case "subscriber_timeout":
			cfg.SubscriberTimeout, err = durationArg(d)
		case "message_timeout":
			cfg.MessageTimeout, err = durationArg(d)
		case "max_message_size":
			var v string
			v, err = oneArg(d)
			if err == nil {
				n, perr := humanize.ParseBytes(v)
				if perr != nil || n == 0 || n > 64<<20 {
					return nil, d.Errf("pubsub max_message_size: %q is not a size up to 64MiB", v)
				}
				cfg.MaxMessageSize = int64(n)
			}
		default:
			return nil, d.Errf("pubsub: unknown subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return cfg, nil
}

// parseAPI sets up the API handler:
//
//	softphone_api [<matcher>] {
//		prefix <path>
//	}
func parseAPI(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	a := new(API)
	h.Next()
	if h.NextArg() {
		return nil, h.ArgErr()
	}
	seen := map[string]bool{}
	for h.NextBlock(0) {
		name := h.Val()
		if seen[name] {
			return nil, h.Errf("softphone_api: %s is given twice", name)
		}
		seen[name] = true
		var err error
		switch name {
		case "prefix":
			a.Prefix, err = oneArg(h.Dispenser)
		default:
			return nil, h.Errf("softphone_api: unknown subdirective %q", name)
		}
		if err != nil {
			return nil, err
		}
	}
	return a, nil
}

// parseGuard sets up the guard, which takes no options:
//
//	softphone_guard [<matcher>]
func parseGuard(h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	h.Next()
	if h.NextArg() {
		return nil, h.ArgErr()
	}
	if h.NextBlock(0) {
		return nil, h.Errf("softphone_guard: unknown subdirective %q", h.Val())
	}
	return new(Guard), nil
}
