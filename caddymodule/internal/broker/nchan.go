package broker

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Nchan links a Broker to a real Nchan server: ONE upstream long-poll per channel feeds the
// broker with Nchan's own message ids and content types, and the broker fans the messages
// out to every local subscriber. Publishes are forwarded to Nchan and its answer returned.
type Nchan struct {
	b      *Broker
	base   *url.URL
	client *http.Client
	log    *slog.Logger
}

// NewNchan returns the link to Nchan at base (http://host:port, with /pub/<ch> and
// /sub/<ch> locations as in docker/nginx-nchan.conf).
func NewNchan(b *Broker, base string, log *slog.Logger) (*Nchan, error) {
	u, err := url.Parse(strings.TrimRight(base, "/"))
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, &url.Error{Op: "parse", URL: base, Err: errBadBase}
	}
	if log == nil {
		log = slog.Default()
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 64
	return &Nchan{b: b, base: u, client: &http.Client{Transport: tr}, log: log}, nil
}

var errBadBase = &badBase{}

type badBase struct{}

func (*badBase) Error() string { return "want an http:// or https:// base URL" }

func (n *Nchan) url(kind, name string) string { return n.base.String() + "/" + kind + "/" + name }

// Follow keeps one upstream subscription to each channel until ctx ends. While Nchan cannot
// be reached, the channel is marked down (its subscribers get 502 or a closed stream, and
// reconnect); the link retries with a capped backoff and resumes from the last id it saw.
func (n *Nchan) Follow(ctx context.Context, channels []string) {
	for _, ch := range channels {
		go n.follow(ctx, ch)
	}
}

func (n *Nchan) follow(ctx context.Context, name string) {
	var cur *ID
	var lastData []byte
	// After a failure Nchan may have restarted (a reload empties it) and may be handing out
	// ids at or below ours: ask for its oldest message instead of after our cursor, and skip
	// it only when it is the very message we already have.
	resync := false
	backoff := 100 * time.Millisecond
	fail := func(reason string, err error) {
		resync = true
		n.b.setDown(name, true)
		n.log.Warn("nchan upstream unavailable", "channel", name, "reason", reason, "err", err)
		select {
		case <-ctx.Done():
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 5*time.Second)
	}
	for ctx.Err() == nil {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, n.url("sub", name), nil)
		if err != nil {
			return
		}
		if cur != nil && !resync {
			req.Header.Set("If-Modified-Since", time.Unix(cur.Time, 0).UTC().Format(http.TimeFormat))
			req.Header.Set("If-None-Match", strconv.Itoa(cur.Tag))
		}
		n.log.Debug("nchan upstream request", "channel", name, "cursor", cur)
		resp, err := n.client.Do(req)
		if err != nil {
			if ctx.Err() != nil {
				return
			}
			fail("request failed", err)
			continue
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, n.b.opts.MaxMessageSize+1))
		resp.Body.Close()
		n.log.Debug("nchan upstream answered", "channel", name, "status", resp.StatusCode)
		switch {
		case err != nil:
			fail("reading message", err)
			continue
		case resp.StatusCode == http.StatusOK:
			id, ok := upstreamID(resp.Header)
			if !ok || int64(len(body)) > n.b.opts.MaxMessageSize {
				fail("message without a usable id or too large", nil)
				continue
			}
			n.b.setDown(name, false)
			same := resync && cur != nil && id == *cur && bytes.Equal(body, lastData)
			resync = false
			if !same {
				// publishID keeps local ids increasing even if Nchan restarted lower.
				if _, _, err := n.b.publishID(name, resp.Header.Get("Content-Type"), body, id); err != nil {
					n.log.Warn("storing upstream message", "channel", name, "err", err)
				}
			}
			cur, lastData, backoff = &id, body, 100*time.Millisecond
		case resp.StatusCode == http.StatusRequestTimeout || resp.StatusCode == http.StatusNotModified:
			n.b.setDown(name, false)
			resync = false
			backoff = 100 * time.Millisecond
		case resp.StatusCode == http.StatusGone:
			// Deleted upstream: our subscribers get 410 too; follow the channel anew.
			n.b.Delete(name)
			cur = nil
		default:
			fail("status "+strconv.Itoa(resp.StatusCode), nil)
		}
	}
}

// upstreamID reads Nchan's Last-Modified + Etag.
func upstreamID(h http.Header) (ID, bool) {
	t, err := http.ParseTime(h.Get("Last-Modified"))
	if err != nil {
		return ID{}, false
	}
	tag, err := strconv.Atoi(strings.Trim(h.Get("Etag"), `" `))
	if err != nil || tag < 0 {
		return ID{}, false
	}
	return ID{Time: t.Unix(), Tag: tag}, true
}

// ServePublisher forwards a publisher request to Nchan and returns its answer as is.
func (n *Nchan) ServePublisher(w http.ResponseWriter, r *http.Request, name string) {
	body := io.LimitReader(r.Body, n.b.opts.MaxMessageSize+1)
	req, err := http.NewRequestWithContext(r.Context(), r.Method, n.url("pub", name), body)
	if err != nil {
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	req.ContentLength = r.ContentLength
	for _, h := range []string{"Content-Type", "Accept"} {
		if v := r.Header.Get(h); v != "" {
			req.Header.Set(h, v)
		}
	}
	resp, err := n.client.Do(req)
	if err != nil {
		n.log.Warn("nchan publisher unreachable", "channel", name, "err", err)
		w.Header().Set("Content-Length", "0")
		w.WriteHeader(http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	for _, h := range []string{"Content-Type", "Content-Length", "Allow"} {
		if v := resp.Header.Get(h); v != "" {
			w.Header().Set(h, v)
		}
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, io.LimitReader(resp.Body, 64<<10))
}
