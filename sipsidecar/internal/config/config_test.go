package config

import (
	"errors"
	"flag"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func TestDefaultsAndOverrides(t *testing.T) {
	c, err := Load(env(map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "http://127.0.0.1:8088/hook"}), nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Listen) != 3 || c.Listen[2] != (Listener{"ws", "127.0.0.1:5066"}) || c.HookTimeout != 2*time.Second || c.HookBatchWait != time.Millisecond ||
		c.ExpiresDefault != 3600 || c.ExpiresMin != 60 || c.ExpiresMax != 7200 || c.NATExpires != 30 || c.MaxContacts != 10 || c.Procs != 1 {
		t.Fatalf("defaults %+v", c)
	}
	c, err = Load(env(map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "http://h/hook", "SIPSIDECAR_MAX_CONTACTS": "3"}),
		[]string{"-max-contacts", "5", "-procs", "0", "-listen", "udp:0.0.0.0:5070", "-webhook-headers", "X-Key: a; X-Other: b"})
	if err != nil {
		t.Fatal(err)
	}
	if c.MaxContacts != 5 || c.Procs != 0 || len(c.Listen) != 1 || c.WebhookHeaders["X-Key"] != "a" || c.WebhookHeaders["X-Other"] != "b" {
		t.Fatalf("flags do not override: %+v", c)
	}
	c, err = Load(env(map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "http://h/hook", "SIPSIDECAR_DOMAINS": "PBX.example, 10.0.0.5,[2001:db8::1]"}), nil)
	if err != nil || !slices.Equal(c.Domains, []string{"pbx.example", "10.0.0.5", "[2001:db8::1]"}) {
		t.Fatalf("domains: %v %v", c.Domains, err)
	}
}

func TestBadValuesNameTheVariable(t *testing.T) {
	base := map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "http://127.0.0.1/hook"}
	cases := map[string]string{
		"LISTEN":                "udp:nohostport",
		"AUTH_HOOK_URL":         "ftp://x",
		"AUTH_HOOK_TIMEOUT":     "soon",
		"AUTH_HOOK_CONCURRENCY": "0",
		"AUTH_HOOK_BATCH_WAIT":  "-1ms",
		"REDIS_URL":             "http://127.0.0.1:6379",
		"NONCE_SECRET":          "short",
		"NONCE_TTL":             "1ms",
		"EXPIRES_DEFAULT":       "-1",
		"EXPIRES_MIN":           "abc",
		"EXPIRES_MAX":           "0",
		"NAT_EXPIRES":           "99999",
		"MAX_CONTACTS":          "1.5",
		"PROCS":                 "-1",
		"RATE_LIMIT":            "-3",
		"HTTP_ADDR":             "localhost",
		"PUBLISH_URL":           "nchan",
		"WEBHOOK_URLS":          "http://ok/a,bad",
		"WEBHOOK_HEADERS":       "no-colon",
		"LOG_LEVEL":             "loud",
		"DIGEST_ALGORITHMS":     "MD5,SHA-512",
		"DOMAINS":               "pbx.example, pbx.example:5060",
	}
	for name, val := range cases {
		t.Run(name, func(t *testing.T) {
			m := map[string]string{}
			for k, v := range base {
				m[k] = v
			}
			m["SIPSIDECAR_"+name] = val
			_, err := Load(env(m), nil)
			if err == nil || !strings.Contains(err.Error(), "SIPSIDECAR_"+name) {
				t.Fatalf("err %v, want it to name SIPSIDECAR_%s", err, name)
			}
		})
	}
	for _, v := range []string{"1s", "soon", ""} {
		t.Run("batch wait "+v, func(t *testing.T) {
			m := map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "http://h/", "SIPSIDECAR_AUTH_HOOK_BATCH_WAIT": v}
			c, err := Load(env(m), nil)
			if v == "" { // unset: the default
				if err != nil || c.HookBatchWait != time.Millisecond {
					t.Fatalf("%v %v", c.HookBatchWait, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), "SIPSIDECAR_AUTH_HOOK_BATCH_WAIT") {
				t.Fatalf("err %v", err)
			}
		})
	}
	t.Run("batch wait 0 sends at once", func(t *testing.T) {
		m := map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "http://h/", "SIPSIDECAR_AUTH_HOOK_BATCH_WAIT": "0"}
		if c, err := Load(env(m), nil); err != nil || c.HookBatchWait != 0 {
			t.Fatalf("%v %v", c.HookBatchWait, err)
		}
	})
	t.Run("hook URL missing", func(t *testing.T) {
		if _, err := Load(env(nil), nil); err == nil || !strings.Contains(err.Error(), "SIPSIDECAR_AUTH_HOOK_URL") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("min above max", func(t *testing.T) {
		m := map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "http://h/", "SIPSIDECAR_EXPIRES_MIN": "100", "SIPSIDECAR_EXPIRES_MAX": "50"}
		if _, err := Load(env(m), nil); err == nil || !strings.Contains(err.Error(), "SIPSIDECAR_EXPIRES_MIN") {
			t.Fatalf("err %v", err)
		}
	})
	t.Run("unknown flag", func(t *testing.T) {
		if _, err := Load(env(base), []string{"-bogus", "1"}); err == nil {
			t.Fatal("accepted")
		}
	})
}

