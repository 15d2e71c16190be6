package location_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location/storetest"
)

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) location.Store { return location.NewMemory() })
}

func TestMemoryRefreshesDoNotPileUp(t *testing.T) {
	// A NAT phone refreshes every 30 s for an hour-long binding: 120 refreshes must leave
	// one binding that expires once, at its last expiry, and nothing for Expire before it.
	s := location.NewMemory()
	ctx := context.Background()
	t0 := time.Unix(1_900_000_000, 0)
	var last time.Time
	for i := range 120 {
		now := t0.Add(time.Duration(i) * 30 * time.Second)
		last = now.Add(time.Hour)
		b := location.Binding{Contact: "sip:201@10.0.0.1", ExpiresAt: last, CSeq: uint32(i)}
		if _, err := s.Update(ctx, "201@pbx", now, func([]location.Binding) ([]location.Binding, error) {
			return []location.Binding{b}, nil
		}); err != nil {
			t.Fatal(err)
		}
		if gone, _ := s.Expire(ctx, now, 0); len(gone) != 0 {
			t.Fatalf("refresh %d: expired %v", i, gone)
		}
	}
	if gone, _ := s.Expire(ctx, last.Add(-time.Millisecond), 0); len(gone) != 0 {
		t.Fatalf("expired before its last expiry: %v", gone)
	}
	gone, _ := s.Expire(ctx, last, 0)
	if len(gone) != 1 || gone[0].CSeq != 119 {
		t.Fatalf("expired %+v, want the last refresh once", gone)
	}
}

func BenchmarkMemoryUpdate(b *testing.B) { benchUpdate(b, location.NewMemory()) }

func BenchmarkMemoryUpdateParallel(b *testing.B) { benchUpdateParallel(b, location.NewMemory()) }

func BenchmarkMemoryUpdateManyAORs(b *testing.B) { benchUpdateMany(b, location.NewMemory()) }

func BenchmarkMemoryUpdateManyAORsParallel(b *testing.B) {
	benchUpdateManyParallel(b, location.NewMemory())
}

func BenchmarkMemoryLookup(b *testing.B) { benchLookup(b, location.NewMemory()) }

func BenchmarkMemoryUseNonce(b *testing.B) { benchUseNonce(b, location.NewMemory()) }

func BenchmarkMemoryUseNonceFirst(b *testing.B) { benchUseNonceFirst(b, location.NewMemory()) }

func BenchmarkMemoryExpire(b *testing.B) { benchExpire(b, location.NewMemory()) }

