package config

import (
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
