package broker

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// ServePublisher answers Nchan's publisher location: POST/PUT publish (201 when subscribers
// were connected, 202 otherwise), GET describes the channel, DELETE removes it (its
// subscribers get 410). The answer body is channel info, as text or, with Accept:
// application/json, as Nchan's JSON.
func (b *Broker) ServePublisher(w http.ResponseWriter, r *http.Request, name string) {
	switch r.Method {
	case http.MethodPost, http.MethodPut:
		data, err := io.ReadAll(io.LimitReader(r.Body, b.opts.MaxMessageSize+1))
		if err != nil {
			http.Error(w, "", http.StatusBadRequest)
			return
		}
		_, subscribers, err := b.Publish(name, r.Header.Get("Content-Type"), data)
		switch {
		case errors.Is(err, ErrTooLarge):
			w.WriteHeader(http.StatusRequestEntityTooLarge)
			return
		case err != nil:
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		info, _ := b.Info(name)
		status := http.StatusAccepted
		if subscribers > 0 {
			status = http.StatusCreated
		}
		writeInfo(w, r, status, info)
	case http.MethodGet, http.MethodHead:
		info, ok := b.Info(name)
		if !ok {
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusNotFound)
			return
		}
		writeInfo(w, r, http.StatusOK, info)
	case http.MethodDelete:
		info, ok := b.Delete(name)
		if !ok {
			w.Header().Set("Content-Length", "0")
			w.WriteHeader(http.StatusNotFound)
			return
		}
		writeInfo(w, r, http.StatusOK, info)
	default:
		w.Header().Set("Allow", "GET, POST, PUT, DELETE")
		w.WriteHeader(http.StatusMethodNotAllowed)
	}
}

func writeInfo(w http.ResponseWriter, r *http.Request, status int, info Info) {
	body, ct := info.text(), "text/plain"
	if strings.Contains(r.Header.Get("Accept"), "application/json") {
		body, ct = info.json(), "text/json"
	}
	w.Header().Set("Content-Type", ct)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// ServeSubscriber serves one subscriber of channel name as Nchan does: a WebSocket when the
// request upgrades, an EventSource stream when it accepts text/event-stream, a long-poll
// otherwise. When ctx ends (the subscriber's token expired or its session was logged out) a
// stream is closed at once and a waiting long-poll ends.
//
// release, when not nil, is called once the subscriber is really done: before ServeSubscriber
// returns, or later for a subscriber parked without its goroutine. ctx must then outlive the
// request, and a parked subscriber keeps it alive while it waits: give it none of the
// request's context (context.WithoutCancel(r.Context()) would keep the request, and whatever
// its context holds, alive with it). Only ctx's cancellation is used.
func (b *Broker) ServeSubscriber(ctx context.Context, w http.ResponseWriter, r *http.Request, name string, release func()) {
	switch {
	case strings.EqualFold(r.Header.Get("Upgrade"), "websocket"):
		b.serveWebSocket(ctx, w, r, name)
	case strings.Contains(r.Header.Get("Accept"), "text/event-stream"):
		if b.parkEventSource(ctx, w, r, name, release) {
			return // parked: release runs when the stream ends
		}
		b.serveEventSource(ctx, w, r, name)
	default:
		if b.serveLongPoll(ctx, w, r, name, release) {
			return // parked: release runs when it answers
		}
	}
	if release != nil {
		release()
	}
}

// longPollCursor reads If-Modified-Since / If-None-Match; none (or an unreadable date)
// means "from the oldest message".
func longPollCursor(r *http.Request) cursor {
	ims := r.Header.Get("If-Modified-Since")
	if ims == "" {
		return nil
	}
	t, err := http.ParseTime(ims)
	if err != nil {
		return nil
	}
	tag := 0
	if inm := strings.Trim(strings.TrimPrefix(r.Header.Get("If-None-Match"), "W/"), `" `); inm != "" {
		if n, err := strconv.Atoi(inm); err == nil && n >= 0 {
			tag = n
		}
	}
	return &ID{Time: t.Unix(), Tag: tag}
}

// serveLongPoll answers a long-poll; it reports true when the subscriber was parked (see
// park.go) and will be answered later.
func (b *Broker) serveLongPoll(ctx context.Context, w http.ResponseWriter, r *http.Request, name string, release func()) (parkedNow bool) {
	if r.Header.Get("If-Modified-Since") != "" && r.Header.Get("If-None-Match") == "" {
		// Nchan refuses a readable date without a tag.
		if _, err := http.ParseTime(r.Header.Get("If-Modified-Since")); err == nil {
			w.Header().Set("Content-Length", "18")
			w.WriteHeader(http.StatusBadRequest)
			io.WriteString(w, "Message ID invalid")
			return false
		}
	}
	cur := longPollCursor(r)
	var timeout <-chan time.Time
	if b.opts.SubscriberTimeout > 0 {
		t := time.NewTimer(b.opts.SubscriberTimeout)
		defer t.Stop()
		timeout = t.C
	}
	c, err := b.join(name)
	if err != nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return false
	}
	defer func() {
		if !parkedNow {
			b.leave(c)
		}
	}()
	for first := true; ; first = false {
		m, ok, st, wait := b.poll(c, cur)
		if first && !ok && st == stateOpen && !b.opts.KeepLongPolls && b.parkLongPoll(ctx, w, r, c, cur, release) {
			return true
		}
		h := w.Header()
		switch {
		case ok:
			if m.ContentType != "" {
				h.Set("Content-Type", m.ContentType)
			} else {
				h["Content-Type"] = nil // no sniffing: Nchan sends none either
			}
			h.Set("Content-Length", strconv.Itoa(len(m.Data)))
			h.Set("Last-Modified", time.Unix(m.ID.Time, 0).UTC().Format(http.TimeFormat))
			h.Set("Etag", strconv.Itoa(m.ID.Tag))
			h.Set("Vary", "If-None-Match, If-Modified-Since")
			w.WriteHeader(http.StatusOK)
			if r.Method != http.MethodHead {
				w.Write(m.Data)
			}
			return false
		case st == stateGone:
			h.Set("Content-Length", "0")
			h.Set("Etag", "0")
			h.Set("Vary", "If-None-Match, If-Modified-Since")
			w.WriteHeader(http.StatusGone)
			return false
		case st == stateDown:
			h.Set("Content-Length", "0")
			w.WriteHeader(http.StatusBadGateway)
			return false
		}
		select {
		case <-wait:
		case <-timeout:
			h.Set("Content-Length", "0")
			w.WriteHeader(http.StatusRequestTimeout)
			return false
		case <-ctx.Done():
			h.Set("Content-Length", "0")
			w.WriteHeader(http.StatusRequestTimeout)
			return false
		case <-r.Context().Done():
			return false
		}
	}
}

