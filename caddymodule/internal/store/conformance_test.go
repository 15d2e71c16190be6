package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store"
	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store/storetest"
	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

func TestMemoryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store { return store.NewMemory(nil) })
}

func TestJournaledMemoryConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		m, err := store.OpenMemory(filepath.Join(t.TempDir(), "state.journal"), nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { m.Close() })
		return m
	})
}

func openRedis(t *testing.T, addr string) *store.Redis {
	t.Helper()
	o, err := store.RedisOptions("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	t.Cleanup(func() { c.Close() })
	return store.NewRedis(c, "test:")
}

func TestRedisConformance(t *testing.T) {
	srv := testenv.StartRedis(t)
	storetest.Run(t, func(t *testing.T) store.Store { return openRedis(t, srv.Addr) })
}

// Two gateways share one Redis: what one revokes, the other refuses at once.
func TestRedisIsSharedBetweenClients(t *testing.T) {
	srv := testenv.StartRedis(t)
	a, b := openRedis(t, srv.Addr), openRedis(t, srv.Addr)
	ctx := context.Background()
	if err := a.RevokeSession(ctx, "sid-1", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if rev, err := b.Revoked(ctx, "sid-1", "1", time.Now()); err != nil || !rev {
		t.Fatalf("b does not see a's revocation: %v %v", rev, err)
	}
}

func TestRedisDownFailsFastAndRecovers(t *testing.T) {
	srv := testenv.StartRedis(t)
	s := openRedis(t, srv.Addr)
	ctx := context.Background()
	if err := s.RevokeSession(ctx, "kept", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	start := time.Now()
	_, err := s.Revoked(ctx, "kept", "1", time.Now())
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Revoked with Redis down: %v, want ErrUnavailable", err)
	}
	for name, err := range map[string]error{
		"RevokeSession": s.RevokeSession(ctx, "x", time.Now().Add(time.Hour)),
		"RevokeUser":    s.RevokeUser(ctx, "1", time.Now(), time.Now().Add(time.Hour)),
		"ClearFailures": s.ClearFailures(ctx, "k"),
		"Ping":          s.Ping(ctx),
	} {
		if !errors.Is(err, store.ErrUnavailable) {
			t.Errorf("%s with Redis down: %v", name, err)
		}
	}
	if _, _, err := s.AddFailure(ctx, "k", time.Minute); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("AddFailure with Redis down: %v", err)
	}
	if _, err := s.Rotate(ctx, "f", "a", "b", time.Now(), time.Second, time.Now().Add(time.Hour)); !errors.Is(err, store.ErrUnavailable) {
		t.Errorf("Rotate with Redis down: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("failing took %s: too slow for a request path", d)
	}
	// Redis returns (same data dir, append-only file): the client recovers by itself and
	// nothing that was stored is lost.
	srv.Start(t)
	deadline := time.Now().Add(5 * time.Second)
	for s.Ping(ctx) != nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if rev, err := s.SessionRevoked(ctx, "kept"); err != nil || !rev {
		t.Fatalf("after restart: revoked=%v err=%v", rev, err)
	}
}
