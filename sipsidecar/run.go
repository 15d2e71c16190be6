package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/authhook"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/config"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/digest"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/metrics"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/ops"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/presence"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/registrar"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/sipserver"
)

// bound tells a caller (the tests) where the listeners ended up.
type bound struct {
	SIP  map[string]string // network → host:port
	HTTP string
}

// run serves until ctx ends, then shuts down in order: stop taking requests, let the ones
// under way finish, close the store.
func run(ctx context.Context, cfg *config.Config, log *slog.Logger, ready chan<- bound) error {
	var store location.Store
	var bans location.Bans
	var srv *sipserver.Server // the hand-outs below hold its UDP answers
	if cfg.RedisURL != "" {
		r, err := location.OpenRedis(cfg.RedisURL, cfg.RedisPrefix)
		if err != nil {
			return err
		}
		r.KeepAORs(cfg.RedisCacheAORs)
		// The REGISTERs finished by the goroutine that reads a pipeline's answers (see below)
		// send their answers together.
		r.SetHandOut(func(deliver func()) {
			held := srv.HoldAnswers()
			defer held.Release()
			deliver()
		})
		store, bans = r, r.Bans()
		pctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		if err := r.Ping(pctx); err != nil {
			// Not fatal: REGISTERs get 503 until Redis answers, and /readyz says so.
			log.Warn("redis not reachable yet", "err", err)
		}
		cancel()
	} else {
		store, bans = location.NewMemory(), location.NewMemoryBans(nil)
	}
	defer store.Close()

	secret := []byte(cfg.NonceSecret)
	if len(secret) == 0 {
		secret = make([]byte, 32)
		rand.Read(secret)
		log.Warn("SIPSIDECAR_NONCE_SECRET is empty: nonces are signed with a random key, so sidecars behind one address will not accept each other's nonces")
	}

	now := time.Now
	m := metrics.New(func() float64 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		aors, err := store.AORs(ctx, now())
		if err != nil {
			return -1
		}
		return float64(len(aors))
	})
	// The SIP server is made below, and serves (so that verdicts come) only after that.
	hook, err := authhook.New(authhook.Options{URL: cfg.HookURL, Secret: cfg.HookSecret, Username: cfg.HookUsername,
		Password: cfg.HookPassword, Timeout: cfg.HookTimeout, Concurrency: cfg.HookConcurrency,
		BatchWait: cfg.HookBatchWait,
		// A batch's UDP answers leave together: one sendmmsg instead of a sendto each.
		HandOut: func(deliver func()) {
			held := srv.HoldAnswers()
			defer held.Release()
			deliver()
		}})
	if err != nil {
		return err
	}
	m.HookRequests(func() float64 { return float64(hook.Requests()) })

	var wg sync.WaitGroup
	defer wg.Wait()
	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()

	ev := &events{metrics: m, now: now}
	if cfg.PublishURL != "" {
		ev.publisher = &presence.Publisher{URL: cfg.PublishURL, Source: store, Every: cfg.PublishInterval, Logger: log, OnPublish: m.Published}
		wg.Go(func() { ev.publisher.Run(bg) })
	}
	if len(cfg.WebhookURLs) > 0 {
		ev.webhooks = &presence.Webhooks{URLs: cfg.WebhookURLs, Headers: cfg.WebhookHeaders, Timeout: cfg.WebhookTimeout, Logger: log, OnResult: m.Webhook}
		wg.Go(func() { ev.webhooks.Run(bg) })
	}

	reg := registrar.New(registrar.Options{
		Config: registrar.Config{Realm: cfg.Realm, Domains: cfg.Domains, DefaultExpires: cfg.ExpiresDefault, MinExpires: cfg.ExpiresMin,
			MaxExpires: cfg.ExpiresMax, NATExpires: cfg.NATExpires, MaxContacts: cfg.MaxContacts,
			Algorithms: cfg.Algorithms},
		Store:   store,
		Nonces:  digest.NewNonces(secret, cfg.NonceTTL, now),
		Hook:    meteredHook{hook, m},
		Events:  ev,
		Metrics: m,
		Guard: &registrar.Guard{Rate: cfg.RateLimit, Burst: cfg.RateBurst, MaxFailures: cfg.BanFailures,
			FailWindow: cfg.BanWindow, BanFor: cfg.BanDuration, Bans: bans, Logger: log},
		Logger: log,
		Now:    now,
	})
	wg.Go(func() { reg.RunExpiry(bg, time.Second) })

	// With everything in memory, only a REGISTER with credentials waits (for the hook): the
	// reader that parsed any other request answers it as well, and hands that one to the
	// hook client, whose goroutine that hears the verdict finishes it. No worker is woken
	// for a UDP request.
	// With Redis, the reader answers what needs no round trip (most challenges:
	// Registrar.Immediate), and hands a REGISTER with credentials to the hook client as
	// well; the verdict's goroutine starts its store update, and the goroutine that reads
	// Redis's answer finishes it. Anything else (a challenge that looks the AOR up, a
	// source whose ban state must be asked) gets a goroutine of its own.
	inline := func(req *sip.Request) bool { return !registrar.AsksHook(req) }
	later := func(req *sip.Request, w *bytes.Buffer, done func(int)) int {
		return reg.HandleLater(ctx, req, source(req), w, done)
	}
	if cfg.RedisURL != "" {
		inline = func(req *sip.Request) bool { return reg.Immediate(req, source(req)) }
		later = func(req *sip.Request, w *bytes.Buffer, done func(int)) int {
			src := source(req)
			if registrar.AsksHook(req) && reg.KnowsSource(src) {
				return reg.HandleLater(ctx, req, src, w, done)
			}
			go func() { done(reg.Handle(ctx, req, src, w)) }()
			return registrar.Waiting
		}
	}
	srv = sipserver.New(sipserver.Options{
		Handler:          func(req *sip.Request, w *bytes.Buffer) int { return reg.Handle(ctx, req, source(req), w) },
		Workers:          cfg.Workers,
		Logger:           log.With("component", "sip"),
		OnRetransmission: m.Retransmission,
		Inline:           inline,
		Later:            later,
	})
	defer srv.Close()

	b := bound{SIP: map[string]string{}}
	var closers []func() error
	serveErr := make(chan error, len(cfg.Listen)+1)
	for _, l := range cfg.Listen {
		switch l.Network {
		case "udp":
			addr, err := net.ResolveUDPAddr("udp", l.Addr)
			if err != nil {
				return fmt.Errorf("SIPSIDECAR_LISTEN %s:%s: %w", l.Network, l.Addr, err)
			}
			pc, err := net.ListenUDP("udp", addr)
			if err != nil {
				return fmt.Errorf("SIPSIDECAR_LISTEN %s:%s: %w", l.Network, l.Addr, err)
			}
			closers = append(closers, pc.Close)
			b.SIP["udp"] = pc.LocalAddr().String()
			go func() { serveErr <- srv.ServeUDP(pc) }()
		case "tcp", "ws":
			ln, err := net.Listen("tcp", l.Addr)
			if err != nil {
				return fmt.Errorf("SIPSIDECAR_LISTEN %s:%s: %w", l.Network, l.Addr, err)
			}
			closers = append(closers, ln.Close)
			b.SIP[l.Network] = ln.Addr().String()
			if l.Network == "tcp" {
				go func() { serveErr <- srv.ServeTCP(ln) }()
			} else {
				go func() { serveErr <- srv.ServeWS(ln) }()
			}
		}
		log.Info("sip listening", "transport", l.Network, "addr", b.SIP[l.Network])
	}

	hln, err := net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		for _, c := range closers {
			c()
		}
		return fmt.Errorf("SIPSIDECAR_HTTP_ADDR %s: %w", cfg.HTTPAddr, err)
	}
	b.HTTP = hln.Addr().String()
	hsrv := &http.Server{Handler: ops.Handler(m.Registry, store, now), ReadHeaderTimeout: 5 * time.Second}
	go func() { serveErr <- hsrv.Serve(hln) }()
	log.Info("http listening", "addr", b.HTTP)
	if ready != nil {
		ready <- b
	}

	var runErr error
	select {
	case <-ctx.Done():
	case err := <-serveErr:
		if err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			runErr = err
		}
	}
	log.Info("shutting down")
	for _, c := range closers {
		c()
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hsrv.Shutdown(sctx)
	done := make(chan struct{})
	go func() { srv.Wait(); close(done) }()
	select {
	case <-done:
	case <-sctx.Done():
	}
	stopBG()
	return runErr
}

