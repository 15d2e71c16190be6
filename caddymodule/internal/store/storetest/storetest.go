// Package storetest is the one conformance suite every store.Store implementation passes.
package storetest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/caddymodule/internal/store"
)

// Run checks s's behaviour. Expiry is checked with real time and short lifetimes, because a
// Redis server keeps its own clock.
func Run(t *testing.T, newStore func(t *testing.T) store.Store) {
	ctx := context.Background()
	uniq := func(t *testing.T, s string) string {
		return fmt.Sprintf("%s-%s-%d", t.Name(), s, time.Now().UnixNano())
	}

	t.Run("a revoked session is revoked until its time, then forgotten", func(t *testing.T) {
		s := newStore(t)
		sid := uniq(t, "sid")
		if rev, err := s.SessionRevoked(ctx, sid); err != nil || rev {
			t.Fatalf("fresh session revoked=%v err=%v", rev, err)
		}
		if err := s.RevokeSession(ctx, sid, time.Now().Add(300*time.Millisecond)); err != nil {
			t.Fatal(err)
		}
		if rev, err := s.SessionRevoked(ctx, sid); err != nil || !rev {
			t.Fatalf("after revoke revoked=%v err=%v", rev, err)
		}
		if rev, _ := s.Revoked(ctx, sid, "1", time.Now()); !rev {
			t.Fatal("Revoked does not see the session revocation")
		}
		if rev, _ := s.SessionRevoked(ctx, uniq(t, "other")); rev {
			t.Fatal("another session is revoked too")
		}
		time.Sleep(400 * time.Millisecond)
		if rev, _ := s.SessionRevoked(ctx, sid); rev {
			t.Fatal("revocation outlived its time")
		}
	})

	t.Run("a shorter revocation never shortens a longer one", func(t *testing.T) {
		s := newStore(t)
		sid := uniq(t, "sid")
		s.RevokeSession(ctx, sid, time.Now().Add(time.Hour))
		s.RevokeSession(ctx, sid, time.Now().Add(100*time.Millisecond))
		time.Sleep(200 * time.Millisecond)
		if rev, _ := s.SessionRevoked(ctx, sid); !rev {
			t.Fatal("the later, shorter revocation cut the longer one")
		}
	})

	t.Run("log out everywhere revokes tokens issued until then, not later ones", func(t *testing.T) {
		s := newStore(t)
		sub := uniq(t, "user")
		before := time.Now().Add(-time.Minute)
		at := time.Now()
		if err := s.RevokeUser(ctx, sub, at, at.Add(time.Hour)); err != nil {
			t.Fatal(err)
		}
		for _, c := range []struct {
			iat  time.Time
			want bool
		}{{before, true}, {at, true}, {at.Add(2 * time.Second), false}} {
			if rev, err := s.Revoked(ctx, uniq(t, "sid"), sub, c.iat); err != nil || rev != c.want {
				t.Errorf("iat %v: revoked=%v err=%v, want %v", c.iat.Sub(at), rev, err, c.want)
			}
		}
		if rev, _ := s.Revoked(ctx, uniq(t, "sid"), uniq(t, "other"), before); rev {
			t.Fatal("another user's token is revoked")
		}
		// An older logout-everywhere never moves the mark back.
		s.RevokeUser(ctx, sub, before.Add(-time.Hour), at.Add(time.Hour))
		if rev, _ := s.Revoked(ctx, uniq(t, "sid"), sub, before); !rev {
			t.Fatal("an older RevokeUser moved the mark back")
		}
	})

	t.Run("RevokedNow answers like Revoked", func(t *testing.T) {
		s := newStore(t)
		sid, sub := uniq(t, "sid"), uniq(t, "user")
		at := time.Now()
		s.RevokeSession(ctx, sid, at.Add(time.Hour))
		s.RevokeUser(ctx, sub, at, at.Add(time.Hour))
		for _, c := range []struct {
			name     string
			sid, sub string
			iat      time.Time
			want     bool
		}{
			{"revoked session", sid, uniq(t, "u"), at, true},
			{"user logged out after the token", uniq(t, "s"), sub, at.Add(-time.Minute), true},
			{"user's later token", uniq(t, "s"), sub, at.Add(2 * time.Second), false},
			{"untouched", uniq(t, "s"), uniq(t, "u"), at, false},
		} {
			if rev, err := s.RevokedNow(ctx, c.sid, c.sub, c.iat); err != nil || rev != c.want {
				t.Errorf("%s: RevokedNow=%v err=%v, want %v", c.name, rev, err, c.want)
			}
		}
	})

	t.Run("rotation: current rotates, predecessor within grace gets the same, stale reuse kills the family", func(t *testing.T) {
		s := newStore(t)
		fam := uniq(t, "fam")
		now := time.Now()
		until := now.Add(time.Hour)
		r1, err := s.Rotate(ctx, fam, "jti-0", "jti-1", now, 2*time.Second, until)
		if err != nil || r1.Outcome != store.Rotated {
			t.Fatalf("first rotation %+v %v", r1, err)
		}
		// A concurrent retry with jti-0 inside the grace window: the same rotation.
		r1b, err := s.Rotate(ctx, fam, "jti-0", "jti-1", now.Add(time.Second), 2*time.Second, until)
		if err != nil || r1b.Outcome != store.Rotated || r1b.At.UnixMilli() != r1.At.UnixMilli() {
			t.Fatalf("retry in grace %+v %v, want At %v", r1b, err, r1.At)
		}
		r2, err := s.Rotate(ctx, fam, "jti-1", "jti-2", now.Add(3*time.Second), 2*time.Second, until)
		if err != nil || r2.Outcome != store.Rotated || !r2.At.After(r1.At) {
			t.Fatalf("second rotation %+v %v", r2, err)
		}
		if rev, _ := s.SessionRevoked(ctx, fam); rev {
			t.Fatal("family revoked by honest rotations")
		}
		// jti-0 again, long after: a stolen copy. The family (session) dies.
		r, err := s.Rotate(ctx, fam, "jti-0", "jti-1", now.Add(10*time.Second), 2*time.Second, until)
		if err != nil || r.Outcome != store.Reused {
			t.Fatalf("reuse %+v %v", r, err)
		}
		if rev, _ := s.SessionRevoked(ctx, fam); !rev {
			t.Fatal("reuse did not revoke the session")
		}
	})

	t.Run("rotation: predecessor after the grace window is reuse", func(t *testing.T) {
		s := newStore(t)
		fam := uniq(t, "fam")
		now := time.Now()
		s.Rotate(ctx, fam, "a", "b", now, time.Second, now.Add(time.Hour))
		r, err := s.Rotate(ctx, fam, "a", "b", now.Add(2*time.Second), time.Second, now.Add(time.Hour))
		if err != nil || r.Outcome != store.Reused {
			t.Fatalf("late retry %+v %v", r, err)
		}
	})

	t.Run("rotation: racing presenters of the current token all get one rotation", func(t *testing.T) {
		s := newStore(t)
		fam := uniq(t, "fam")
		now := time.Now()
		var wg sync.WaitGroup
		ats := make([]int64, 8)
		outs := make([]store.Outcome, 8)
		for i := range 8 {
			wg.Go(func() {
				r, err := s.Rotate(ctx, fam, "x0", "x1", now, 5*time.Second, now.Add(time.Hour))
				if err != nil {
					t.Error(err)
				}
				ats[i], outs[i] = r.At.UnixMilli(), r.Outcome
			})
		}
		wg.Wait()
		for i := range 8 {
			if outs[i] != store.Rotated || ats[i] != ats[0] {
				t.Fatalf("racer %d: outcome %v at %d, racer 0 at %d", i, outs[i], ats[i], ats[0])
			}
		}
	})

	t.Run("throttle window starts at the first failure and clears", func(t *testing.T) {
		s := newStore(t)
		key := uniq(t, "k")
		if n, left, err := s.Failures(ctx, key); n != 0 || left != 0 || err != nil {
			t.Fatalf("fresh key: %d %v %v", n, left, err)
		}
		for i := 1; i <= 3; i++ {
			n, left, err := s.AddFailure(ctx, key, 300*time.Millisecond)
			if err != nil || n != i || left <= 0 || left > 300*time.Millisecond {
				t.Fatalf("failure %d: n=%d left=%v err=%v", i, n, left, err)
			}
		}
		if n, left, _ := s.Failures(ctx, key); n != 3 || left <= 0 {
			t.Fatalf("count %d left %v", n, left)
		}
		if n, _, _ := s.Failures(ctx, uniq(t, "other")); n != 0 {
			t.Fatal("keys share counts")
		}
		time.Sleep(400 * time.Millisecond)
		if n, _, _ := s.Failures(ctx, key); n != 0 {
			t.Fatalf("window outlived itself: %d", n)
		}
		s.AddFailure(ctx, key, time.Hour)
		if err := s.ClearFailures(ctx, key); err != nil {
			t.Fatal(err)
		}
		if n, _, _ := s.Failures(ctx, key); n != 0 {
			t.Fatalf("after clear: %d", n)
		}
	})

	t.Run("concurrent failures are all counted", func(t *testing.T) {
		s := newStore(t)
		key := uniq(t, "k")
		var wg sync.WaitGroup
		for range 50 {
			wg.Go(func() { s.AddFailure(ctx, key, time.Hour) })
		}
		wg.Wait()
		if n, _, _ := s.Failures(ctx, key); n != 50 {
			t.Fatalf("counted %d of 50", n)
		}
	})

	t.Run("ping", func(t *testing.T) {
		if err := newStore(t).Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
