package caddymodule

import (
	"context"
	"sync"
)

// liveSessions tracks the streaming subscribers of each login session so that a logout cuts
// them off at once (an EventSource or WebSocket stream checked its token only when it opened).
type liveSessions struct {
	mu   sync.Mutex
	subs map[string]map[*liveSub]struct{}
}

type liveSub struct {
	user   string
	cancel context.CancelCauseFunc
}

// live is the process's registry: it outlives config reloads, like the connections it tracks.
var live = newLiveSessions()

// errLoggedOut is the cause given to a subscriber cut off by logout.
var errLoggedOut = context.Canceled

func newLiveSessions() *liveSessions {
	return &liveSessions{subs: map[string]map[*liveSub]struct{}{}}
}

// add registers a subscriber of session sid (user sub) and returns the function that
// removes it.
func (l *liveSessions) add(sid, sub string, cancel context.CancelCauseFunc) (remove func()) {
	s := &liveSub{user: sub, cancel: cancel}
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

// sessionIDs lists the sessions that have live subscribers (for the revocation sweep).
func (l *liveSessions) sessionIDs() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]string, 0, len(l.subs))
	for sid := range l.subs {
		out = append(out, sid)
	}
	return out
}

// count is the number of live subscribers.
func (l *liveSessions) count() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, m := range l.subs {
		n += len(m)
	}
	return n
}
