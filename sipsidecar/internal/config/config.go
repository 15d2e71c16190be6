// Package config reads the sidecar's settings from SIPSIDECAR_* environment variables, with
// command-line flags of the same names (lower case, dashes) overriding them. A bad value stops
// the program at start with a message naming the variable.
package config

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/softphone-gateway/softphone-gateway/internal/redact"
)

// Listener is one SIP listening address.
type Listener struct {
	Network string // udp, tcp, ws
	Addr    string // host:port
}

// Config is everything the sidecar needs.
type Config struct {
	Listen          []Listener
	HTTPAddr        string
	RedisURL        string
	RedisPrefix     string
	RedisCacheAORs  int
	HookURL         string
	HookSecret      string
	HookUsername    string
	HookPassword    string
	HookTimeout     time.Duration
	HookConcurrency int
	HookBatchWait   time.Duration
	Workers         int
	Procs           int
	NonceSecret     string
	NonceTTL        time.Duration
	Realm           string
	Domains         []string
	ExpiresDefault  int
	ExpiresMin      int
	ExpiresMax      int
	NATExpires      int
	MaxContacts     int
	Algorithms      []string
	RateLimit       float64
	RateBurst       int
	BanFailures     int
	BanWindow       time.Duration
	BanDuration     time.Duration
	PublishURL      string
	PublishInterval time.Duration
	WebhookURLs     []string
	WebhookHeaders  map[string]string
	WebhookTimeout  time.Duration
	LogLevel        string
}

// setting is one variable: its suffix (SIPSIDECAR_<name>), default, help and parser.
type setting struct {
	name, def, help string
	set             func(c *Config, v string) error
}

