package caddymodule

import (
	"context"
	"sync"
	"time"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store"
)

// liveSessions tracks the streaming subscribers of each login session so that a logout cuts
// them off at once (an EventSource or WebSocket stream checked its token only when it opened).
type liveSessions struct {
	mu   sync.Mutex
	subs map[string]map[*liveSub]struct{}
}

// liveSub is one connected subscriber: whose it is and which store vouched for it.
type liveSub struct {
	user   string
	iat    time.Time
	st     store.Store
	cancel context.CancelCauseFunc
}

// live is the process's registry: it outlives config reloads, like the connections it tracks.
var live = newLiveSessions()

// errLoggedOut is the cause given to a subscriber cut off by logout.
var errLoggedOut = context.Canceled

func newLiveSessions() *liveSessions {
	return &liveSessions{subs: map[string]map[*liveSub]struct{}{}}
}

// add registers a subscriber of session sid and returns the function that removes it.
func (l *liveSessions) add(sid string, s *liveSub) (remove func()) {
	l.mu.Lock()
	m := l.subs[sid]
	if m == nil {
		m = map[*liveSub]struct{}{}
		l.subs[sid] = m
	}
	m[s] = struct{}{}
	l.mu.Unlock()
	return func() {
		l.mu.Lock()
		if m := l.subs[sid]; m != nil {
			delete(m, s)
			if len(m) == 0 {
				delete(l.subs, sid)
			}
		}
		l.mu.Unlock()
	}
}

// cut cancels every subscriber of sid.
func (l *liveSessions) cut(sid string) {
	l.mu.Lock()
	m := l.subs[sid]
	delete(l.subs, sid)
	l.mu.Unlock()
	for s := range m {
		s.cancel(errLoggedOut)
	}
}

// cutUser cancels every subscriber of user sub (logout everywhere).
func (l *liveSessions) cutUser(sub string) {
	var cut []*liveSub
	l.mu.Lock()
	for sid, m := range l.subs {
		for s := range m {
			if s.user == sub {
				cut = append(cut, s)
				delete(m, s)
			}
		}
		if len(m) == 0 {
			delete(l.subs, sid)
		}
	}
	l.mu.Unlock()
	for _, s := range cut {
		s.cancel(errLoggedOut)
	}
}

// sample returns one subscriber of each session (for the revocation sweep).
func (l *liveSessions) sample() map[string]*liveSub {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make(map[string]*liveSub, len(l.subs))
	for sid, m := range l.subs {
		for s := range m {
			out[sid] = s
			break
		}
	}
	return out
}

// sweepRevoked cuts streams whose session was revoked elsewhere (another gateway sharing
// the store, a logout-everywhere, reuse of a rotated refresh token) every interval; a logout
// on this gateway cuts its own streams at once without waiting for this.
func sweepRevoked(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			for sid, s := range live.sample() {
				cctx, cancel := context.WithTimeout(ctx, time.Second)
				revoked, err := s.st.Revoked(cctx, sid, s.user, s.iat)
				cancel()
				if err == nil && revoked {
					live.cut(sid)
				}
			}
		}
	}
}