// An attacker who reads the sidecar's start-up output (a crash-looping container's log) must
// not learn its secrets there: a bad value is named by its variable and shown, if at all,
// without its credentials.
func TestBadValuesKeepSecretsOutOfErrors(t *testing.T) {
	hook := map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "http://127.0.0.1/hook"}
	cases := []struct {
		name    string
		env     map[string]string
		args    []string
		secrets []string
		wants   []string
	}{
		{"short nonce secret", map[string]string{"SIPSIDECAR_NONCE_SECRET": "Sup3rS3cret!"}, nil,
			[]string{"Sup3rS3cret!"}, []string{"SIPSIDECAR_NONCE_SECRET", "at least 16 characters"}},
		{"short nonce secret as a flag", nil, []string{"-nonce-secret", "Sup3rS3cret!"},
			[]string{"Sup3rS3cret!"}, []string{"SIPSIDECAR_NONCE_SECRET", "at least 16 characters"}},
		{"Redis URL without its scheme's colon", map[string]string{"SIPSIDECAR_REDIS_URL": "redis//:R3disPassw0rd@10.0.0.5:6379/0"}, nil,
			[]string{"R3disPassw0rd"}, []string{"SIPSIDECAR_REDIS_URL", "want a redis:// or rediss:// URL"}},
		{"Redis URL with the wrong scheme", map[string]string{"SIPSIDECAR_REDIS_URL": "http://:R3disPassw0rd@10.0.0.5:6379/0"}, nil,
			[]string{"R3disPassw0rd"}, []string{`SIPSIDECAR_REDIS_URL="http://10.0.0.5:6379/0"`, "want a redis://"}},
		{"webhook header without its colon", map[string]string{"SIPSIDECAR_WEBHOOK_HEADERS": "Authorization Bearer tok-abc123"}, nil,
			[]string{"tok-abc123"}, []string{"SIPSIDECAR_WEBHOOK_HEADERS", "header 1 is not Name: value"}},
		{"second webhook header bad", map[string]string{"SIPSIDECAR_WEBHOOK_HEADERS": "X-API-Key: K3y-abc123; Authorization Bearer tok-abc123"}, nil,
			[]string{"K3y-abc123", "tok-abc123"}, []string{"SIPSIDECAR_WEBHOOK_HEADERS", "header 2 is not Name: value"}},
		{"hook URL with credentials and the wrong scheme", map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "ftp://hookuser:H00k-P4ss@hooks.example/auth?key=K3y-s3cret"}, nil,
			[]string{"hookuser", "H00k-P4ss", "K3y-s3cret"}, []string{`SIPSIDECAR_AUTH_HOOK_URL="ftp://hooks.example/auth?…"`, "want an http://"}},
		{"hook URL without its scheme's colon", map[string]string{"SIPSIDECAR_AUTH_HOOK_URL": "http//hookuser:H00k-P4ss@hooks.example/auth"}, nil,
			[]string{"H00k-P4ss"}, []string{"SIPSIDECAR_AUTH_HOOK_URL", "want an http://"}},
		{"publish URL with a key and the wrong scheme", map[string]string{"SIPSIDECAR_PUBLISH_URL": "nchan://127.0.0.1/pub?key=PubK3y"}, nil,
			[]string{"PubK3y"}, []string{`SIPSIDECAR_PUBLISH_URL="nchan://127.0.0.1/pub?…"`, "want an http://"}},
		{"second webhook URL with credentials and the wrong scheme", map[string]string{"SIPSIDECAR_WEBHOOK_URLS": "http://ok/a?token=T0k3n-one,ftp://u:W3bh00k-P4ss@hooks.example/b?token=T0k3n-two"}, nil,
			[]string{"T0k3n-one", "W3bh00k-P4ss", "T0k3n-two"}, []string{"SIPSIDECAR_WEBHOOK_URLS", `URL 2 ("ftp://hooks.example/b?…")`, "want an http://"}},
		{"webhook URL that is no URL", map[string]string{"SIPSIDECAR_WEBHOOK_URLS": "http://ok/a?token=T0k3n-one,bad:W3bh00k-P4ss"}, nil,
			[]string{"T0k3n-one", "W3bh00k-P4ss"}, []string{"SIPSIDECAR_WEBHOOK_URLS", "URL 2: want an http://"}},
		{"unquoted flag value", nil, []string{"-webhook-headers", "Authorization:", "tok-abc123"},
			[]string{"tok-abc123"}, []string{"unexpected argument", "quote"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			m := map[string]string{}
			for k, v := range hook {
				m[k] = v
			}
			for k, v := range c.env {
				m[k] = v
			}
			_, err := Load(env(m), c.args)
			if err == nil {
				t.Fatal("accepted")
			}
			t.Log(err)
			for _, s := range c.secrets {
				if strings.Contains(err.Error(), s) {
					t.Errorf("error shows the secret %q: %v", s, err)
				}
			}
			for _, w := range c.wants {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error lacks %q: %v", w, err)
				}
			}
		})
	}
}