// source is where req came from on the wire.
func source(req *sip.Request) registrar.Source {
	host, port, _ := net.SplitHostPort(req.Source())
	p, _ := strconv.Atoi(port)
	return registrar.Source{IP: host, Port: p, Transport: transportName(req.Transport())}
}

// transportName is the lower-case transport name without allocating for the usual ones.
func transportName(t string) string {
	switch t {
	case "UDP", "udp":
		return "udp"
	case "TCP", "tcp":
		return "tcp"
	case "WS", "ws":
		return "ws"
	case "WSS", "wss":
		return "wss"
	case "TLS", "tls":
		return "tls"
	}
	return strings.ToLower(t)
}

// meteredHook times and counts callbacks.
type meteredHook struct {
	c *authhook.Client
	m *metrics.Metrics
}

func (h meteredHook) Check(ctx context.Context, r authhook.Request) (authhook.Verdict, error) {
	start := time.Now()
	v, err := h.c.Check(ctx, r)
	h.m.Hook(hookResult(v, err), time.Since(start).Seconds())
	return v, err
}

func (h meteredHook) CheckLater(r authhook.Request, then func(authhook.Verdict, error)) {
	start := time.Now()
	h.c.CheckLater(r, func(v authhook.Verdict, err error) {
		h.m.Hook(hookResult(v, err), time.Since(start).Seconds())
		then(v, err)
	})
}

func hookResult(v authhook.Verdict, err error) string {
	switch {
	case err != nil:
		return "unavailable"
	case !v.OK:
		return "fail"
	}
	return "ok"
}

// events fans registration changes out to presence and webhooks, never blocking.
type events struct {
	publisher *presence.Publisher
	webhooks  *presence.Webhooks
	metrics   *metrics.Metrics
	now       func() time.Time
}

func (e *events) changed() {
	if e.publisher != nil {
		e.publisher.Changed()
	}
}

func (e *events) Registered(b location.Binding) {
	e.changed()
	loc := presence.FromBinding(b, e.now())
	e.webhooks.Send(presence.Event{Event: "registered", Location: &loc})
}

func (e *events) Unregistered(b location.Binding) {
	e.changed()
	loc := presence.FromBinding(b, e.now())
	e.webhooks.Send(presence.Event{Event: "unregistered", Location: &loc})
}

func (e *events) Expired(bs []location.Binding) {
	e.metrics.Expired(len(bs))
	e.changed()
	byAOR := map[string][]presence.Location{}
	for _, b := range bs {
		byAOR[b.AOR] = append(byAOR[b.AOR], presence.FromBinding(b, e.now()))
	}
	for _, locs := range byAOR {
		e.webhooks.Send(presence.Event{Event: "offline", Locations: locs})
	}
}
