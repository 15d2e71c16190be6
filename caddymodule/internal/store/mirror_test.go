package store_test

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"strconv"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store"
	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// revocations are the three writes that create rev keys, each with the check that must
// refuse the token it killed (id names the session, the user or the family).
var revocations = []struct {
	name   string
	revoke func(ctx context.Context, s *store.Redis, id string) error
	iat    time.Time // of the token checked afterwards
}{
	{"logout", func(ctx context.Context, s *store.Redis, id string) error {
		return s.RevokeSession(ctx, id, time.Now().Add(time.Hour))
	}, time.Now()},
	{"log out everywhere", func(ctx context.Context, s *store.Redis, id string) error {
		return s.RevokeUser(ctx, id, time.Now(), time.Now().Add(time.Hour))
	}, time.Now().Add(-time.Minute)},
	{"refresh-token reuse", func(ctx context.Context, s *store.Redis, id string) error {
		now := time.Now()
		s.Rotate(ctx, id, "a", "b", now, 0, now.Add(time.Hour))
		s.Rotate(ctx, id, "b", "c", now, 0, now.Add(time.Hour))
		r, err := s.Rotate(ctx, id, "a", "b", now.Add(time.Second), 0, now.Add(time.Hour))
		if err == nil && r.Outcome != store.Reused {
			err = fmt.Errorf("outcome %v, want Reused", r.Outcome)
		}
		return err
	}, time.Now()},
}

// check asks s about a token of session id and user id (one of them is what was revoked).
func check(s *store.Redis, id string, iat time.Time) (bool, error) {
	return s.Revoked(context.Background(), id, id, iat)
}

// eventually polls s until it refuses id's token, failing after d.
func eventually(t *testing.T, s *store.Redis, id string, iat time.Time, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		rev, err := check(s, id, iat)
		if err == nil && rev {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not refused within %s: revoked=%v err=%v", id, d, rev, err)
		}
		time.Sleep(time.Millisecond)
	}
}

func TestRedisMirrorSeesOtherGateways(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	other := openRedis(t, srv.Addr) // another gateway: its own client, same Redis
	for _, r := range revocations {
		t.Run(r.name+" made before the mirror started is loaded by the sync", func(t *testing.T) {
			id := uniq(t)
			if err := r.revoke(ctx, other, id); err != nil {
				t.Fatal(err)
			}
			s, cmds := openCounted(t, srv.Addr)
			waitLive(t, s)
			before := cmds.Load()
			if rev, err := check(s, id, r.iat); err != nil || !rev {
				t.Fatalf("revoked=%v err=%v", rev, err)
			}
			if n := cmds.Load() - before; n != 0 {
				t.Fatalf("the check sent %d commands to Redis, want 0 (answered by the mirror)", n)
			}
		})
		t.Run(r.name+" made while the mirror is live arrives by its publish", func(t *testing.T) {
			s, cmds := openCounted(t, srv.Addr)
			waitLive(t, s)
			id := uniq(t)
			if rev, _ := check(s, id, r.iat); rev {
				t.Fatal("revoked before the revocation")
			}
			before := cmds.Load()
			if err := r.revoke(ctx, other, id); err != nil {
				t.Fatal(err)
			}
			eventually(t, s, id, r.iat, 2*time.Second)
			if n := cmds.Load() - before; n != 0 {
				t.Fatalf("the checks sent %d commands to Redis, want 0 (answered by the mirror)", n)
			}
		})
		t.Run(r.name+" made by this gateway is refused here at once", func(t *testing.T) {
			s, cmds := openCounted(t, srv.Addr)
			waitLive(t, s)
			id := uniq(t)
			if err := r.revoke(ctx, s, id); err != nil {
				t.Fatal(err)
			}
			before := cmds.Load()
			if rev, err := check(s, id, r.iat); err != nil || !rev {
				t.Fatalf("revoked=%v err=%v right after our own write", rev, err)
			}
			if n := cmds.Load() - before; n != 0 {
				t.Fatalf("the check sent %d commands to Redis, want 0", n)
			}
		})
	}
}

func uniq(t *testing.T) string { return fmt.Sprintf("%s-%d", t.Name(), time.Now().UnixNano()) }

