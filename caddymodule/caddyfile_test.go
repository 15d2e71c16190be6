package caddymodule

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

func adapt(t *testing.T, src string) (string, error) {
	t.Helper()
	out, _, err := caddyconfig.GetAdapter("caddyfile").Adapt([]byte(src), map[string]any{"filename": "Caddyfile"})
	return string(out), err
}

func TestCaddyfileExampleAdapts(t *testing.T) {
	src, err := os.ReadFile("../Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	for _, env := range []map[string]string{
		{}, // every variable unset: the defaults
		{"SOFTPHONE_LISTEN": ":9999", "SOFTPHONE_ADMIN": "localhost:2999", "SOFTPHONE_DATA_DIR": "/var/lib/softphone",
			"SOFTPHONE_USERS_FILE": "/etc/softphone/users.json", "SOFTPHONE_REDIS_URL": "redis://127.0.0.1:6379/0"},
		{"SOFTPHONE_REDIS_URL": ""}, // set but empty: the embedded store
	} {
		for _, k := range []string{"SOFTPHONE_LISTEN", "SOFTPHONE_ADMIN", "SOFTPHONE_DATA_DIR", "SOFTPHONE_USERS_FILE", "SOFTPHONE_REDIS_URL"} {
			if v, ok := env[k]; ok {
				t.Setenv(k, v)
			} else {
				t.Setenv(k, "")
				os.Unsetenv(k)
			}
		}
		out, err := adapt(t, string(src))
		if err != nil {
			t.Fatalf("Caddyfile.example with %v: %v", env, err)
		}
		var cfg struct {
			Admin struct {
				Listen string `json:"listen"`
			} `json:"admin"`
			Apps struct {
				Softphone App `json:"softphone"`
			} `json:"apps"`
		}
		if err := json.Unmarshal([]byte(out), &cfg); err != nil {
			t.Fatal(err)
		}
		sp := cfg.Apps.Softphone
		wantDir, wantAdmin, wantEngine := "./data", "localhost:2019", ""
		if d, ok := env["SOFTPHONE_DATA_DIR"]; ok {
			wantDir = d
		}
		if a, ok := env["SOFTPHONE_ADMIN"]; ok {
			wantAdmin = a
		}
		if env["SOFTPHONE_REDIS_URL"] != "" {
			wantEngine = "redis"
		}
		if sp.DataDir != wantDir || cfg.Admin.Listen != wantAdmin || sp.Store == nil || sp.Store.Engine != wantEngine {
			t.Fatalf("env %v: data_dir %q admin %q store %+v", env, sp.DataDir, cfg.Admin.Listen, sp.Store)
		}
		if !strings.Contains(out, `"handler":"softphone_api"`) {
			t.Fatalf("no softphone_api handler in %s", out)
		}
	}
}

func TestCaddyfileGlobalOption(t *testing.T) {
	out, err := adapt(t, `{
	softphone {
		data_dir /tmp/x
		access_ttl 30m
		refresh_ttl 240h
		leeway 5s
		realm pbx.example.com
		users file /etc/users.json
		users inline {
			user 301 {
				id 301
				password s3cret
				display_name "Eve Inline"
				role admin
				enabled false
				call_hook http://127.0.0.1/call
			}
			user 302 {
				id 302
				ha1 0123456789abcdef0123456789abcdef
			}
		}
		store redis://127.0.0.1:6379/2 {
			prefix pbx1:
			on_error open
		}
		refresh_rotation {
			grace 10s
		}
		security_log /var/log/softphone/security.log {
			max_size 1MiB
			keep 3
		}
		login_throttle {
			max_failures 7
			window 10m
		}
	}
}
:8088 {
	softphone_api {
		prefix /api/v1
	}
	softphone_guard
}`)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`"access_ttl":1800000000000`, `"refresh_ttl":864000000000000`, `"leeway":5000000000`,
		`"realm":"pbx.example.com"`,
		`{"backend":"file","path":"/etc/users.json"}`,
		`{"call_hook":"http://127.0.0.1/call","display_name":"Eve Inline","enabled":false,"id":301,"password":"s3cret","role":"admin","username":"301"}`,
		`{"ha1":"0123456789abcdef0123456789abcdef","id":302,"username":"302"}`,
		`"store":{"engine":"redis","url":"redis://127.0.0.1:6379/2","prefix":"pbx1:","on_error":"open"}`,
		`"refresh_rotation":{"grace":10000000000}`,
		`"security_log":{"path":"/var/log/softphone/security.log","max_size":1048576,"keep":3}`,
		`"login_throttle":{"max_failures":7,"window":600000000000}`,
		`"handler":"softphone_api","prefix":"/api/v1"`,
		`"handler":"softphone_guard"`,
	} {
		if !strings.Contains(out, want) {
			t.Errorf("adapted config lacks %s\n%s", want, out)
		}
	}
	// The users backends keep their order: file first, then inline.
	if strings.Index(out, `"backend":"file"`) > strings.Index(out, `"backend":"inline"`) {
		t.Errorf("users backends out of order: %s", out)
	}
}