func settings() []setting {
	return []setting{
		{"LISTEN", "udp:127.0.0.1:5060,tcp:127.0.0.1:5060,ws:127.0.0.1:5066", "SIP listeners, transport:host:port,… (udp, tcp, ws)", func(c *Config, v string) (err error) { c.Listen, err = parseListen(v); return }},
		{"HTTP_ADDR", "127.0.0.1:9060", "metrics, health and /locations (host:port)", func(c *Config, v string) error { c.HTTPAddr = v; return hostPort(v) }},
		{"REDIS_URL", "", "Redis for bindings, nonce counts and bans; empty = in memory", func(c *Config, v string) error { c.RedisURL = v; return redisURL(v) }},
		{"REDIS_PREFIX", "sipsidecar:", "Redis key prefix", func(c *Config, v string) error { c.RedisPrefix = v; return nil }},
		{"REDIS_CACHE_AORS", "65536", "AORs whose last Redis state the sidecar keeps, so that a registration costs Redis one round trip (about 2.1 KiB each); 0 = none", func(c *Config, v string) (err error) { c.RedisCacheAORs, err = integer(v, 0, 10000000); return }},
		{"AUTH_HOOK_URL", "", "digest callback URL (required)", func(c *Config, v string) error { c.HookURL = v; return httpURL(v) }},
		{"AUTH_HOOK_SECRET", "", "HMAC secret for the Jambonz-Signature header; empty = unsigned", func(c *Config, v string) error { c.HookSecret = v; return nil }},
		{"AUTH_HOOK_USERNAME", "", "Basic auth user for the callback", func(c *Config, v string) error { c.HookUsername = v; return nil }},
		{"AUTH_HOOK_PASSWORD", "", "Basic auth password for the callback", func(c *Config, v string) error { c.HookPassword = v; return nil }},
		{"AUTH_HOOK_TIMEOUT", "2s", "callback timeout", func(c *Config, v string) (err error) {
			c.HookTimeout, err = duration(v, time.Millisecond, time.Minute)
			return
		}},
		{"AUTH_HOOK_CONCURRENCY", "128", "callbacks in flight at most", func(c *Config, v string) (err error) { c.HookConcurrency, err = integer(v, 1, 10000); return }},
		{"AUTH_HOOK_BATCH_WAIT", "1ms", "how long a batched callback waits for others to join its request (hooks that take batches); 0 = none", func(c *Config, v string) (err error) {
			c.HookBatchWait, err = duration(v, 0, 100*time.Millisecond)
			return
		}},
		{"WORKERS", "1024", "UDP requests waiting for their answers (the hook, Redis): beyond twice this many new ones are dropped, beyond this many those answered at once are shed", func(c *Config, v string) (err error) { c.Workers, err = integer(v, 1, 100000); return }},
		{"PROCS", "1", "cores that run the sidecar's Go code at once (GOMAXPROCS); 0 = Go's choice (GOMAXPROCS from the environment, else every core it may use)", func(c *Config, v string) (err error) { c.Procs, err = integer(v, 0, 1024); return }},
		{"NONCE_SECRET", "", "HMAC key of digest nonces (share it between sidecars); empty = random per process", func(c *Config, v string) error {
			c.NonceSecret = v
			if v != "" && len(v) < 16 {
				return errors.New("must be at least 16 characters")
			}
			return nil
		}},
		{"NONCE_TTL", "5m", "how long a nonce is fresh", func(c *Config, v string) (err error) {
			c.NonceTTL, err = duration(v, 10*time.Second, time.Hour)
			return
		}},
		{"REALM", "", "digest realm; empty = the To host of each REGISTER", func(c *Config, v string) error { c.Realm = v; return nil }},
		{"DOMAINS", "", "domains served (host names or addresses in To and the Request-URI), comma separated; others get 404; empty = any", func(c *Config, v string) error {
			c.Domains = nil
			for _, d := range splitList(v) {
				if strings.ContainsAny(d, "@/;<> \t") || strings.Contains(d, ":") && !strings.HasPrefix(d, "[") {
					return fmt.Errorf("%q is not a host name or address", d)
				}
				c.Domains = append(c.Domains, strings.ToLower(d))
			}
			return nil
		}},
		{"EXPIRES_DEFAULT", "3600", "expiry when the phone names none (s)", func(c *Config, v string) (err error) { c.ExpiresDefault, err = integer(v, 1, 1<<31-1); return }},
		{"EXPIRES_MIN", "60", "shortest expiry accepted, else 423 (s)", func(c *Config, v string) (err error) { c.ExpiresMin, err = integer(v, 1, 1<<31-1); return }},
		{"EXPIRES_MAX", "7200", "longest expiry granted (s)", func(c *Config, v string) (err error) { c.ExpiresMax, err = integer(v, 1, 1<<31-1); return }},
		{"NAT_EXPIRES", "30", "expiry told to a phone behind NAT (s)", func(c *Config, v string) (err error) { c.NATExpires, err = integer(v, 1, 3600); return }},
		{"MAX_CONTACTS", "10", "bindings per AOR", func(c *Config, v string) (err error) { c.MaxContacts, err = integer(v, 1, 1000); return }},
		{"DIGEST_ALGORITHMS", "SHA-256,MD5", "digest algorithms offered, most preferred first (MD5,SHA-256 for phones that read only the first challenge)", func(c *Config, v string) error {
			c.Algorithms = nil
			seen := map[string]bool{}
			for _, a := range splitList(v) {
				a = strings.ToUpper(a)
				if a != "MD5" && a != "SHA-256" {
					return fmt.Errorf("%q: want MD5 or SHA-256", a)
				}
				if seen[a] {
					return fmt.Errorf("%s listed twice", a)
				}
				seen[a] = true
				c.Algorithms = append(c.Algorithms, a)
			}
			if len(c.Algorithms) == 0 {
				return errors.New("want at least one algorithm")
			}
			return nil
		}},
		{"RATE_LIMIT", "20", "requests per second per source address before any callback", func(c *Config, v string) error {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil || f <= 0 || f > 1e6 {
				return errors.New("want a positive number")
			}
			c.RateLimit = f
			return nil
		}},
		{"RATE_BURST", "40", "burst per source address", func(c *Config, v string) (err error) { c.RateBurst, err = integer(v, 1, 1e6); return }},
		{"BAN_FAILURES", "10", "auth failures from one address that earn a ban", func(c *Config, v string) (err error) { c.BanFailures, err = integer(v, 1, 1e6); return }},
		{"BAN_WINDOW", "5m", "window in which those failures count", func(c *Config, v string) (err error) {
			c.BanWindow, err = duration(v, time.Second, 24*time.Hour)
			return
		}},
		{"BAN_DURATION", "15m", "how long a ban lasts", func(c *Config, v string) (err error) {
			c.BanDuration, err = duration(v, time.Second, 30*24*time.Hour)
			return
		}},
		{"PUBLISH_URL", "", "where users-state snapshots are POSTed (Nchan publisher or the gateway's pub/users-state); empty = off", func(c *Config, v string) error { c.PublishURL = v; return httpURL(v) }},
		{"PUBLISH_INTERVAL", "30s", "republish period (re-seeds Nchan after a reload)", func(c *Config, v string) (err error) {
			c.PublishInterval, err = duration(v, time.Second, time.Hour)
			return
		}},
		{"WEBHOOK_URLS", "", "locator webhook URLs, comma separated; empty = off", func(c *Config, v string) error {
			c.WebhookURLs = nil
			for i, u := range splitList(v) {
				if err := httpURL(u); err != nil {
					if r := redact.URL(u); r != "" {
						return fmt.Errorf("URL %d (%q): %w", i+1, r, err)
					}
					return fmt.Errorf("URL %d: %w", i+1, err)
				}
				c.WebhookURLs = append(c.WebhookURLs, u)
			}
			return nil
		}},
		{"WEBHOOK_HEADERS", "", "headers for webhook POSTs, Name: value; separated", func(c *Config, v string) error {
			c.WebhookHeaders = map[string]string{}
			for i, kv := range strings.Split(v, ";") {
				if strings.TrimSpace(kv) == "" {
					continue
				}
				// The entry is not quoted back: a header that lost its colon is still a credential.
				k, val, ok := strings.Cut(kv, ":")
				if !ok || strings.TrimSpace(k) == "" || strings.ContainsAny(k+val, "\r\n") {
					return fmt.Errorf("header %d is not Name: value (headers are separated by ;)", i+1)
				}
				c.WebhookHeaders[strings.TrimSpace(k)] = strings.TrimSpace(val)
			}
			return nil
		}},
		{"WEBHOOK_TIMEOUT", "3s", "webhook POST timeout", func(c *Config, v string) (err error) {
			c.WebhookTimeout, err = duration(v, time.Millisecond, time.Minute)
			return
		}},
		{"LOG_LEVEL", "info", "debug, info, warn or error", func(c *Config, v string) error {
			switch v {
			case "debug", "info", "warn", "error":
				c.LogLevel = v
				return nil
			}
			return errors.New("want debug, info, warn or error")
		}},
	}
}

