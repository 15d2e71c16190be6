package caddymodule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"slices"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"
	"go.uber.org/zap/exp/zapslog"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/broker"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/seclog"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/token"
)

// PubSubConfig configures pub/{channel} and sub/{channel}.
type PubSubConfig struct {
	// Nchan server the gateway sits in front of (http://host:port with /pub/<ch> and
	// /sub/<ch> locations, as docker/nginx-nchan.conf). Empty: the embedded broker.
	NchanURL string `json:"nchan_url,omitempty"`
	// Channels that may be published and subscribed. Default users-state, active-calls, contacts.
	Channels []string `json:"channels,omitempty"`
	// Messages kept per channel by the embedded broker. Default 1 (a snapshot channel).
	BufferLength int `json:"buffer_length,omitempty"`
	// How long a long-poll waits before 408. Default 60s, as docker/nginx-nchan.conf.
	SubscriberTimeout caddy.Duration `json:"subscriber_timeout,omitempty"`
	// How long a message is kept. Default 1h.
	MessageTimeout caddy.Duration `json:"message_timeout,omitempty"`
	// Largest message accepted. Default 256 KiB.
	MaxMessageSize int64 `json:"max_message_size,omitempty"`
}

// channelName is the pattern every channel name must match.
var channelName = regexp.MustCompile(`^[a-z0-9-]{1,64}$`)

// usersState is the presence channel.
const usersState = "users-state"

func (c *PubSubConfig) defaults() {
	if len(c.Channels) == 0 {
		c.Channels = []string{usersState, "active-calls", "contacts"}
	}
}

func (c *PubSubConfig) validate() error {
	for _, ch := range c.Channels {
		if !channelName.MatchString(ch) {
			return fmt.Errorf("softphone: pubsub channel %q must match [a-z0-9-]{1,64}", ch)
		}
	}
	if c.BufferLength < 0 || c.MaxMessageSize < 0 || c.SubscriberTimeout < 0 || c.MessageTimeout < 0 {
		return errors.New("softphone: pubsub sizes and timeouts must not be negative")
	}
	return nil
}

// pubsub is one process-wide broker (and Nchan link), kept across config reloads so that
// subscribers stay connected and the last snapshot stays known.
type pubsub struct {
	b      *broker.Broker
	nchan  *broker.Nchan // nil: embedded
	cancel context.CancelFunc
}

func (p *pubsub) Destruct() error {
	p.cancel()
	p.b.Close()
	return nil
}

var pubsubPool = caddy.NewUsagePool()

func (c *PubSubConfig) poolKey() string { return "pubsub\x00" + c.NchanURL }

func (c *PubSubConfig) open(logger *zap.Logger) (*pubsub, error) {
	v, _, err := pubsubPool.LoadOrNew(c.poolKey(), func() (caddy.Destructor, error) {
		b := broker.New(broker.Options{
			BufferLength:      c.BufferLength,
			SubscriberTimeout: time.Duration(c.SubscriberTimeout),
			MessageTimeout:    time.Duration(c.MessageTimeout),
			MaxMessageSize:    c.MaxMessageSize,
		})
		ctx, cancel := context.WithCancel(context.Background())
		p := &pubsub{b: b, cancel: cancel}
		if c.NchanURL != "" {
			n, err := broker.NewNchan(b, c.NchanURL, zapslogger(logger))
			if err != nil {
				cancel()
				return nil, fmt.Errorf("softphone: pubsub nchan_url: %w", err)
			}
			p.nchan = n
			n.Follow(ctx, c.Channels)
		}
		go sweepRevoked(ctx, 2*time.Second)
		return p, nil
	})
	if err != nil {
		return nil, err
	}
	return v.(*pubsub), nil
}

// zapslogger lets the plain broker package log through Caddy's logger.
func zapslogger(l *zap.Logger) *slog.Logger { return slog.New(zapslog.NewHandler(l.Core())) }

// allowed reports whether ch may be used.
func (a *App) allowed(ch string) bool {
	return channelName.MatchString(ch) && slices.Contains(a.PubSub.Channels, ch)
}

