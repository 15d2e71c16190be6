package caddymodule

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store"
	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// A config reload keeps the pooled Redis store and its loaded mirror (no resync, no window
// of checks asking Redis); the last config to let go of it stops the mirror's goroutines and
// closes the client.
func TestRedisStoreMirrorLivesAsLongAsThePool(t *testing.T) {
	srv := testenv.StartRedis(t)
	baseline := runtime.NumGoroutine()
	cfg := &StoreConfig{Engine: "redis", URL: srv.URL(), Prefix: "pooltest:"}
	old, key, err := cfg.open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	s := old.(*store.Redis)
	deadline := time.Now().Add(10 * time.Second)
	for !s.MirrorLive() {
		if time.Now().After(deadline) {
			t.Fatal("the mirror did not go live")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if redisMirrorsLive() != 1 {
		t.Fatal("softphone_store_mirror_live reads 0 with a live mirror")
	}

	reloaded, _, err := cfg.open(t.TempDir()) // the new config of a reload
	if err != nil {
		t.Fatal(err)
	}
	if reloaded != old {
		t.Fatal("a reload made a second Redis store")
	}
	if _, err := storePool.Delete(key); err != nil { // the old config's Cleanup
		t.Fatal(err)
	}
	if !s.MirrorLive() {
		t.Fatal("the old config's cleanup stopped the mirror the new config uses")
	}

	if _, err := storePool.Delete(key); err != nil { // the last user goes
		t.Fatal(err)
	}
	if s.MirrorLive() || redisMirrorsLive() != 0 {
		t.Fatal("the mirror outlived the last config using it")
	}
	if err := s.Ping(context.Background()); !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Ping after the last cleanup: %v, want the closed client's ErrUnavailable", err)
	}
	deadline = time.Now().Add(5 * time.Second)
	for runtime.NumGoroutine() > baseline {
		if time.Now().After(deadline) {
			t.Fatalf("%d goroutines after the last cleanup, %d before the store", runtime.NumGoroutine(), baseline)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
