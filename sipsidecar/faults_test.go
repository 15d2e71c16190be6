package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emiago/sipgo"
	goredis "github.com/redis/go-redis/v9"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/config"
)

// localClient is an HTTP client whose connections come from the given loopback address.
func localClient(ip string) *http.Client {
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 2 * time.Second}
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DialContext: d.DialContext, MaxIdleConnsPerHost: 16}}
}

func postStatus(c *http.Client, url, body string, hdr ...string) int {
	req, _ := http.NewRequest("POST", url, strings.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	for _, h := range hdr {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return -1
	}
	resp.Body.Close()
	return resp.StatusCode
}

func getStatus(c *http.Client, url string, hdr ...string) int {
	req, _ := http.NewRequest("GET", url, nil)
	for _, h := range hdr {
		k, v, _ := strings.Cut(h, ": ")
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		return -1
	}
	resp.Body.Close()
	return resp.StatusCode
}

// Issue 5: Redis dies under a stream of logins, token checks and REGISTERs: the answers are
// clean 503s, nothing panics or leaks, everything recovers without a restart when Redis is
// back, and no binding or revocation is lost.
func TestRedisDiesUnderLoad(t *testing.T) {
	redis := testenv.StartRedis(t)
	api := startExampleGateway(t, redis.URL(), "")
	s := startSidecar(t, nil, func(c *config.Config) {
		c.HookURL = api + "/sip/auth"
		c.RedisURL = redis.URL()
		c.Realm = "softphone"
		c.RateLimit, c.RateBurst = 10000, 10000
	})
	hc := localClient("127.0.0.1")
	access := login(t, api, "201", "b749601f329a635a19c4a87bc359be3d")
	revoked := login(t, api, "202", "demo-secret-202")
	if st := postStatus(hc, api+"/auth/logout", "", "Authorization: Bearer "+revoked); st != 200 {
		t.Fatalf("logout: %d", st)
	}
	kept := newPhone(t, s, "TCP", "203")
	if res := kept.register("demo-secret-203", "MD5", []string{"<sip:203@127.0.0.1:5999;transport=tcp>"}); res.StatusCode != 200 {
		t.Fatalf("register before the outage: %d", res.StatusCode)
	}
	baseline := runtime.NumGoroutine()

	var mu sync.Mutex
	seen := map[string]map[int]int{"login": {}, "check": {}, "register": {}}
	note := func(kind string, code int) {
		mu.Lock()
		seen[kind][code]++
		mu.Unlock()
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 3 {
		wg.Go(func() {
			p := newPhone(t, s, "TCP", "201")
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				note("login", postStatus(hc, api+"/auth/login", `{"username":"201","password":"b749601f329a635a19c4a87bc359be3d"}`))
				note("check", getStatus(hc, api+"/check-media-access", "Authorization: Bearer "+access))
				p.callID = fmt.Sprintf("load-%d-%d", w, i)
				res := p.register("b749601f329a635a19c4a87bc359be3d", "MD5", []string{fmt.Sprintf("<sip:201@127.0.0.1:%d;transport=tcp>", 6000+w)})
				note("register", res.StatusCode)
			}
		})
	}
	time.Sleep(700 * time.Millisecond)
	redis.Stop()
	time.Sleep(1200 * time.Millisecond)
	redis.Start(t)
	time.Sleep(1500 * time.Millisecond)
	close(stop)
	wg.Wait()

	for kind, codes := range seen {
		for code, n := range codes {
			if code != 200 && code != 503 {
				t.Errorf("%s answered %d ×%d during the outage; only 200 and 503 are clean", kind, code, n)
			}
		}
		if codes[503] == 0 || codes[200] == 0 {
			t.Errorf("%s: %v — want both successes and 503s (the outage must have been seen)", kind, codes)
		}
	}
	t.Logf("answers during the run: %v", seen)

	// Recovered by itself: all three work, and nothing stored before the outage was lost.
	if st := postStatus(hc, api+"/auth/login", `{"username":"201","password":"b749601f329a635a19c4a87bc359be3d"}`); st != 200 {
		t.Fatalf("login after recovery: %d", st)
	}
	if st := getStatus(hc, api+"/check-media-access", "Authorization: Bearer "+access); st != 200 {
		t.Fatalf("check after recovery: %d", st)
	}
	if st := getStatus(hc, api+"/check-media-access", "Authorization: Bearer "+revoked); st != 401 {
		t.Fatalf("the revocation made before the outage was lost: %d", st)
	}
	if n := len(s.locations(t, "203@pbx.test")); n != 1 {
		t.Fatalf("the binding made before the outage: %d", n)
	}

	// No connection leak: the gateway's and the sidecar's pools hold a bounded number of
	// Redis connections after the outage (each pool is capped; a leak would grow per error).
	rc := goredis.NewClient(&goredis.Options{Addr: redis.Addr})
	defer rc.Close()
	list, err := rc.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	n := strings.Count(list, "\n")
	if n > 80 {
		t.Fatalf("%d Redis connections after the outage", n)
	}
	t.Logf("%d Redis connections after the outage", n)

	// No leak: goroutines come back near the baseline once idle connections are closed.
	hc.CloseIdleConnections()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > baseline+40 && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > baseline+40 {
		t.Fatalf("%d goroutines, %d before the load", n, baseline)
	}
}

// Issue 5: a password-guessing run and a REGISTER flood from one address are cut off, while
// an honest client on another loopback address keeps working.
func TestAttackerIsCutOffHonestClientIsNot(t *testing.T) {
	api := startExampleGateway(t, "", "")
	s := startSidecar(t, nil, func(c *config.Config) {
		c.HookURL = api + "/sip/auth"
		c.Realm = "softphone"
		c.RateLimit, c.RateBurst = 20, 40
		c.BanFailures = 5
	})
	attacker, honest := localClient("127.0.0.1"), localClient("127.0.0.2")

	codes := map[int]int{}
	for i := range 30 {
		codes[postStatus(attacker, api+"/auth/login", fmt.Sprintf(`{"username":"%d","password":"guess"}`, 201+i%3))]++
	}
	if codes[429] == 0 {
		t.Fatalf("password guessing was never throttled: %v", codes)
	}
	if st := postStatus(honest, api+"/auth/login", `{"username":"201","password":"b749601f329a635a19c4a87bc359be3d"}`); st != 200 {
		t.Fatalf("honest login from another address: %d", st)
	}

	// REGISTER flood over UDP from 127.0.0.1: raw packets, counting answers.
	conn, err := net.DialUDP("udp", &net.UDPAddr{IP: net.ParseIP("127.0.0.1")}, udpAddr(t, s.b.SIP["udp"]))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	local := conn.LocalAddr().String()
	for i := range 500 {
		fmt.Fprintf(conn, "REGISTER sip:pbx.test SIP/2.0\r\nVia: SIP/2.0/UDP %s;branch=z9hG4bK-flood%d\r\nFrom: <sip:201@pbx.test>;tag=f%d\r\n"+
			"To: <sip:201@pbx.test>\r\nCall-ID: flood-%d\r\nCSeq: 1 REGISTER\r\nContact: <sip:201@%s>\r\nContent-Length: 0\r\n\r\n", local, i, i, i, local)
	}
	answers := 0
	buf := make([]byte, 4096)
	for {
		conn.SetReadDeadline(time.Now().Add(500 * time.Millisecond))
		if _, err := conn.Read(buf); err != nil {
			break
		}
		answers++
	}
	if answers > 100 {
		t.Fatalf("a flood of 500 REGISTERs got %d answers: not cut off", answers)
	}

	// The honest phone on 127.0.0.2 registers meanwhile.
	ua, _ := sipgo.NewUA()
	defer ua.Close()
	c, err := sipgo.NewClient(ua, sipgo.WithClientHostname("127.0.0.2"), sipgo.WithClientConnectionAddr("127.0.0.2:0"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	p := &phone{t: t, client: c, transport: "UDP", dest: s.b.SIP["udp"], callID: "honest@test", cseq: 1, user: "202"}
	if res := p.register("demo-secret-202", "MD5", []string{"<sip:202@127.0.0.2:5999>"}); res.StatusCode != 200 {
		t.Fatalf("honest REGISTER from another address: %d", res.StatusCode)
	}
}

func udpAddr(t *testing.T, s string) *net.UDPAddr {
	a, err := net.ResolveUDPAddr("udp", s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}