func TestRedisMirrorLiveCheckCostsNothing(t *testing.T) {
	srv := testenv.StartRedis(t)
	s, cmds := openCounted(t, srv.Addr)
	ctx := context.Background()
	s.RevokeSession(ctx, "dead", time.Now().Add(time.Hour))
	s.RevokeUser(ctx, "7", time.Now(), time.Now().Add(time.Hour))
	waitLive(t, s)
	before := cmds.Load()
	allocs := testing.AllocsPerRun(1000, func() {
		dead, _ := s.Revoked(ctx, "dead", "1", time.Now())
		user, _ := s.Revoked(ctx, "alive", "7", time.Now().Add(-time.Minute))
		fine, _ := s.Revoked(ctx, "alive", "1", time.Now())
		if !dead || !user || fine {
			t.Fatalf("revoked session %v, revoked user %v, fine token %v", dead, user, fine)
		}
	})
	if n := cmds.Load() - before; n != 0 {
		t.Errorf("3000 live checks sent %d commands to Redis, want 0", n)
	}
	if allocs != 0 {
		t.Errorf("a live check allocates %.1f times, want 0", allocs)
	}
}

// While Redis is away the mirror cannot know what other gateways revoke, so checks fail
// closed; when it returns (with its data or without) the mirror loads what is there and
// hears what comes next.
func TestRedisMirrorFailsClosedWhileRedisIsDownAndResyncs(t *testing.T) {
	for _, c := range []struct {
		name     string
		loseData bool
	}{{"Redis comes back with its data", false}, {"Redis comes back empty", true}} {
		t.Run(c.name, func(t *testing.T) {
			srv := testenv.StartRedis(t)
			ctx := context.Background()
			s := openRedis(t, srv.Addr)
			if err := s.RevokeSession(ctx, "before", time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			waitLive(t, s)
			srv.Stop()
			waitUnavailable(t, s, "before", "1")
			srv.Start(t)

			// Another gateway whose client was made after the restart writes at once,
			// racing the mirror's resync: either the load or the publish brings it.
			other := openRedis(t, srv.Addr)
			if c.loseData {
				if err := other.Ping(ctx); err != nil {
					t.Fatal(err)
				}
				raw, _ := countedClient(t, srv.Addr)
				if err := raw.FlushAll(ctx).Err(); err != nil {
					t.Fatal(err)
				}
			}
			if err := other.RevokeSession(ctx, "after", time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			if err := other.RevokeUser(ctx, "9", time.Now(), time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			waitLive(t, s)
			for _, k := range []struct {
				sid, sub string
				why      string
				// Written by the other gateway: when the mirror was live again before that
				// write, its publish reaches the mirror a moment after the write returns.
				published bool
			}{
				{"after", "1", "a logout made while the mirror was resyncing", true},
				{"x", "9", "a logout-everywhere made while the mirror was resyncing", true},
				// Revocations only ever grow until they expire: the mirror keeps what it
				// knew even when Redis lost it, stricter than Redis, never looser.
				{"before", "1", "a logout made before the outage", false},
			} {
				deadline := time.Now().Add(2 * time.Second)
				for {
					rev, err := s.Revoked(ctx, k.sid, k.sub, time.Now().Add(-time.Minute))
					if err == nil && rev {
						break
					}
					if !k.published || time.Now().After(deadline) {
						t.Errorf("%s: revoked=%v err=%v", k.why, rev, err)
						break
					}
					time.Sleep(time.Millisecond)
				}
			}
			eventuallyAfterRestart := func(id string) {
				if err := other.RevokeSession(ctx, id, time.Now().Add(time.Hour)); err != nil {
					t.Fatal(err)
				}
				eventually(t, s, id, time.Now(), 2*time.Second)
			}
			eventuallyAfterRestart("later")
		})
	}
}

// A frozen Redis (or a partition that resets nothing) closes no connection: only the
// heartbeat's silence tells the mirror it may be missing revocations. Past a second of it
// checks ask Redis (and fail closed); past three the subscription is replaced, and once
// Redis answers again the mirror is current again.
func TestRedisMirrorDistrustsASilentRedis(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s := openRedis(t, srv.Addr)
	other := openRedis(t, srv.Addr)
	if err := s.RevokeSession(ctx, "before", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	waitLive(t, s)
	srv.Pause()
	paused := time.Now()
	waitUnavailable(t, s, "before", "1")
	for time.Since(paused) < 4*time.Second { // past the reconnect, still failing closed
		if _, err := s.Revoked(ctx, "before", "1", time.Now()); !errors.Is(err, store.ErrUnavailable) {
			t.Fatalf("Revoked %s into the freeze: %v, want ErrUnavailable", time.Since(paused), err)
		}
	}
	srv.Resume()
	if err := other.RevokeSession(ctx, "after", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	waitLive(t, s)
	eventually(t, s, "after", time.Now(), 2*time.Second)
	eventually(t, s, "before", time.Now(), 0)
}

// Attack: anyone who may PUBLISH on the Redis server (an ACL user allowed only to publish,
// another application sharing the server) sends invalidations of their own, hoping to shorten
// or cancel a logout in the gateways' mirrors, or to crash or wedge them with garbage. A
// message may only add a revocation; a malformed one changes nothing.
func TestRedisMirrorIgnoresForgedMessages(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s := openRedis(t, srv.Addr)
	raw, _ := countedClient(t, srv.Addr)
	until := time.Now().Add(time.Hour)
	if err := s.RevokeSession(ctx, "victim", until); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if err := s.RevokeUser(ctx, "42", at, until); err != nil {
		t.Fatal(err)
	}
	waitLive(t, s)
	soon := strconv.FormatInt(time.Now().Add(time.Second).UnixMilli(), 10)
	past := strconv.FormatInt(time.Now().Add(-time.Hour).UnixMilli(), 10)
	later := strconv.FormatInt(time.Now().Add(time.Hour).UnixMilli(), 10)
	for _, p := range []string{
		"s 1 " + soon + " victim", // shorten the logout
		"s 1 " + past + " victim", // end it in the past
		"s 1 0 victim",
		"s 1 -1 victim",
		"u 0 " + soon + " 42", // move the logout-everywhere back and shorten it
		"u 1 " + past + " 42",
		"", "s", "u", "s ", "x 1 " + later + " bogus-x", "S 1 " + later + " bogus-S",
		"s 2 " + later + " bogus-value", "s 1 " + later, "s 1 " + later + " ",
		"s one " + later + " bogus-one", "s 1 later bogus-later", "u -5 " + later + " bogus-neg",
		"s 1 99999999999999999999999 bogus-overflow", "u 1 " + later + "\x00 bogus-nul",
		"s\t1\t" + later + "\tbogus-tab", "s  1 " + later + " bogus-double-space",
	} {
		if err := raw.Publish(ctx, "test:rev", p).Err(); err != nil {
			t.Fatal(err)
		}
	}
	// Messages arrive in order: once this one is in, every forgery before it was handled.
	if err := raw.Publish(ctx, "test:rev", "s 1 "+later+" sentinel").Err(); err != nil {
		t.Fatal(err)
	}
	eventually(t, s, "sentinel", time.Now(), 2*time.Second)

	if !s.MirrorLive() {
		t.Fatal("forged messages took the mirror down")
	}
	if rev, err := s.Revoked(ctx, "victim", "1", time.Now()); err != nil || !rev {
		t.Errorf("the logout was cancelled: revoked=%v err=%v", rev, err)
	}
	if rev, err := s.Revoked(ctx, "x", "42", at.Add(-time.Second)); err != nil || !rev {
		t.Errorf("the logout-everywhere was moved back: revoked=%v err=%v", rev, err)
	}
	for _, id := range []string{"bogus-x", "bogus-S", "bogus-value", "bogus-one", "bogus-later",
		"bogus-neg", "bogus-overflow", "bogus-nul", "bogus-tab", "bogus-double-space"} {
		if rev, err := s.Revoked(ctx, id, id, time.Now().Add(-time.Minute)); err != nil || rev {
			t.Errorf("malformed message revoked %s: revoked=%v err=%v", id, rev, err)
		}
	}
}

// A rev key written without a publish (a gateway of an older version during a rolling
// upgrade, an operator's SET) is outside the mirror's contract: RevokedNow, which refresh
// uses, sees it at once, and the mirror's periodic resync picks it up without going down.
func TestRedisMirrorResyncFindsUnpublishedRevocations(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s := openRedis(t, srv.Addr)
	raw, _ := countedClient(t, srv.Addr)
	waitLive(t, s)
	if err := raw.Set(ctx, "test:rev:s:silent", "1", time.Hour).Err(); err != nil {
		t.Fatal(err)
	}
	if rev, err := s.RevokedNow(ctx, "silent", "1", time.Now()); err != nil || !rev {
		t.Fatalf("RevokedNow: revoked=%v err=%v", rev, err)
	}
	store.Resync(s)
	eventually(t, s, "silent", time.Now(), 2*time.Second)
	if !s.MirrorLive() {
		t.Fatal("the resync took the mirror down")
	}
}

// A flood of revocations (real or forged) past the cap does not grow the mirror: it stops
// vouching, checks ask Redis (and refuse what Redis holds), and it comes back once the
// revocations fit.
func TestRedisMirrorOverItsCapAsksRedis(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s, cmds := openCounted(t, srv.Addr)
	other := openRedis(t, srv.Addr)
	waitLive(t, s)
	store.SetMirrorCap(s, 10)
	ids := make([]string, 11)
	for i := range ids {
		ids[i] = "flood-" + strconv.Itoa(i)
		if err := other.RevokeSession(ctx, ids[i], time.Now().Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(2 * time.Second)
	for s.MirrorLive() {
		if time.Now().After(deadline) {
			t.Fatal("the mirror still vouches with more entries than its cap")
		}
		time.Sleep(time.Millisecond)
	}
	before := cmds.Load()
	for _, id := range ids {
		if rev, err := s.Revoked(ctx, id, "1", time.Now()); err != nil || !rev {
			t.Fatalf("%s over the cap: revoked=%v err=%v", id, rev, err)
		}
	}
	if cmds.Load() == before {
		t.Fatal("checks over the cap did not ask Redis")
	}
	store.SetMirrorCap(s, 1000)
	waitLive(t, s)
	before = cmds.Load()
	for _, id := range ids {
		if rev, err := s.Revoked(ctx, id, "1", time.Now()); err != nil || !rev {
			t.Fatalf("%s after the resync: revoked=%v err=%v", id, rev, err)
		}
	}
	if n := cmds.Load() - before; n != 0 {
		t.Fatalf("live again, the checks sent %d commands", n)
	}
}

func TestRedisMirrorCloseStopsItsGoroutines(t *testing.T) {
	for _, c := range []struct {
		name string
		down bool
	}{{"closed while live", false}, {"closed while Redis is down", true}} {
		t.Run(c.name, func(t *testing.T) {
			srv := testenv.StartRedis(t)
			client, _ := countedClient(t, srv.Addr)
			if err := client.Ping(context.Background()).Err(); err != nil {
				t.Fatal(err)
			}
			baseline := runtime.NumGoroutine()
			s := store.NewRedis(client, "test:")
			if err := s.RevokeSession(context.Background(), "dead", time.Now().Add(time.Hour)); err != nil {
				t.Fatal(err)
			}
			waitLive(t, s)
			if c.down {
				srv.Stop()
				waitUnavailable(t, s, "dead", "1")
			}
			s.Close()
			deadline := time.Now().Add(5 * time.Second)
			for runtime.NumGoroutine() > baseline {
				if time.Now().After(deadline) {
					buf := make([]byte, 1<<16)
					t.Fatalf("%d goroutines after Close, %d before the store:\n%s",
						runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
				}
				time.Sleep(10 * time.Millisecond)
			}
			if s.MirrorLive() {
				t.Fatal("a closed mirror says it is live")
			}
		})
	}
}

func BenchmarkRedisRevokedMirror(b *testing.B) {
	srv := testenv.StartRedis(b)
	s := openRedis(b, srv.Addr)
	ctx := context.Background()
	s.RevokeUser(ctx, "7", time.Now(), time.Now().Add(time.Hour))
	waitLive(b, s)
	iat := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Revoked(ctx, "sid", "7", iat); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRedisRevokedMGET is the same check asking Redis: what the mirror saves.
func BenchmarkRedisRevokedMGET(b *testing.B) {
	srv := testenv.StartRedis(b)
	c, _ := countedClient(b, srv.Addr)
	s := store.NewRedisUnmirrored(c, "test:")
	ctx := context.Background()
	s.RevokeUser(ctx, "7", time.Now(), time.Now().Add(time.Hour))
	iat := time.Now()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.Revoked(ctx, "sid", "7", iat); err != nil {
			b.Fatal(err)
		}
	}
}
