package location

import "sync"

// turns has one sidecar's updates of one AOR run one after another. Two REGISTERs of one
// AOR that started together from the same kept state would both send a compare-and-set,
// and the second would fail, retry on the hash Redis answers with, and, while more arrive,
// lose again: under a burst on one AOR a REGISTER could retry for tens of milliseconds while
// later ones went through (and its nonce fall out of the AOR's window). Taking turns, each
// update starts from the state the one before it wrote, so only another sidecar's write can
// make a compare-and-set fail.
type turns struct {
	mu      sync.Mutex
	waiting map[string][]func() // per AOR with an update running: the updates to start next
}

func newTurns() *turns { return &turns{waiting: map[string][]func(){}} }

// take runs start now when no update of aor is running, else when the ones before it are
// done. Every start must lead to exactly one done(aor).
func (t *turns) take(aor string, start func()) {
	t.mu.Lock()
	if q, busy := t.waiting[aor]; busy {
		t.waiting[aor] = append(q, start)
		t.mu.Unlock()
		return
	}
	t.waiting[aor] = nil
	t.mu.Unlock()
	start()
}

// done ends the running update of aor and starts the next one waiting, if any.
func (t *turns) done(aor string) {
	t.mu.Lock()
	q := t.waiting[aor]
	if len(q) == 0 {
		delete(t.waiting, aor)
		t.mu.Unlock()
		return
	}
	next := q[0]
	q[0] = nil
	if len(q) == 1 {
		t.waiting[aor] = nil // no waiting list kept for an AOR that had a queue once
	} else {
		t.waiting[aor] = q[1:]
	}
	t.mu.Unlock()
	next()
}

// running reports how many AORs have an update running (for tests).
func (t *turns) running() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.waiting)
}
