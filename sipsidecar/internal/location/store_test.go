package location_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location/storetest"
)

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(*testing.T) location.Store { return location.NewMemory() })
}

var prefixes = 0

func TestRedisConformance(t *testing.T) {
	srv := testenv.StartRedis(t)
	storetest.Run(t, func(t *testing.T) location.Store {
		prefixes++
		s, err := location.OpenRedis(srv.URL(), fmt.Sprintf("t%d:", prefixes))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestRedisBindingsSurviveRestartsAndOutages(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s, err := location.OpenRedis(srv.URL(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	now := time.Now()
	b := location.Binding{AOR: "201@pbx", Contact: "sip:201@10.0.0.1", ExpiresAt: now.Add(time.Hour)}
	if _, err := s.Update(ctx, b.AOR, now, func([]location.Binding) ([]location.Binding, error) { return []location.Binding{b}, nil }); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	start := time.Now()
	_, err = s.Update(ctx, b.AOR, now, func(cur []location.Binding) ([]location.Binding, error) { return cur, nil })
	if !errors.Is(err, location.ErrUnavailable) {
		t.Fatalf("update with redis down: %v", err)
	}
	if _, err := s.Lookup(ctx, b.AOR, now); !errors.Is(err, location.ErrUnavailable) {
		t.Fatalf("lookup with redis down: %v", err)
	}
	if err := s.UseNonce(ctx, "n", 1, time.Minute); !errors.Is(err, location.ErrUnavailable) {
		t.Fatalf("nonce with redis down: %v", err)
	}
	if err := s.Ping(ctx); !errors.Is(err, location.ErrUnavailable) {
		t.Fatalf("ping with redis down: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("failing took %s", d)
	}

	// Redis comes back on the same data: the same client recovers, the binding is there,
	// and a brand-new client (a restarted sidecar) sees it too.
	srv.Start(t)
	deadline := time.Now().Add(5 * time.Second)
	for s.Ping(ctx) != nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	s2, err := location.OpenRedis(srv.URL(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for _, st := range []location.Store{s, s2} {
		got, err := st.Lookup(ctx, b.AOR, now)
		if err != nil || len(got) != 1 || got[0].Contact != b.Contact {
			t.Fatalf("after restart: %v %v", got, err)
		}
	}
}

func BenchmarkMemoryUpdate(b *testing.B) { benchUpdate(b, location.NewMemory()) }

func BenchmarkRedisUpdate(b *testing.B) {
	srv := testenv.StartRedis(b)
	s, err := location.OpenRedis(srv.URL(), "")
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	benchUpdate(b, s)
}

func benchUpdate(b *testing.B, s location.Store) {
	ctx := context.Background()
	now := time.Now()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		i++
		aor := fmt.Sprintf("%d@pbx", i%1000)
		_, err := s.Update(ctx, aor, now, func(cur []location.Binding) ([]location.Binding, error) {
			return []location.Binding{{Contact: "sip:" + aor, ExpiresAt: now.Add(time.Hour), CSeq: uint32(i)}}, nil
		})
		if err != nil {
			b.Fatal(err)
		}
	}
}