// benchUpdate refreshes one binding in each of 1000 AORs in turn, as REGISTER refreshes do.
func benchUpdate(b *testing.B, s location.Store) {
	ctx := context.Background()
	now := time.Now()
	aors := make([]string, 1000)
	for i := range aors {
		aors[i] = fmt.Sprintf("%d@pbx", i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		aor := aors[i%len(aors)]
		_, err := s.Update(ctx, aor, now, func(cur []location.Binding) ([]location.Binding, error) {
			return []location.Binding{{Contact: "sip:" + aor, ExpiresAt: now.Add(time.Hour), CSeq: uint32(i)}}, nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}

func benchUpdateParallel(b *testing.B, s location.Store) {
	ctx := context.Background()
	now := time.Now()
	b.ReportAllocs()
	var seq atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			aor := fmt.Sprintf("%d@pbx", seq.Add(1)%1000)
			_, err := s.Update(ctx, aor, now, func(cur []location.Binding) ([]location.Binding, error) {
				return []location.Binding{{Contact: "sip:" + aor, ExpiresAt: now.Add(time.Hour)}}, nil
			})
			if err != nil {
				b.Error(err)
				return
			}
		}
	})
}

// manyAORs is the population of the many-AOR benchmarks: the 20,000 users of the load
// test, each with one binding.
const manyAORs = 20_000

// registerMany stores one binding in each of manyAORs AORs at t0 and returns the AORs in a
// shuffled order: refreshes then reach the table in no particular memory order, as phones
// do, instead of walking it the way it was filled.
func registerMany(b *testing.B, s location.Store, t0 time.Time) []string {
	ctx := context.Background()
	aors := make([]string, manyAORs)
	for i := range aors {
		aor := fmt.Sprintf("%d@pbx.example.com", 100_000+i)
		aors[i] = aor
		bind := location.Binding{
			Contact: "sip:" + aor[:6] + "@192.0.2." + fmt.Sprint(i%250) + ":5060;transport=udp", ExpiresAt: t0.Add(time.Hour),
			Granted: 3600, AuthAt: t0, UpdatedAt: t0, CallID: fmt.Sprintf("reg-%d-bench", i), CSeq: 1,
			Source: "192.0.2.1:5060", Transport: "udp", UserAgent: "bench/1.0", DisplayName: "User " + aor[:6],
		}
		if _, err := s.Update(ctx, aor, t0, func([]location.Binding) ([]location.Binding, error) {
			return []location.Binding{bind}, nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	r := rand.New(rand.NewPCG(1, 2))
	r.Shuffle(len(aors), func(i, j int) { aors[i], aors[j] = aors[j], aors[i] })
	return aors
}

// refresh is a re-REGISTER of the AOR's one binding: a new CSeq, granted another hour.
func refresh(now time.Time) func([]location.Binding) ([]location.Binding, error) {
	return func(cur []location.Binding) ([]location.Binding, error) {
		if len(cur) != 1 {
			return nil, fmt.Errorf("%d bindings, want 1", len(cur))
		}
		cur[0].ExpiresAt, cur[0].AuthAt, cur[0].UpdatedAt = now.Add(time.Hour), now, now
		cur[0].CSeq++
		return cur, nil
	}
}

// manyStep is how far the clock moves per refresh in the many-AOR benchmarks: 10,000
// REGISTERs a second, near the 12,000-18,000/s of the profiled load test, so each AOR is
// refreshed every 2 s and its expiry moves on each time.
const manyStep = 100 * time.Microsecond

// benchUpdateMany refreshes manyAORs AORs in turn, the clock moving on as under load.
func benchUpdateMany(b *testing.B, s location.Store) {
	ctx := context.Background()
	t0 := time.Unix(1_900_000_000, 0)
	aors := registerMany(b, s, t0)
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		now := t0.Add(time.Duration(i) * manyStep)
		if _, err := s.Update(ctx, aors[i%len(aors)], now, refresh(now)); err != nil {
			b.Fatal(err)
		}
	}
}

func benchUpdateManyParallel(b *testing.B, s location.Store) {
	ctx := context.Background()
	t0 := time.Unix(1_900_000_000, 0)
	aors := registerMany(b, s, t0)
	b.ReportAllocs()
	var seq atomic.Int64
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := seq.Add(1)
			now := t0.Add(time.Duration(i) * manyStep)
			if _, err := s.Update(ctx, aors[i%int64(len(aors))], now, refresh(now)); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func benchLookup(b *testing.B, s location.Store) {
	ctx := context.Background()
	now := time.Now()
	_, err := s.Update(ctx, "201@pbx", now, func([]location.Binding) ([]location.Binding, error) {
		return []location.Binding{
			{Contact: "sip:201@10.0.0.1", ExpiresAt: now.Add(time.Hour)},
			{Contact: "sip:201@10.0.0.2", ExpiresAt: now.Add(time.Hour)},
		}, nil
	})
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if bs, err := s.Lookup(ctx, "201@pbx", now); err != nil || len(bs) != 2 {
			b.Fatal(bs, err)
		}
	}
}

// benchUseNonce counts up on 1000 nonces, as authenticated REGISTERs do.
func benchUseNonce(b *testing.B, s location.Store) {
	ctx := context.Background()
	prefix := fmt.Sprintf("bench-%d-", time.Now().UnixNano())
	nonces := make([]string, 1000)
	for i := range nonces {
		nonces[i] = prefix + fmt.Sprint(i)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := s.UseNonce(ctx, location.Count{Nonce: nonces[i%len(nonces)], NC: uint64(1 + i/len(nonces)), TTL: time.Minute}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// benchUseNonceFirst is each nonce's first use with nc 1, as phones answer challenges.
func benchUseNonceFirst(b *testing.B, s location.Store) {
	ctx := context.Background()
	prefix := fmt.Sprintf("bench-first-%d-", time.Now().UnixNano())
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if err := s.UseNonce(ctx, location.Count{Nonce: prefix + strconv.Itoa(i), NC: 1, TTL: time.Minute}); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// benchExpire measures a sweep that finds one due binding among many live ones: the cost
// must not grow with the live ones (an index, not a scan).
func benchExpire(b *testing.B, s location.Store) {
	ctx := context.Background()
	t0 := time.Unix(1_900_000_000, 0)
	for i := range 10_000 {
		aor := fmt.Sprintf("live-%d@pbx", i)
		if _, err := s.Update(ctx, aor, t0, func([]location.Binding) ([]location.Binding, error) {
			return []location.Binding{{Contact: "sip:" + aor, ExpiresAt: t0.Add(100 * 24 * time.Hour)}}, nil
		}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		at := t0.Add(time.Duration(i) * time.Second)
		if _, err := s.Update(ctx, "due@pbx", at, func([]location.Binding) ([]location.Binding, error) {
			return []location.Binding{{Contact: "sip:due", ExpiresAt: at}}, nil
		}); err != nil {
			b.Fatal(err)
		}
		if gone, err := s.Expire(ctx, at, 100); err != nil || len(gone) != 1 {
			b.Fatal(gone, err)
		}
	}
}

func TestMemoryBansConformance(t *testing.T) {
	storetest.RunBans(t, func(*testing.T) location.Bans { return location.NewMemoryBans(nil) })
}
