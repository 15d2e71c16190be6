// Command fanout measures presence fan-out: it connects N subscribers (long-poll or
// EventSource) to a users-state URL, publishes one message, and reports how long it took to
// reach each of them (p50/p99/max), how many never got it, and — given the server's pid —
// the server's resident memory per subscriber.
//
//	fanout -sub 'http://127.0.0.1:8088/…/sub/users-state?token=…' -pub http://127.0.0.1:8088/…/pub/users-state \
//	       -n 10000 -mode longpoll -pid 1234
//
// It prints one line of key=value pairs for bench/run.sh.
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func main() {
	sub := flag.String("sub", "", "subscriber URL")
	pub := flag.String("pub", "", "publisher URL")
	n := flag.Int("n", 1000, "subscribers")
	mode := flag.String("mode", "longpoll", "longpoll or eventsource")
	pid := flag.Int("pid", 0, "server pid, for memory per subscriber (0: skip)")
	settle := flag.Duration("settle", 0, "wait after connecting (default 1s + n/4000 s)")
	timeout := flag.Duration("timeout", 30*time.Second, "give up on deliveries after this")
	flag.Parse()
	if *sub == "" || *pub == "" {
		flag.Usage()
		os.Exit(2)
	}
	if *settle == 0 {
		*settle = time.Second + time.Duration(*n)*time.Second/4000
	}
	transport := &http.Transport{
		DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
		MaxIdleConnsPerHost: -1,
		DisableCompression:  true,
	}
	client := &http.Client{Transport: transport}

	post(client, *pub, fmt.Sprintf(`{"states":{},"seq":0,"t":%d}`, time.Now().UnixNano()))
	time.Sleep(200 * time.Millisecond)
	rssBefore := rss(*pid)

	var connected, failed atomic.Int64
	got := make([]int64, *n) // delivery time (unix ns), 0 = not delivered
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256) // connect at most this many at once
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for i := range *n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			ready := func() { connected.Add(1); <-sem }
			var err error
			if *mode == "eventsource" {
				err = eventSource(ctx, client, *sub, ready, &got[i])
			} else {
				err = longPoll(ctx, client, *sub, ready, &got[i])
			}
			if err != nil && ctx.Err() == nil {
				failed.Add(1)
			}
		}()
	}
	for connected.Load()+failed.Load() < int64(*n) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(*settle)
	rssAfter := rss(*pid)

	start := time.Now()
	post(client, *pub, fmt.Sprintf(`{"states":{"201":{"state":"Idle","name":"Bench"}},"seq":1,"t":%d}`, start.UnixNano()))
	deadline := time.Now().Add(*timeout)
	for time.Now().Before(deadline) {
		done := 0
		for i := range got {
			if atomic.LoadInt64(&got[i]) != 0 {
				done++
			}
		}
		if done == *n {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	var lat []float64
	for i := range got {
		if t := atomic.LoadInt64(&got[i]); t != 0 {
			lat = append(lat, float64(t-start.UnixNano())/1e6)
		}
	}
	sort.Float64s(lat)
	q := func(p float64) float64 {
		if len(lat) == 0 {
			return -1
		}
		return lat[min(len(lat)-1, int(p*float64(len(lat))))]
	}
	perSub := -1.0
	if *pid != 0 && rssAfter > 0 {
		perSub = float64(rssAfter-rssBefore) / float64(*n) / 1024
	}
	fmt.Printf("mode=%s subscribers=%d connected=%d failed=%d delivered=%d lost=%d p50_ms=%.1f p99_ms=%.1f max_ms=%.1f rss_before_kib=%d rss_after_kib=%d kib_per_sub=%.1f\n",
		*mode, *n, connected.Load(), failed.Load(), len(lat), *n-len(lat), q(0.50), q(0.99), q(1.0)-0, rssBefore/1024, rssAfter/1024, perSub)
}

func post(c *http.Client, url, body string) {
	resp, err := c.Post(url, "application/json", strings.NewReader(body))
	if err != nil {
		fmt.Fprintln(os.Stderr, "publish:", err)
		os.Exit(1)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		fmt.Fprintln(os.Stderr, "publish: status", resp.StatusCode)
		os.Exit(1)
	}
}

// longPoll takes the current message, then waits with its cursor for the next one.
func longPoll(ctx context.Context, c *http.Client, url string, ready func(), got *int64) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := c.Do(req)
	if err != nil {
		ready()
		return err
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	lm, etag := resp.Header.Get("Last-Modified"), resp.Header.Get("Etag")
	req, _ = http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("If-Modified-Since", lm)
	req.Header.Set("If-None-Match", etag)
	ready() // the waiting request goes out now
	resp, err = c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode == 200 && strings.Contains(string(body), `"seq":1`) {
		atomic.StoreInt64(got, time.Now().UnixNano())
	}
	return nil
}

// eventSource reads the stream until the second message arrives.
func eventSource(ctx context.Context, c *http.Client, url string, ready func(), got *int64) error {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	req.Header.Set("Accept", "text/event-stream")
	resp, err := c.Do(req)
	if err != nil {
		ready()
		return err
	}
	defer resp.Body.Close()
	rd := bufio.NewReader(resp.Body)
	readyOnce := false
	for {
		line, err := rd.ReadString('\n')
		if err != nil {
			if !readyOnce {
				ready()
			}
			return err
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"seq":0`) && !readyOnce {
			readyOnce = true
			ready()
		}
		if strings.HasPrefix(line, "data: ") && strings.Contains(line, `"seq":1`) {
			atomic.StoreInt64(got, time.Now().UnixNano())
			return nil
		}
	}
}

// rss is the resident set size of pid in bytes (0 when unknown).
func rss(pid int) int64 {
	if pid == 0 {
		return 0
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "VmRSS:") {
			f := strings.Fields(line)
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}