// publish: loopback peers only (never X-Forwarded-For), no token; forwarded to Nchan or
// the embedded broker.
func (a *API) publish(w http.ResponseWriter, r *http.Request, ch string) error {
	app, now := a.app, a.app.now()
	if !loopbackPeer(r) {
		metrics.publishes.WithLabelValues("forbidden").Inc()
		writeError(w, http.StatusForbidden, msgForbidden, now)
		return nil
	}
	if !app.allowed(ch) {
		metrics.publishes.WithLabelValues("bad_channel").Inc()
		writeError(w, http.StatusNotFound, msgUnknownChannel, now)
		return nil
	}
	metrics.publishes.WithLabelValues("ok").Inc()
	if app.pubsub.nchan != nil {
		app.pubsub.nchan.ServePublisher(w, r, ch)
		return nil
	}
	app.pubsub.b.ServePublisher(w, r, ch)
	return nil
}

// subscribe checks the subscriber's access token, takes it out of the URL and hands the
// request to the broker. A stream ends when the token expires or its session is logged out.
func (a *API) subscribe(w http.ResponseWriter, r *http.Request, ch string) error {
	app, now := a.app, a.app.now()
	if !app.allowed(ch) {
		metrics.subscriptions.WithLabelValues("bad_channel").Inc()
		writeError(w, http.StatusNotFound, msgUnknownChannel, now)
		return nil
	}
	c, v := app.authenticate(r, token.Access, headerOrQuery)
	countCheck(siteSubscribe, v)
	switch v {
	case verdictOK, verdictUnavailable:
	case verdictWrongType:
		metrics.subscriptions.WithLabelValues("denied").Inc()
		app.event(seclog.NchanSubAccessDenied, "Subscription to "+ch+" denied: refresh token used for user: "+c.Username, clientIP(r))
	default:
		metrics.subscriptions.WithLabelValues("denied").Inc()
		app.event(seclog.NchanSubAccessDenied, "Subscription to "+ch+" denied: "+v.String(), clientIP(r))
	}
	if refuse(w, v, msgWrongType, msgUnauthorized, now) {
		return nil
	}
	metrics.subscriptions.WithLabelValues("ok").Inc()
	stripQueryToken(r)
	r.Header.Del("Authorization")

	// The subscriber's own context: cut at token expiry or logout, and independent of the
	// request's, because a parked subscriber outlives its handler (release ends it). It
	// holds nothing of the request: a parked subscriber keeps its context alive while it
	// waits, and the request's context holds the request, Caddy's replacer and vars and,
	// through them, net/http's connection and its buffers (some 15 KiB per subscriber). The
	// expiry is a timer rather than a context.WithDeadline, which would add a second
	// context, a timer and a children map to every waiting subscriber.
	ctx, cancel := context.WithCancelCause(context.Background())
	expiry := time.AfterFunc(time.Until(c.Expiry()), func() { cancel(context.DeadlineExceeded) })
	remove := live.add(c.SessionID(), &liveSub{user: string(c.Subject), iat: time.Unix(c.IssuedAt, 0), st: app.store, cancel: cancel})
	metrics.subscribers.Inc()
	app.pubsub.b.ServeSubscriber(ctx, w, r, ch, func() {
		metrics.subscribers.Dec()
		remove()
		expiry.Stop()
		cancel(nil)
	})
	return nil
}

// users answers the profile plus the last users-state snapshot.
func (a *API) users(w http.ResponseWriter, r *http.Request) error {
	now := a.app.now()
	c, v := a.app.authenticate(r, token.Access, headerOnly)
	countCheck(siteAPI, v)
	if refuse(w, v, msgWrongType, msgProfileNoToken, now) {
		return nil
	}
	statuses := []json.RawMessage{}
	if m, ok := a.app.pubsub.b.Last(usersState); ok && json.Valid(m.Data) {
		statuses = append(statuses, json.RawMessage(m.Data))
	}
	writeJSON(w, http.StatusOK, struct {
		Success  bool              `json:"success"`
		User     profileUser       `json:"user"`
		Statuses []json.RawMessage `json:"statuses"`
	}{true, profileUser{ID: c.Subject, Username: c.Username, Role: c.Role}, statuses})
	return nil
}