// Load reads the environment (getenv) and then args. Errors name the variable and show a
// value only as far as it holds no credential.
func Load(getenv func(string) string, args []string) (*Config, error) {
	c := &Config{}
	fs := flag.NewFlagSet("sipsidecar", flag.ContinueOnError)
	flags := map[string]*string{}
	for _, s := range settings() {
		// The flag's default is the built-in one, not the environment's value: the flag package
		// prints defaults on -h and on a bad flag, and the environment may hold a secret.
		flags[s.name] = fs.String(flagName(s.name), s.def, s.help+" (SIPSIDECAR_"+s.name+")")
	}
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		// Not quoted back: a stray argument is most often the tail of an unquoted value.
		return nil, fmt.Errorf("%d unexpected argument(s) after the flags: quote a flag value that holds spaces", fs.NArg())
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for _, s := range settings() {
		v := s.def
		if e := getenv("SIPSIDECAR_" + s.name); e != "" {
			v = e
		}
		if given[flagName(s.name)] {
			v = *flags[s.name]
		}
		if err := s.set(c, v); err != nil {
			if r := shown(s.name, v); r != "" {
				return nil, fmt.Errorf("SIPSIDECAR_%s=%q: %w", s.name, r, err)
			}
			return nil, fmt.Errorf("SIPSIDECAR_%s: %w", s.name, err)
		}
	}
	if c.HookURL == "" {
		return nil, errors.New("SIPSIDECAR_AUTH_HOOK_URL is required: the URL of the digest callback (for example the gateway's …/sip/auth)")
	}
	if c.ExpiresMin > c.ExpiresMax {
		return nil, fmt.Errorf("SIPSIDECAR_EXPIRES_MIN (%d) is above SIPSIDECAR_EXPIRES_MAX (%d)", c.ExpiresMin, c.ExpiresMax)
	}
	if c.ExpiresDefault < c.ExpiresMin || c.ExpiresDefault > c.ExpiresMax {
		return nil, fmt.Errorf("SIPSIDECAR_EXPIRES_DEFAULT (%d) must lie between SIPSIDECAR_EXPIRES_MIN and SIPSIDECAR_EXPIRES_MAX", c.ExpiresDefault)
	}
	return c, nil
}

