package location

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestNonceCounters(t *testing.T) {
	n := newNonceCounters()
	t0 := time.Unix(1_900_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	use := func(nonce string, nc uint64, ttl, when time.Duration) error { return n.use(nonce, nc, ttl, at(when)) }

	if err := use("a", 1, time.Minute, 0); err != nil {
		t.Fatal(err)
	}
	if err := use("a", 1, time.Minute, time.Second); !errors.Is(err, ErrReplay) {
		t.Fatalf("same nc again: %v, want ErrReplay", err)
	}
	if err := use("a", 2, time.Minute, 2*time.Second); err != nil {
		t.Fatalf("higher nc: %v", err)
	}
	// The count renewed at 2 s lives until 62 s, not 60 s.
	if err := use("a", 2, time.Minute, 61*time.Second); !errors.Is(err, ErrReplay) {
		t.Fatalf("renewed count forgotten early: %v", err)
	}
	if err := use("a", 1, time.Minute, 62*time.Second); err != nil {
		t.Fatalf("after its TTL: %v", err)
	}

	// A short TTL queued behind a long one: swept late, but never used after its end.
	if err := use("long", 1, time.Hour, 100*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := use("short", 5, time.Second, 100*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := use("short", 1, time.Second, 102*time.Second); err != nil {
		t.Fatalf("short TTL past its end, still queued: %v", err)
	}
	if err := use("long", 1, time.Hour, 200*time.Second); !errors.Is(err, ErrReplay) {
		t.Fatalf("long TTL forgotten: %v", err)
	}

	// Sub-millisecond TTLs count as one millisecond.
	if err := use("tiny", 1, 0, 300*time.Second); err != nil {
		t.Fatal(err)
	}
	if err := use("tiny", 1, 0, 300*time.Second+500*time.Microsecond); !errors.Is(err, ErrReplay) {
		t.Fatalf("within the millisecond: %v", err)
	}
}

func TestNonceCountersForgetAndReclaim(t *testing.T) {
	n := newNonceCounters()
	t0 := time.Unix(1_900_000_000, 0)
	const many = 50_000
	for i := range many {
		if err := n.use(fmt.Sprintf("nonce-%d", i), 1, time.Minute, t0.Add(time.Duration(i)*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	if c, q := n.size(); c != many || q != many {
		t.Fatalf("holding %d counters, %d queued; want %d each", c, q, many)
	}
	// Long after every TTL: one call sweeps them all and the queue's space is reused.
	if err := n.use("late", 1, time.Minute, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if c, q := n.size(); c != 1 || q != 1 {
		t.Fatalf("after the TTLs: %d counters, %d queued; want 1 and 1", c, q)
	}
	if cap(n.queue) > 2*many {
		t.Fatalf("queue capacity %d: its space is not reused", cap(n.queue))
	}
	// And a steady stream keeps the queue near what one TTL holds.
	n = newNonceCounters()
	for i := range 200_000 {
		now := t0.Add(2*time.Hour + time.Duration(i)*time.Millisecond)
		if err := n.use(fmt.Sprintf("s-%d", i), 1, time.Second, now); err != nil {
			t.Fatal(err)
		}
	}
	if c, q := n.size(); c > 1001 || q > 1001 {
		t.Fatalf("steady stream with a 1 s TTL at 1000/s: %d counters, %d queued", c, q)
	}
	if cap(n.queue) > 8192 {
		t.Fatalf("queue capacity %d for about 1000 live entries", cap(n.queue))
	}
}

func BenchmarkNonceCountersSteady(b *testing.B) {
	// Six minutes of nonces at 20,000/s live at once, as at the bench's highest rates.
	n := newNonceCounters()
	t0 := time.Unix(1_900_000_000, 0)
	const live = 20_000 * 360
	step := 360 * time.Second / live
	for i := range live {
		n.use(fmt.Sprintf("warm-%d", i), 1, 360*time.Second, t0.Add(time.Duration(i)*step))
	}
	keys := make([]string, 1<<16)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench-nonce-%08d-abcdefghijklmnop", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		n.use(keys[i&(len(keys)-1)], uint64(i+1), 360*time.Second, t0.Add(time.Duration(live+i)*step))
		i++
	}
}
