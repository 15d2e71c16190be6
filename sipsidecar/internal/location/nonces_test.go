package location

import (
	"errors"
	"fmt"
	"testing"
	"time"
)

func TestNonceCounters(t *testing.T) {
	// The same rules whether a nonce's count lives in the map (no serial: another sidecar's
	// nonce) or in the ring (this process's own).
	for _, ring := range []bool{false, true} {
		t.Run(map[bool]string{false: "map", true: "ring"}[ring], func(t *testing.T) {
			n := newNonceCounters()
			t0 := time.Unix(1_900_000_000, 0)
			at := func(d time.Duration) time.Time { return t0.Add(d) }
			serials := map[string]uint32{}
			use := func(nonce string, nc uint64, ttl, when time.Duration) error {
				if ring && serials[nonce] == 0 {
					serials[nonce] = uint32(len(serials) + 1)
				}
				return n.use(nonce, serials[nonce], nc, ttl, at(when))
			}
			check := func() {
				t.Helper()
				if c, _, r := n.size(); ring && (c != 0 || r == 0) || !ring && r != 0 {
					t.Fatalf("%d counters in the map, ring of %d", c, r)
				}
			}

			if err := use("a", 1, time.Minute, 0); err != nil {
				t.Fatal(err)
			}
			if err := use("a", 1, time.Minute, time.Second); !errors.Is(err, ErrReplay) {
				t.Fatalf("same nc again: %v, want ErrReplay", err)
			}
			if n.seen("a", serials["a"], 2, at(time.Second)) || !n.seen("a", serials["a"], 1, at(time.Second)) {
				t.Fatal("seen disagrees with use")
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
			check()

			// A count too large for the ring moves to the map and is still the one that counts.
			if err := use("big", 5, time.Hour, 400*time.Second); err != nil {
				t.Fatal(err)
			}
			if err := use("big", 1<<33, time.Hour, 401*time.Second); err != nil {
				t.Fatal(err)
			}
			for _, nc := range []uint64{6, 1 << 32, 1 << 33} {
				if err := use("big", nc, time.Hour, 402*time.Second); !errors.Is(err, ErrReplay) {
					t.Fatalf("nc %d below the large count taken: %v", nc, err)
				}
				if !n.seen("big", serials["big"], nc, at(402*time.Second)) {
					t.Fatalf("seen: nc %d below the large count taken", nc)
				}
			}
			if err := use("big", 1<<33+1, time.Hour, 403*time.Second); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestNonceCountersRing(t *testing.T) {
	t0 := time.Unix(1_900_000_000, 0)
	nonce := func(s uint32) string { return fmt.Sprintf("nonce-%d", s) }

	t.Run("grows and keeps every live count", func(t *testing.T) {
		n := newNonceCounters()
		const many = 3*firstRing + 17
		for s := uint32(1); s <= many; s++ {
			if err := n.use(nonce(s), s, 1, time.Hour, t0); err != nil {
				t.Fatal(err)
			}
		}
		if c, _, r := n.size(); c != 0 || r != 4*firstRing {
			t.Fatalf("%d live counters: %d in the map, ring of %d; want 0 and %d", many, c, r, 4*firstRing)
		}
		for s := uint32(1); s <= many; s++ {
			if err := n.use(nonce(s), s, 1, time.Hour, t0.Add(time.Minute)); !errors.Is(err, ErrReplay) {
				t.Fatalf("serial %d replayed after the ring grew: %v", s, err)
			}
		}
	})

	t.Run("reuses the slots of ended counts", func(t *testing.T) {
		n := newNonceCounters()
		// 1,000 a second with a 1 s TTL, for 100 s: never more than 1,001 live.
		for i := range 100_000 {
			s := uint32(i + 1)
			if err := n.use(nonce(s), s, 1, time.Second, t0.Add(time.Duration(i)*time.Millisecond)); err != nil {
				t.Fatal(err)
			}
		}
		if c, q, r := n.size(); c != 0 || q != 0 || r != firstRing {
			t.Fatalf("map %d, queue %d, ring %d; want 0, 0, %d", c, q, r, firstRing)
		}
	})

	t.Run("full, the map takes the rest", func(t *testing.T) {
		n := newNonceCounters()
		n.maxRing = 8
		for s := uint32(1); s <= 20; s++ {
			if err := n.use(nonce(s), s, 1, time.Minute, t0); err != nil {
				t.Fatal(err)
			}
		}
		if c, _, r := n.size(); c != 12 || r != 8 {
			t.Fatalf("map %d, ring %d; want 12 and 8", c, r)
		}
		// Later the slots free up; the counts the map holds are still found there first.
		later := t0.Add(30 * time.Second)
		for s := uint32(1); s <= 8; s++ {
			if err := n.use(nonce(s), s, 1, time.Minute, later); !errors.Is(err, ErrReplay) {
				t.Fatalf("serial %d: %v", s, err)
			}
		}
		for s := uint32(9); s <= 20; s++ {
			n.ring[int(s)&7] = serialCounter{} // as if its slot's counter had ended
			if err := n.use(nonce(s), s, 1, time.Minute, later); !errors.Is(err, ErrReplay) {
				t.Fatalf("serial %d, counted in the map, its slot free: %v", s, err)
			}
			if !n.seen(nonce(s), s, 1, later) {
				t.Fatalf("seen: serial %d", s)
			}
		}
	})

	t.Run("a serial with another nonce is that nonce's", func(t *testing.T) {
		// Serial 0 is no serial: the map, by the nonce.
		n := newNonceCounters()
		if err := n.use("x", 0, 1, time.Minute, t0); err != nil {
			t.Fatal(err)
		}
		if err := n.use("x", 0, 1, time.Minute, t0); !errors.Is(err, ErrReplay) {
			t.Fatal(err)
		}
		if c, _, r := n.size(); c != 1 || r != 0 {
			t.Fatalf("map %d, ring %d", c, r)
		}
	})
}

func TestNonceCountersForgetAndReclaim(t *testing.T) {
	n := newNonceCounters()
	t0 := time.Unix(1_900_000_000, 0)
	const many = 50_000
	for i := range many {
		if err := n.use(fmt.Sprintf("nonce-%d", i), 0, 1, time.Minute, t0.Add(time.Duration(i)*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
	}
	if c, q, _ := n.size(); c != many || q != many {
		t.Fatalf("holding %d counters, %d queued; want %d each", c, q, many)
	}
	// Long after every TTL: one call sweeps them all and the queue's space is reused.
	if err := n.use("late", 0, 1, time.Minute, t0.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if c, q, _ := n.size(); c != 1 || q != 1 {
		t.Fatalf("after the TTLs: %d counters, %d queued; want 1 and 1", c, q)
	}
	if cap(n.queue) > 2*many {
		t.Fatalf("queue capacity %d: its space is not reused", cap(n.queue))
	}
	// And a steady stream keeps the queue near what one TTL holds.
	n = newNonceCounters()
	for i := range 200_000 {
		now := t0.Add(2*time.Hour + time.Duration(i)*time.Millisecond)
		if err := n.use(fmt.Sprintf("s-%d", i), 0, 1, time.Second, now); err != nil {
			t.Fatal(err)
		}
	}
	if c, q, _ := n.size(); c > 1001 || q > 1001 {
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
		n.use(fmt.Sprintf("warm-%d", i), 0, 1, 360*time.Second, t0.Add(time.Duration(i)*step))
	}
	keys := make([]string, 1<<16)
	for i := range keys {
		keys[i] = fmt.Sprintf("bench-nonce-%08d-abcdefghijklmnop", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	i := 0
	for b.Loop() {
		n.use(keys[i&(len(keys)-1)], 0, uint64(i+1), 360*time.Second, t0.Add(time.Duration(live+i)*step))
		i++
	}
}
