package presence

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

// Location is one binding as the locator webhook reports it (rustpbx format).
type Location struct {
	AOR            string `json:"aor"`         // sip:201@pbx.example.com
	Expires        int    `json:"expires"`     // seconds left
	Destination    string `json:"destination"` // observed source ip:port
	Transport      string `json:"transport"`   // UDP, TCP, TLS, WS, WSS
	UserAgent      string `json:"user_agent"`
	SupportsWebRTC bool   `json:"supports_webrtc"`
}

// Event is one webhook body.
type Event struct {
	Event     string     `json:"event"` // registered, unregistered, offline
	Location  *Location  `json:"location,omitempty"`
	Locations []Location `json:"locations,omitempty"` // offline: every binding that went away
	Timestamp int64      `json:"timestamp"`
}

// Webhooks POSTs events to every URL from a bounded queue served by a few workers, so a slow
// or dead receiver never delays a REGISTER: when the queue is full the event is dropped and
// counted.
type Webhooks struct {
	URLs    []string
	Headers map[string]string
	Timeout time.Duration // per POST; default 3s
	Queue   int           // default 1024
	Workers int           // default 4
	Logger  *slog.Logger
	Now     func() time.Time
	// OnResult, when set, is told each delivery outcome: "ok", "failed" or "dropped".
	OnResult func(result string)

	once   sync.Once
	queue  chan Event
	client *http.Client
}

func (w *Webhooks) init() {
	w.once.Do(func() {
		if w.Timeout <= 0 {
			w.Timeout = 3 * time.Second
		}
		if w.Queue <= 0 {
			w.Queue = 1024
		}
		if w.Workers <= 0 {
			w.Workers = 4
		}
		if w.Logger == nil {
			w.Logger = slog.Default()
		}
		if w.Now == nil {
			w.Now = time.Now
		}
		w.queue = make(chan Event, w.Queue)
		w.client = &http.Client{Timeout: w.Timeout}
	})
}

// Enabled reports whether any URL is configured.
func (w *Webhooks) Enabled() bool { return w != nil && len(w.URLs) > 0 }

// Send queues e without blocking.
func (w *Webhooks) Send(e Event) {
	if !w.Enabled() {
		return
	}
	w.init()
	if e.Timestamp == 0 {
		e.Timestamp = w.Now().Unix()
	}
	select {
	case w.queue <- e:
	default:
		w.result("dropped")
		w.Logger.Warn("webhook queue full: event dropped", "event", e.Event)
	}
}

// Run delivers queued events until ctx ends.
func (w *Webhooks) Run(ctx context.Context) {
	if !w.Enabled() {
		<-ctx.Done()
		return
	}
	w.init()
	var wg sync.WaitGroup
	for range w.Workers {
		wg.Go(func() {
			for {
				select {
				case <-ctx.Done():
					return
				case e := <-w.queue:
					w.deliver(ctx, e)
				}
			}
		})
	}
	wg.Wait()
}

func (w *Webhooks) deliver(ctx context.Context, e Event) {
	body, err := json.Marshal(e)
	if err != nil {
		return
	}
	for _, u := range w.URLs {
		if err := w.post(ctx, u, body); err != nil {
			w.result("failed")
			w.Logger.Warn("webhook not delivered", "event", e.Event, "err", err)
			continue
		}
		w.result("ok")
	}
}

func (w *Webhooks) post(ctx context.Context, url string, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, w.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building webhook request: %w", redactError(err, url))
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range w.Headers {
		req.Header.Set(k, v)
	}
	resp, err := w.client.Do(req)
	if err != nil {
		return fmt.Errorf("posting webhook: %w", redactError(err, url))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("posting to %s: status %d", redactURL(url), resp.StatusCode)
	}
	return nil
}

func (w *Webhooks) result(r string) {
	if w.OnResult != nil {
		w.OnResult(r)
	}
}

// FromBinding turns a stored binding into the webhook's location at now.
func FromBinding(b location.Binding, now time.Time) Location {
	left := int(b.ExpiresAt.Sub(now).Round(time.Second) / time.Second)
	if left < 0 {
		left = 0
	}
	aor := b.AOR
	if !strings.HasPrefix(aor, "sip:") && !strings.HasPrefix(aor, "sips:") {
		aor = "sip:" + aor
	}
	return Location{
		AOR:            aor,
		Expires:        left,
		Destination:    b.Source,
		Transport:      strings.ToUpper(b.Transport),
		UserAgent:      b.UserAgent,
		SupportsWebRTC: b.WebRTC,
	}
}
