// Package coalesce groups work that arrives while earlier work is on the wire, so that one
// exchange carries many items: the auth hook's batched callbacks, the Redis commands of
// concurrent REGISTERs in one pipeline. A lone item leaves at once (after Wait, when a
// queue sets one), in a group of one; under load the groups fill by themselves while the
// senders are busy.
package coalesce

import (
	"sync"
	"time"
)

// Queue hands queued items to Send in groups. The zero value is not usable: set Send.
//
// One sender carries the load while it keeps up: a sender beyond the first takes a group
// only when a full one (Limit items) is waiting while every other sender is on the wire.
// Items that arrive during an exchange then go together in the next one, instead of being
// split among senders into groups of one or two (at 15,000 REGISTERs/s two senders that
// both took what was waiting sent auth-hook batches of 9; see the bench notes). A slow
// peer still gets Senders exchanges at once as soon as the queue fills faster than one
// sender empties it.
//
// With Wait, a free sender also holds a partial group back until its oldest item has waited
// that long, so that more can join: at 19,500 REGISTERs/s a Wait of 1 ms took auth-hook
// batches from 20 to 39 callbacks and the gateway's CPU from 25% to 18% of a core.
type Queue[T any] struct {
	// Send delivers one group; it must answer every item in it.
	Send func(group []T)
	// Limit is the largest group (read before each one); nil or < 1 means 1.
	Limit func() int
	// Senders is how many groups may be in flight at once; default 1.
	Senders int
	// MaxQueued refuses Add beyond this many waiting items; 0 means no bound.
	MaxQueued int
	// Wait holds a group smaller than Limit back for up to this long after its oldest item
	// arrived, so that more can join it; 0 sends at once.
	Wait time.Duration

	mu      sync.Mutex
	queue   []T
	senders int       // running sender goroutines
	busy    int       // senders inside Send
	oldest  time.Time // when the first waiting item arrived (with Wait)
	wake    chan struct{}
}

// linger is how long an idle sender waits for more work before it ends: under a steady
// load senders live on (a new goroutine would grow its stack through Send again for every
// burst), and an idle process keeps none.
const linger = time.Second

func (q *Queue[T]) limit() int {
	if q.Limit == nil {
		return 1
	}
	return max(q.Limit(), 1)
}

// ready says whether a free sender should take a group now (q.mu held): there is work, and
// either no other sender is on the wire or a full group is waiting.
func (q *Queue[T]) ready() bool {
	return len(q.queue) > 0 && (q.busy == 0 || len(q.queue) >= q.limit())
}

// Add queues item; false means the queue is full and item was not taken.
func (q *Queue[T]) Add(item T) bool {
	q.mu.Lock()
	if q.wake == nil {
		q.wake = make(chan struct{}, 1)
	}
	if q.MaxQueued > 0 && len(q.queue) >= q.MaxQueued {
		q.mu.Unlock()
		return false
	}
	q.queue = append(q.queue, item)
	if q.Wait > 0 && len(q.queue) == 1 {
		q.oldest = time.Now()
	}
	// A new sender only when none is free to be woken, and then only for work one would
	// take (see ready).
	start := q.senders < max(q.Senders, 1) && q.senders == q.busy && q.ready()
	if start {
		q.senders++
	}
	// A free sender needs waking only for a first item or a full group (see ready).
	n := len(q.queue)
	signal := n == 1 || n >= q.limit()
	q.mu.Unlock()
	if start {
		go q.run()
		return true
	}
	if signal {
		select {
		case q.wake <- struct{}{}:
		default:
		}
	}
	return true
}

// Len is the number of items waiting for a sender.
func (q *Queue[T]) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.queue)
}

// run sends groups until it has had nothing to take for linger.
func (q *Queue[T]) run() {
	idle := time.NewTimer(linger)
	defer idle.Stop()
	for {
		q.mu.Lock()
		if q.ready() && q.Wait > 0 && len(q.queue) < q.limit() {
			if left := q.Wait - time.Since(q.oldest); left > 0 {
				q.mu.Unlock()
				idle.Reset(left)
				select {
				case <-q.wake:
				case <-idle.C:
				}
				continue
			}
		}
		if !q.ready() {
			q.mu.Unlock()
			idle.Reset(linger)
			select {
			case <-q.wake:
				continue
			case <-idle.C:
			}
			q.mu.Lock()
			if q.ready() {
				q.mu.Unlock()
				continue
			}
			// What is waiting (if anything) belongs to a sender on the wire, which takes it
			// when its exchange is over.
			q.senders--
			q.mu.Unlock()
			return
		}
		n := min(len(q.queue), q.limit())
		group := append([]T(nil), q.queue[:n]...)
		rest := copy(q.queue, q.queue[n:])
		clear(q.queue[rest:]) // no references kept past the queue's end
		q.queue = q.queue[:rest]
		q.busy++
		q.mu.Unlock()
		q.Send(group)
		q.mu.Lock()
		q.busy--
		q.mu.Unlock()
	}
}
