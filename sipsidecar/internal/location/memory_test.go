package location_test

import (
	"context"
	"fmt"
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

func BenchmarkMemoryLookup(b *testing.B) { benchLookup(b, location.NewMemory()) }

func BenchmarkMemoryUseNonce(b *testing.B) { benchUseNonce(b, location.NewMemory()) }

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
		if err := s.UseNonce(ctx, nonces[i%len(nonces)], uint64(1+i/len(nonces)), time.Minute); err != nil {
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
