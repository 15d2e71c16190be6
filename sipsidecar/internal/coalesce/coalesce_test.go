package coalesce

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestQueue(t *testing.T) {
	t.Run("every item is sent once, in groups within the limit, by at most Senders at once", func(t *testing.T) {
		var mu sync.Mutex
		seen := map[int]int{}
		var inFlight, most, largest atomic.Int32
		q := &Queue[int]{Senders: 2, Limit: func() int { return 8 }}
		q.Send = func(group []int) {
			n := inFlight.Add(1)
			for {
				m := most.Load()
				if n <= m || most.CompareAndSwap(m, n) {
					break
				}
			}
			if l := int32(len(group)); l > largest.Load() {
				largest.Store(l)
			}
			time.Sleep(time.Millisecond) // on the wire
			mu.Lock()
			for _, v := range group {
				seen[v]++
			}
			mu.Unlock()
			inFlight.Add(-1)
		}
		var wg sync.WaitGroup
		for i := range 500 {
			wg.Go(func() {
				if !q.Add(i) {
					t.Errorf("item %d refused without a bound", i)
				}
			})
		}
		wg.Wait()
		deadline := time.Now().Add(5 * time.Second)
		for {
			mu.Lock()
			n := len(seen)
			mu.Unlock()
			if n == 500 || time.Now().After(deadline) {
				break
			}
			time.Sleep(10 * time.Millisecond)
		}
		mu.Lock()
		defer mu.Unlock()
		for i := range 500 {
			if seen[i] != 1 {
				t.Fatalf("item %d sent %d times", i, seen[i])
			}
		}
		if most.Load() > 2 || largest.Load() > 8 || largest.Load() < 2 {
			t.Fatalf("%d senders at once (max 2), largest group %d (want 2..8)", most.Load(), largest.Load())
		}
	})

	t.Run("a second sender takes only a full group while the first is on the wire", func(t *testing.T) {
		release := make(chan struct{})
		groups := make(chan []int, 16)
		q := &Queue[int]{Senders: 2, Limit: func() int { return 4 }, Send: func(g []int) {
			groups <- g
			<-release
		}}
		// Both senders exist from the start: the first group of one, then a full group.
		q.Add(0)
		if g := <-groups; len(g) != 1 {
			t.Fatalf("first group %v, want [0]", g)
		}
		for i := 1; i <= 4; i++ {
			q.Add(i)
		}
		if g := <-groups; len(g) != 4 {
			t.Fatalf("second group %v, want 4 items", g)
		}
		// Both are on the wire. Let them come back: the one left idle must not take a
		// partial group while the other is sending.
		release <- struct{}{}
		release <- struct{}{}
		for {
			q.mu.Lock()
			back := q.senders == 2 && q.busy == 0
			q.mu.Unlock()
			if back {
				break
			}
			runtime.Gosched()
		}
		q.Add(5) // one free sender takes it at once
		if g := <-groups; len(g) != 1 || g[0] != 5 {
			t.Fatalf("lone item went as %v", g)
		}
		for i := 6; i <= 8; i++ {
			q.Add(i) // a partial group waits for the sender on the wire
		}
		select {
		case g := <-groups:
			t.Fatalf("partial group %v sent beside one on the wire", g)
		case <-time.After(50 * time.Millisecond):
		}
		close(release)
		if g := <-groups; len(g) != 3 {
			t.Fatalf("waiting items went as %v, want one group of 3", g)
		}
	})

	t.Run("with Wait a partial group waits for more from its oldest item, a full one goes at once", func(t *testing.T) {
		const wait = 300 * time.Millisecond
		groups := make(chan []int, 4)
		q := &Queue[int]{Limit: func() int { return 4 }, Wait: wait, Send: func(g []int) { groups <- g }}
		start := time.Now()
		q.Add(1)
		q.Add(2)
		select {
		case g := <-groups:
			t.Fatalf("partial group %v sent after %v, before Wait", g, time.Since(start))
		case <-time.After(100 * time.Millisecond):
		}
		q.Add(3) // joins the waiting group; the wait still counts from item 1
		select {
		case g := <-groups:
			if len(g) != 3 || time.Since(start) < wait {
				t.Fatalf("group %v after %v, want [1 2 3] after at least %v", g, time.Since(start), wait)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a partial group never left")
		}

		slow := &Queue[int]{Limit: func() int { return 4 }, Wait: time.Hour, Send: func(g []int) { groups <- g }}
		for i := range 4 {
			slow.Add(i)
		}
		select {
		case g := <-groups:
			if len(g) != 4 {
				t.Fatalf("full group went as %v", g)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a full group waited for Wait")
		}
	})

	t.Run("a full queue refuses", func(t *testing.T) {
		release := make(chan struct{})
		q := &Queue[int]{MaxQueued: 3, Send: func([]int) { <-release }}
		q.Add(0) // taken by the sender, which then blocks
		for q.Len() != 0 {
			runtime.Gosched()
		}
		for i := 1; i <= 3; i++ {
			if !q.Add(i) {
				t.Fatalf("item %d refused below the bound", i)
			}
		}
		if q.Add(4) {
			t.Fatal("item beyond MaxQueued was taken")
		}
		close(release)
	})

	t.Run("idle senders end", func(t *testing.T) {
		before := runtime.NumGoroutine()
		q := &Queue[int]{Senders: 3, Send: func([]int) {}}
		for i := range 10 {
			q.Add(i)
		}
		deadline := time.Now().Add(linger + 2*time.Second)
		for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		if n := runtime.NumGoroutine(); n > before {
			t.Fatalf("%d goroutines after linger, %d before", n, before)
		}
	})
}