// The flag package prints every flag's default on -h and on a bad flag: a secret set in the
// environment must not appear there as a default.
func TestUsageKeepsSecretsFromTheEnvironment(t *testing.T) {
	m := map[string]string{
		"SIPSIDECAR_AUTH_HOOK_URL":      "http://hookuser:H00k-P4ss@127.0.0.1/hook?key=K3y-s3cret",
		"SIPSIDECAR_AUTH_HOOK_PASSWORD": "H00k-P4ssword",
		"SIPSIDECAR_NONCE_SECRET":       "Sup3rS3cret-0123456789",
		"SIPSIDECAR_REDIS_URL":          "redis://:R3disPassw0rd@10.0.0.5:6379/0",
		"SIPSIDECAR_WEBHOOK_HEADERS":    "Authorization: Bearer tok-abc123",
	}
	for _, args := range [][]string{{"-h"}, {"-bogus"}} {
		t.Run(args[0], func(t *testing.T) {
			var err error
			out := stderrOf(t, func() { _, err = Load(env(m), args) })
			if err == nil || (args[0] == "-h") != errors.Is(err, flag.ErrHelp) {
				t.Fatalf("err %v", err)
			}
			if !strings.Contains(out, "-nonce-secret") {
				t.Fatalf("no usage printed: %s", out)
			}
			for _, s := range []string{"hookuser", "H00k-P4ss", "K3y-s3cret", "Sup3rS3cret", "R3disPassw0rd", "tok-abc123"} {
				if strings.Contains(out, s) {
					t.Errorf("usage shows the secret %q:\n%s", s, out)
				}
			}
		})
	}
	// The environment still counts, and a flag still overrides it.
	c, err := Load(env(m), []string{"-nonce-secret", "Other-S3cret-0123456789"})
	if err != nil || c.NonceSecret != "Other-S3cret-0123456789" || c.HookPassword != "H00k-P4ssword" || c.WebhookHeaders["Authorization"] != "Bearer tok-abc123" {
		t.Fatalf("%+v %v", c, err)
	}
}

// stderrOf runs f and returns what it wrote to os.Stderr, where the flag package prints.
func stderrOf(t *testing.T, f func()) string {
	t.Helper()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved := os.Stderr
	os.Stderr = w
	done := make(chan string)
	go func() {
		b, _ := io.ReadAll(r)
		done <- string(b)
	}()
	defer func() { os.Stderr = saved }()
	f()
	os.Stderr = saved
	w.Close()
	return <-done
}
