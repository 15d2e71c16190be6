package location

import (
	"sync"
	"testing"
)

func TestTurnsRunOneAtATimeInOrder(t *testing.T) {
	tr := newTurns()
	var order []int
	var pending []func()
	for i := range 5 {
		tr.take("a@d", func() {
			order = append(order, i)
			pending = append(pending, func() { tr.done("a@d") })
		})
	}
	ran := false
	tr.take("b@d", func() { ran = true; tr.done("b@d") }) // another AOR does not wait
	if !ran || len(order) != 1 || tr.running() != 1 {
		t.Fatalf("after the takes: order %v, b ran %v, %d running", order, ran, tr.running())
	}
	for len(pending) > 0 {
		next := pending[0]
		pending = pending[1:]
		next()
	}
	if len(order) != 5 || order[0] != 0 || order[4] != 4 || tr.running() != 0 {
		t.Fatalf("order %v, %d running", order, tr.running())
	}
	for i := range order {
		if order[i] != i {
			t.Fatalf("order %v", order)
		}
	}
}

func TestTurnsUnderConcurrency(t *testing.T) {
	tr := newTurns()
	var mu sync.Mutex
	inside := map[string]int{}
	var wg sync.WaitGroup
	for i := range 64 {
		aor := []string{"a@d", "b@d", "c@d"}[i%3]
		wg.Add(1)
		go tr.take(aor, func() {
			mu.Lock()
			inside[aor]++
			if inside[aor] > 1 {
				t.Errorf("%s: two updates at once", aor)
			}
			mu.Unlock()
			go func() { // ends on another goroutine, as a Redis answer does
				mu.Lock()
				inside[aor]--
				mu.Unlock()
				tr.done(aor)
				wg.Done()
			}()
		})
	}
	wg.Wait()
	if n := tr.running(); n != 0 {
		t.Fatalf("%d AORs still running", n)
	}
}