func TestCaddyfileRejectsBadInput(t *testing.T) {
	cases := map[string]string{
		"unknown subdirective":       "softphone {\n bogus 1\n}",
		"repeated subdirective":      "softphone {\n realm a\n realm b\n}",
		"bad duration":               "softphone {\n access_ttl soon\n}",
		"extra argument":             "softphone {\n realm a b\n}",
		"missing argument":           "softphone {\n data_dir\n}",
		"unknown users backend":      "softphone {\n users ldap x\n}",
		"unknown inline user field":  "softphone {\n users inline {\n user 1 {\n pasword x\n }\n }\n}",
		"repeated inline user field": "softphone {\n users inline {\n user 1 {\n id 1\n id 2\n }\n }\n}",
		"non-integer id":             "softphone {\n users inline {\n user 1 {\n id one\n }\n }\n}",
		"bad enabled":                "softphone {\n users inline {\n user 1 {\n enabled maybe\n }\n }\n}",
		"bad store":                  "softphone {\n store postgres://x\n}",
		"bad security_log size":      "softphone {\n security_log /x {\n max_size lots\n }\n}",
		"zero max_failures":          "softphone {\n login_throttle {\n max_failures 0\n }\n}",
		"unknown throttle field":     "softphone {\n login_throttle {\n burst 3\n }\n}",
		"option given twice":         "softphone {\n}\nsoftphone {\n}",
		"argument on the option":     "softphone now {\n}",
	}
	for name, global := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := adapt(t, "{\n"+global+"\n}\n:8088 {\n softphone_api\n}"); err == nil {
				t.Fatal("adapted without error")
			}
		})
	}
	for name, site := range map[string]string{
		"api unknown subdirective": "softphone_api {\n prefx /x\n}",
		"api repeated prefix":      "softphone_api {\n prefix /a\n prefix /b\n}",
		"api stray argument":       "softphone_api /a/* extra",
		"guard with a block":       "softphone_guard {\n realm x\n}",
		"transport argument":       "forward_auth localhost {\n uri /x\n transport softphone extra\n}",
		"transport unknown option": "forward_auth localhost {\n uri /x\n transport softphone {\n prefx /a\n }\n}",
		"transport prefix twice":   "forward_auth localhost {\n uri /x\n transport softphone {\n prefix /a\n prefix /b\n }\n}",
		"transport bare prefix":    "forward_auth localhost {\n uri /x\n transport softphone {\n prefix\n }\n}",
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := adapt(t, ":8088 {\n"+site+"\n}"); err == nil {
				t.Fatal("adapted without error")
			}
		})
	}
}

func TestCaddyfileTransport(t *testing.T) {
	out, err := adapt(t, ":8088 {\n forward_auth localhost {\n uri /v1/check-media-access\n transport softphone {\n prefix /v1\n }\n }\n}")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, `"transport":{"prefix":"/v1","protocol":"softphone"}`) {
		t.Fatalf("adapted config lacks the softphone transport:\n%s", out)
	}
}

func TestJSONConfigWorks(t *testing.T) {
	gatewayMu.Lock()
	defer gatewayMu.Unlock()
	dir := t.TempDir()
	port := testenv.FreePort(t)
	cfg := fmt.Sprintf(`{"admin":{"disabled":true,"config":{"persist":false}},
	 "apps":{
	  "softphone":{"data_dir":%q,"users":[{"backend":"inline","users":[{"id":7,"username":"700","password":"pw-700"}]}]},
	  "http":{"servers":{"s":{"listen":["127.0.0.1:%d"],"automatic_https":{"disable":true},
	   "routes":[{"handle":[{"handler":"softphone_api"}]}]}}}}}`, dir, port)
	if err := caddy.Load([]byte(cfg), true); err != nil {
		t.Fatal(err)
	}
	defer caddy.Stop()
	g := &testGateway{t: t, Port: port, Base: fmt.Sprintf("http://127.0.0.1:%d", port)}
	g.API = g.Base + DefaultPrefix
	testenv.WaitTCP(t, fmt.Sprintf("127.0.0.1:%d", port), 5*time.Second)
	g.login("700", "pw-700")
	if st, err := os.Stat(filepath.Join(dir, "secret.key")); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("secret.key: %v %v", st, err)
	}
}
