package store_test

import (
	"context"
	"errors"
	"path/filepath"
	"sync/atomic"
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

// openRedis is a mirrored Redis store on its own client, closed (mirror first) when the test
// ends. It does not wait for the mirror: see waitLive.
func openRedis(t testing.TB, addr string) *store.Redis {
	t.Helper()
	s, _ := openCounted(t, addr)
	return s
}

// openCounted is openRedis and the count of commands its client has sent.
func openCounted(t testing.TB, addr string) (*store.Redis, *atomic.Int64) {
	t.Helper()
	c, n := countedClient(t, addr)
	s := store.NewRedis(c, "test:")
	t.Cleanup(func() { s.Close() })
	return s, n
}

func countedClient(t testing.TB, addr string) (*redis.Client, *atomic.Int64) {
	t.Helper()
	o, err := store.RedisOptions("redis://" + addr + "/0")
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(o)
	n := new(atomic.Int64)
	c.AddHook(commandCounter{n})
	t.Cleanup(func() { c.Close() })
	return c, n
}

// commandCounter counts every command a client sends, piped or not.
type commandCounter struct{ n *atomic.Int64 }

func (h commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.n.Add(1)
		return next(ctx, cmd)
	}
}

func (h commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.n.Add(int64(len(cmds)))
		return next(ctx, cmds)
	}
}

// waitLive waits until s answers checks from its mirror.
func waitLive(t testing.TB, s *store.Redis) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !s.MirrorLive() {
		if time.Now().After(deadline) {
			t.Fatal("the mirror did not go live within 10s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// The suite runs with the mirror live, so Revoked answers from it (and this process's writes
// must reach it at once), and without a mirror, the path every check takes while it is not.
func TestRedisConformance(t *testing.T) {
	srv := testenv.StartRedis(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		s := openRedis(t, srv.Addr)
		waitLive(t, s)
		return s
	})
}

func TestRedisConformanceWithoutMirror(t *testing.T) {
	srv := testenv.StartRedis(t)
	storetest.Run(t, func(t *testing.T) store.Store {
		c, _ := countedClient(t, srv.Addr)
		return store.NewRedisUnmirrored(c, "test:")
	})
}

func TestRedisDownFailsFastAndRecovers(t *testing.T) {
	srv := testenv.StartRedis(t)
	s := openRedis(t, srv.Addr)
	ctx := context.Background()
	if err := s.RevokeSession(ctx, "kept", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	waitLive(t, s)
	srv.Stop()
	start := time.Now()
	// The mirror may answer until it notices (at once on a closed connection, within its
	// one-second heartbeat otherwise); then every check asks the dead Redis.
	waitUnavailable(t, s, "kept", "1")
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

// waitUnavailable waits until checking sid, sub fails with ErrUnavailable, Redis having
// just died or frozen. The mirror may answer (and must answer right: sid is revoked) only
// while it has heard from Redis within its one-second heartbeat window; a check begun later
// than that (plus slack for reading Redis's last pong late on a busy machine) must not come
// from it.
func waitUnavailable(t *testing.T, s *store.Redis, sid, sub string) {
	t.Helper()
	start := time.Now()
	for {
		began := time.Now()
		rev, err := s.Revoked(context.Background(), sid, sub, time.Now())
		if errors.Is(err, store.ErrUnavailable) {
			break
		}
		if err != nil || !rev {
			t.Fatalf("Revoked with Redis away: %v %v, want revoked or ErrUnavailable", rev, err)
		}
		if d := began.Sub(start); d > 1500*time.Millisecond {
			t.Fatalf("the mirror still answered a check begun %s after Redis went away", d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if s.MirrorLive() {
		t.Fatal("a check asked Redis but MirrorLive says the mirror is live")
	}
}
