package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	_ "github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	_ "github.com/caddyserver/caddy/v2/modules/standard"

	_ "github.com/softphone-gateway/softphone-gateway/caddymodule"
	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/config"
)

const apiPrefix = "/pbxcore/api/module-softphone-backend/v1"

// Issue 4, end to end: a softphone logs in over HTTP, subscribes to users-state, registers
// over SIP (SIPp) with the same extension and secret, and sees itself Idle; it unregisters
// and sees Unavailable. The gateway runs the shipped Caddyfile.example; both programs share
// a real Redis. Once with real nginx + Nchan, once with the embedded broker.
func TestEndToEnd(t *testing.T) {
	testenv.Require(t, "sipp", "apt-get install -y sip-tester")
	for _, mode := range []string{"nchan", "embedded"} {
		t.Run(mode, func(t *testing.T) {
			redis := testenv.StartRedis(t)
			nchanURL := ""
			if mode == "nchan" {
				nchanURL = testenv.StartNchan(t, "").URL
			}
			api := startExampleGateway(t, redis.URL(), nchanURL)

			s := startSidecar(t, nil, func(c *config.Config) {
				c.HookURL = api + "/sip/auth"
				c.PublishURL = api + "/pub/users-state"
				c.RedisURL = redis.URL()
				c.Realm = "softphone"
				c.Algorithms = []string{"MD5", "SHA-256"} // SIPp answers only an MD5 first challenge
			})

			access := login(t, api, "201", "b749601f329a635a19c4a87bc359be3d")
			// The sidecar seeds the channel at start; wait for that first snapshot.
			first := waitSnapshot(t, api, access, func(st map[string]state) bool { return true })

			es := openEventSource(t, api+"/sub/users-state?authorization="+access)
			lp := make(chan map[string]state, 1)
			go func() { lp <- longPollNext(t, api, access, first) }()

			phonePort := testenv.Itoa(testenv.FreeUDPPort(t)) // the phone's contact: the same for register and unregister
			users := testenv.UsersCSV(t, "pbx.test", map[string]string{"201": "b749601f329a635a19c4a87bc359be3d"})
			if code, errs := testenv.SIPp(t, 30*time.Second, s.b.SIP["udp"], "-sf", scenario(t), "-inf", users,
				"-i", "127.0.0.1", "-p", phonePort, "-m", "1", "-timeout", "20s", "-timeout_error"); code != 0 {
				t.Fatalf("sipp register: %d\n%s", code, errs)
			}
			select {
			case st := <-lp:
				if st["201"].State != "Idle" || st["201"].Name != "Alice Demo" {
					t.Fatalf("long-poll after register: %+v", st)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the long-poll subscriber never heard of the registration")
			}
			es.waitFor(t, func(st map[string]state) bool { return st["201"].State == "Idle" })

			unreg, _ := filepath.Abs("testdata/unregister-auth.xml")
			if code, errs := testenv.SIPp(t, 30*time.Second, s.b.SIP["udp"], "-sf", unreg, "-inf", users,
				"-i", "127.0.0.1", "-p", phonePort, "-m", "1", "-timeout", "20s", "-timeout_error"); code != 0 {
				t.Fatalf("sipp unregister: %d\n%s", code, errs)
			}
			es.waitFor(t, func(st map[string]state) bool { return st["201"].State == "Unavailable" })
			waitSnapshot(t, api, access, func(st map[string]state) bool { return st["201"].State == "Unavailable" })
		})
	}
}

type state struct {
	State string `json:"state"`
	Name  string `json:"name"`
}

func decodeStates(t *testing.T, b []byte) map[string]state {
	var s struct {
		States map[string]state `json:"states"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("snapshot %q: %v", b, err)
	}
	return s.States
}

// startExampleGateway loads Caddyfile.example in this process, placed by its variables.
func startExampleGateway(t *testing.T, redisURL, nchanURL string) string {
	t.Helper()
	port := testenv.FreePort(t)
	dir := t.TempDir()
	root := testenv.RepoRoot(t)
	for k, v := range map[string]string{
		"SOFTPHONE_LISTEN": "http://127.0.0.1:" + strconv.Itoa(port), "SOFTPHONE_ADMIN": "127.0.0.1:" + strconv.Itoa(testenv.FreePort(t)),
		"SOFTPHONE_DATA_DIR": filepath.Join(dir, "data"), "SOFTPHONE_USERS_FILE": filepath.Join(root, "examples/users.json"),
		"SOFTPHONE_RECORDINGS_DIR": filepath.Join(root, "examples/recordings"), "SOFTPHONE_REDIS_URL": redisURL,
		"SOFTPHONE_NCHAN_URL": nchanURL, "XDG_DATA_HOME": filepath.Join(dir, "xdg"), "XDG_CONFIG_HOME": filepath.Join(dir, "xdg"),
	} {
		t.Setenv(k, v)
	}
	src, err := os.ReadFile(filepath.Join(root, "Caddyfile.example"))
	if err != nil {
		t.Fatal(err)
	}
	cfg, _, err := caddyconfig.GetAdapter("caddyfile").Adapt(src, map[string]any{"filename": "Caddyfile.example"})
	if err != nil {
		t.Fatal(err)
	}
	if err := caddy.Load(cfg, true); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { caddy.Stop() })
	testenv.WaitTCP(t, "127.0.0.1:"+strconv.Itoa(port), 5*time.Second)
	return "http://127.0.0.1:" + strconv.Itoa(port) + apiPrefix
}

func login(t *testing.T, api, user, pw string) string {
	t.Helper()
	resp, err := http.Post(api+"/auth/login", "application/json", strings.NewReader(fmt.Sprintf(`{"username":%q,"password":%q}`, user, pw)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode != 200 || body.AccessToken == "" {
		t.Fatalf("login: %d", resp.StatusCode)
	}
	return body.AccessToken
}

// snapshot is one long-poll answer: the states and the cursor headers.
type snapshot struct {
	states       map[string]state
	lastModified string
	etag         string
}

func poll(t *testing.T, api, access string, after *snapshot) (*snapshot, int) {
	req, _ := http.NewRequest("GET", api+"/sub/users-state", nil)
	req.Header.Set("Authorization", "Bearer "+access)
	if after != nil {
		req.Header.Set("If-Modified-Since", after.lastModified)
		req.Header.Set("If-None-Match", after.etag)
	}
	resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
	if err != nil {
		t.Errorf("long-poll: %v", err)
		return nil, 0
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return nil, resp.StatusCode
	}
	return &snapshot{states: decodeStates(t, b), lastModified: resp.Header.Get("Last-Modified"), etag: resp.Header.Get("Etag")}, 200
}

// waitSnapshot long-polls until a snapshot satisfies ok.
func waitSnapshot(t *testing.T, api, access string, ok func(map[string]state) bool) *snapshot {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	var cur *snapshot
	for time.Now().Before(deadline) {
		s, st := poll(t, api, access, cur)
		if st == 200 {
			if ok(s.states) {
				return s
			}
			cur = s
			continue
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatal("no matching users-state snapshot")
	return nil
}

// longPollNext waits for the snapshot after first whose states differ.
func longPollNext(t *testing.T, api, access string, first *snapshot) map[string]state {
	cur := first
	for range 20 {
		s, st := poll(t, api, access, cur)
		if st != 200 {
			time.Sleep(100 * time.Millisecond)
			continue
		}
		if s.states["201"].State == "Idle" {
			return s.states
		}
		cur = s
	}
	return nil
}

type eventSource struct {
	rd     *bufio.Reader
	events chan map[string]state
}

func openEventSource(t *testing.T, url string) *eventSource {
	t.Helper()
	req, _ := http.NewRequest("GET", url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("event source: %v %v", resp, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	es := &eventSource{rd: bufio.NewReader(resp.Body), events: make(chan map[string]state, 100)}
	go func() {
		var data strings.Builder
		for {
			line, err := es.rd.ReadString('\n')
			if err != nil {
				close(es.events)
				return
			}
			switch {
			case strings.HasPrefix(line, "data: "):
				data.WriteString(strings.TrimPrefix(line, "data: "))
			case line == "\n" && data.Len() > 0:
				var s struct {
					States map[string]state `json:"states"`
				}
				if json.Unmarshal([]byte(data.String()), &s) == nil {
					es.events <- s.States
				}
				data.Reset()
			}
		}
	}()
	return es
}

func (es *eventSource) waitFor(t *testing.T, ok func(map[string]state) bool) {
	t.Helper()
	timeout := time.After(10 * time.Second)
	for {
		select {
		case st, open := <-es.events:
			if !open {
				t.Fatal("the event stream ended")
			}
			t.Logf("event: %+v", st)
			if ok(st) {
				return
			}
		case <-timeout:
			t.Fatal("no matching event on the EventSource stream")
		}
	}
}