// eventCursor reads Last-Event-ID (header, or ?last_event_id=).
func eventCursor(r *http.Request) cursor {
	v := r.Header.Get("Last-Event-ID")
	if v == "" {
		v = r.URL.Query().Get("last_event_id")
	}
	if v == "" {
		return nil
	}
	id, err := ParseID(v)
	if err != nil {
		return nil
	}
	return &id
}

func (b *Broker) serveEventSource(ctx context.Context, w http.ResponseWriter, r *http.Request, name string) {
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream; charset=utf-8")
	h.Del("Content-Length")
	w.WriteHeader(http.StatusOK)
	if _, err := io.WriteString(w, ": hi\n\n"); err != nil {
		return
	}
	if rc.Flush() != nil {
		return
	}
	cur := eventCursor(r)
	c, err := b.join(name)
	if err != nil {
		return
	}
	defer b.leave(c)
	var buf []byte
	for {
		m, ok, st, wait := b.poll(c, cur)
		switch {
		case ok:
			buf = appendEvent(buf[:0], m)
			if _, err := w.Write(buf); err != nil {
				return
			}
			if rc.Flush() != nil {
				return
			}
			id := m.ID
			cur = &id
			continue
		case st == stateGone:
			io.WriteString(w, ":410: 410 Gone\n\n")
			rc.Flush()
			return
		case st == stateDown:
			// Close the stream: the client's EventSource reconnects by itself.
			io.WriteString(w, ":502: 502 Bad Gateway\n\n")
			rc.Flush()
			return
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return
		case <-r.Context().Done():
			return
		}
	}
}

// appendEvent writes id: and one data: line per line of the message.
func appendEvent(buf []byte, m Message) []byte {
	buf = append(buf, "id: "...)
	buf = append(buf, m.ID.String()...)
	buf = append(buf, '\n')
	data := m.Data
	for {
		i := indexByte(data, '\n')
		line := data
		if i >= 0 {
			line = data[:i]
		}
		buf = append(buf, "data: "...)
		buf = append(buf, line...)
		buf = append(buf, '\n')
		if i < 0 {
			break
		}
		data = data[i+1:]
	}
	return append(buf, '\n')
}

func indexByte(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return -1
}