// Usage lists the variables (for -h and the README).
func Usage() string {
	var b strings.Builder
	for _, s := range settings() {
		fmt.Fprintf(&b, "  SIPSIDECAR_%-22s %s (default %q)\n", s.name, s.help, s.def)
	}
	return b.String()
}

func flagName(name string) string { return strings.ToLower(strings.ReplaceAll(name, "_", "-")) }

// shown is what an error may show of a setting's value: all of it, but nothing of a secret and
// of a URL only what redact.URL leaves. A setting that may hold a credential is listed here.
func shown(name, v string) string {
	switch name {
	case "NONCE_SECRET", "AUTH_HOOK_SECRET", "AUTH_HOOK_PASSWORD", "WEBHOOK_HEADERS":
		return ""
	case "AUTH_HOOK_URL", "PUBLISH_URL", "REDIS_URL":
		return redact.URL(v)
	case "WEBHOOK_URLS": // its parser names the bad URL, redacted
		return ""
	}
	return v
}

func parseListen(v string) ([]Listener, error) {
	var out []Listener
	for _, item := range splitList(v) {
		network, addr, ok := strings.Cut(item, ":")
		if !ok {
			return nil, fmt.Errorf("%q: want transport:host:port", item)
		}
		switch network {
		case "udp", "tcp", "ws":
		default:
			return nil, fmt.Errorf("%q: transport must be udp, tcp or ws", item)
		}
		if err := hostPort(addr); err != nil {
			return nil, fmt.Errorf("%q: %w", item, err)
		}
		out = append(out, Listener{Network: network, Addr: addr})
	}
	if len(out) == 0 {
		return nil, errors.New("no listener")
	}
	return out, nil
}

func hostPort(v string) error {
	_, port, err := net.SplitHostPort(v)
	if err != nil {
		return fmt.Errorf("want host:port: %w", err)
	}
	if p, err := strconv.Atoi(port); err != nil || p < 0 || p > 65535 {
		return fmt.Errorf("bad port %q", port)
	}
	return nil
}

func httpURL(v string) error {
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return errors.New("want an http:// or https:// URL")
	}
	return nil
}

func redisURL(v string) error {
	if v == "" {
		return nil
	}
	u, err := url.Parse(v)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") || u.Host == "" {
		return errors.New("want a redis:// or rediss:// URL")
	}
	return nil
}

func duration(v string, lo, hi time.Duration) (time.Duration, error) {
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, errors.New("want a duration such as 2s or 5m")
	}
	if d < lo || d > hi {
		return 0, fmt.Errorf("want between %s and %s", lo, hi)
	}
	return d, nil
}

func integer(v string, lo, hi int) (int, error) {
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, errors.New("want an integer")
	}
	if n < lo || n > hi {
		return 0, fmt.Errorf("want between %d and %d", lo, hi)
	}
	return n, nil
}

func splitList(v string) []string {
	var out []string
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}
