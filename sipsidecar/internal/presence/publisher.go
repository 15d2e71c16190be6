package presence

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

// Source is what the publisher reads from the location store.
type Source interface {
	Known(ctx context.Context) (map[string]string, error)
	AORs(ctx context.Context, now time.Time) ([]string, error)
}

// Publisher POSTs a users-state snapshot to URL whenever Changed is called (coalesced within
// Coalesce, and only when the snapshot differs from the last one sent) and every Every
// regardless, so a channel emptied by an nginx reload is seeded again.
type Publisher struct {
	URL      string
	Client   *http.Client
	Source   Source
	Coalesce time.Duration // default 200ms
	Every    time.Duration // default 30s
	Logger   *slog.Logger
	Now      func() time.Time
	// OnPublish, when set, is told each outcome (for metrics).
	OnPublish func(ok bool)

	once    sync.Once
	changed chan struct{}
	mu      sync.Mutex
	last    []byte
}

func (p *Publisher) init() {
	p.once.Do(func() {
		p.changed = make(chan struct{}, 1)
		if p.Coalesce <= 0 {
			p.Coalesce = 200 * time.Millisecond
		}
		if p.Every <= 0 {
			p.Every = 30 * time.Second
		}
		if p.Client == nil {
			p.Client = &http.Client{Timeout: 5 * time.Second}
		}
		if p.Logger == nil {
			p.Logger = slog.Default()
		}
		if p.Now == nil {
			p.Now = time.Now
		}
	})
}

// Changed notes that some user's state may have changed. It never blocks.
func (p *Publisher) Changed() {
	p.init()
	select {
	case p.changed <- struct{}{}:
	default:
	}
}

// Run publishes until ctx ends. The first snapshot goes out at once.
func (p *Publisher) Run(ctx context.Context) {
	p.init()
	tick := time.NewTicker(p.Every)
	defer tick.Stop()
	p.publish(ctx, true)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			p.publish(ctx, true)
		case <-p.changed:
			// Coalesce: changes within the window ride along with this one.
			t := time.NewTimer(p.Coalesce)
			select {
			case <-ctx.Done():
				t.Stop()
				return
			case <-t.C:
			}
			select {
			case <-p.changed:
			default:
			}
			p.publish(ctx, false)
		}
	}
}

// Current computes the snapshot now.
func (p *Publisher) Current(ctx context.Context) (Snapshot, error) {
	p.init()
	known, err := p.Source.Known(ctx)
	if err != nil {
		return Snapshot{}, fmt.Errorf("reading known users: %w", err)
	}
	live, err := p.Source.AORs(ctx, p.Now())
	if err != nil {
		return Snapshot{}, fmt.Errorf("reading live registrations: %w", err)
	}
	return Build(known, live), nil
}

func (p *Publisher) publish(ctx context.Context, always bool) {
	snap, err := p.Current(ctx)
	if err != nil {
		p.Logger.Warn("users-state not published", "err", err)
		p.report(false)
		return
	}
	body := snap.JSON()
	p.mu.Lock()
	same := bytes.Equal(body, p.last)
	p.mu.Unlock()
	if same && !always {
		return
	}
	if err := p.post(ctx, body); err != nil {
		p.Logger.Warn("users-state not published", "err", err)
		p.report(false)
		return
	}
	p.mu.Lock()
	p.last = body
	p.mu.Unlock()
	p.report(true)
}

func (p *Publisher) report(ok bool) {
	if p.OnPublish != nil {
		p.OnPublish(ok)
	}
}

func (p *Publisher) post(ctx context.Context, body []byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.URL, bytes.NewReader(body))
	if err != nil {
		return fmt.Errorf("building users-state request: %w", redactError(err, p.URL))
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.Client.Do(req)
	if err != nil {
		return fmt.Errorf("posting users-state: %w", redactError(err, p.URL))
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	// Nchan answers 201 (subscribers waiting) or 202 (none): both mean stored.
	if resp.StatusCode != http.StatusCreated && resp.StatusCode != http.StatusAccepted && resp.StatusCode != http.StatusOK {
		return fmt.Errorf("posting users-state: status %d", resp.StatusCode)
	}
	return nil
}
