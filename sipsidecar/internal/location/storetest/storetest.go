// Package storetest is the one conformance suite every location.Store passes (memory and
// Redis). Binding expiry runs on an injected clock (the Store API takes now), so only the
// nonce-counter TTL needs a short real wait.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"reflect"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

var errAbort = errors.New("storetest: fn aborted")

// t0 is the injected "now" of every test.
var t0 = time.Date(2030, 3, 17, 10, 0, 0, 0, time.UTC)

// nonceSeq keeps nonces unique across stores that share a server.
var nonceSeq atomic.Int64

// stamped gives c the order a nonce of digest.Nonces carries: issued at t0, with an ID of
// its own (a function of the nonce, as digest's is).
func stamped(c location.Count) location.Count {
	h := fnv.New64a()
	h.Write([]byte(c.Nonce))
	c.Issued, c.ID = t0.Unix(), h.Sum64()
	return c
}

func bind(aor, contact string, exp time.Time) location.Binding {
	return location.Binding{
		AOR: aor, Contact: contact, ExpiresAt: exp, Granted: 3600, AuthAt: t0, UpdatedAt: t0,
		CallID: "c-" + contact, CSeq: 1, Source: "127.0.0.1:5060", Transport: "udp",
		UserAgent: "storetest", DisplayName: "Name " + aor,
	}
}

// put stores b in its AOR, replacing a binding with the same Key.
func put(t *testing.T, s location.Store, bs ...location.Binding) {
	t.Helper()
	for _, b := range bs {
		if _, err := s.Update(context.Background(), b.AOR, t0, replace(b)); err != nil {
			t.Fatalf("storing %s: %v", b.Contact, err)
		}
	}
}

func replace(b location.Binding) func([]location.Binding) ([]location.Binding, error) {
	return func(cur []location.Binding) ([]location.Binding, error) {
		out := slices.DeleteFunc(slices.Clone(cur), func(c location.Binding) bool { return c.Key() == b.Key() })
		return append(out, b), nil
	}
}

func remove(contact string) func([]location.Binding) ([]location.Binding, error) {
	return func(cur []location.Binding) ([]location.Binding, error) {
		return slices.DeleteFunc(slices.Clone(cur), func(c location.Binding) bool { return c.Contact == contact }), nil
	}
}

func contacts(bs []location.Binding) string {
	out := make([]string, 0, len(bs))
	for _, b := range bs {
		out = append(out, b.Contact)
	}
	sort.Strings(out)
	return fmt.Sprint(out)
}

// canon makes bindings comparable across a JSON round trip (time zones, monotonic clock)
// and sorts them by Key.
func canon(bs []location.Binding) []location.Binding {
	out := slices.Clone(bs)
	for i := range out {
		out[i].ExpiresAt = out[i].ExpiresAt.UTC()
		out[i].AuthAt = out[i].AuthAt.UTC()
		out[i].UpdatedAt = out[i].UpdatedAt.UTC()
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

func lookup(t *testing.T, s location.Store, aor string, now time.Time) []location.Binding {
	t.Helper()
	bs, err := s.Lookup(context.Background(), aor, now)
	if err != nil {
		t.Fatalf("lookup %s: %v", aor, err)
	}
	return bs
}

// Run checks the stores newStore makes; each subtest gets its own, empty store.
func Run(t *testing.T, newStore func(t *testing.T) location.Store) {
	ctx := context.Background()

	t.Run("a stored binding reads back with every field", func(t *testing.T) {
		s := newStore(t)
		b := bind("201@pbx", "sip:201@10.0.0.1:5060;transport=udp", t0.Add(time.Hour))
		b.CSeq, b.Q, b.NAT, b.WebRTC = 7, "0.5", true, true
		b.CallHook, b.CallStatusHook = "https://hooks.example/call", "https://hooks.example/status"
		b.AOR = "" // the store stamps the AOR it was given
		res, err := s.Update(ctx, "201@pbx", t0, replace(b))
		if err != nil {
			t.Fatal(err)
		}
		b.AOR = "201@pbx"
		want := []location.Binding{b}
		if !reflect.DeepEqual(canon(res), want) {
			t.Fatalf("Update returned\n %+v\nwant\n %+v", canon(res), want)
		}
		if got := canon(lookup(t, s, "201@pbx", t0)); !reflect.DeepEqual(got, want) {
			t.Fatalf("Lookup returned\n %+v\nwant\n %+v", got, want)
		}
	})

	t.Run("unknown AOR has no bindings", func(t *testing.T) {
		s := newStore(t)
		if got := lookup(t, s, "nobody@pbx", t0); len(got) != 0 {
			t.Fatalf("got %v", got)
		}
	})

	t.Run("several contacts per AOR, each with its own expiry", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("201@pbx", "sip:201@10.0.0.1", t0.Add(time.Minute)), bind("201@pbx", "sip:201@10.0.0.2", t0.Add(time.Hour)))
		if got := contacts(lookup(t, s, "201@pbx", t0)); got != "[sip:201@10.0.0.1 sip:201@10.0.0.2]" {
			t.Fatalf("lookup %v", got)
		}
		if got := contacts(lookup(t, s, "201@pbx", t0.Add(time.Minute-time.Millisecond))); got != "[sip:201@10.0.0.1 sip:201@10.0.0.2]" {
			t.Fatalf("lookup just before the first expiry %v", got)
		}
		// Live means now < ExpiresAt: at the expiry instant the binding is gone.
		if got := contacts(lookup(t, s, "201@pbx", t0.Add(time.Minute))); got != "[sip:201@10.0.0.2]" {
			t.Fatalf("lookup at the first expiry %v", got)
		}
		if got := lookup(t, s, "201@pbx", t0.Add(time.Hour)); len(got) != 0 {
			t.Fatalf("lookup after both expired %v", contacts(got))
		}
	})

	t.Run("a refresh replaces the binding in place", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)))
		b := bind("a@d", "sip:1", t0.Add(time.Hour))
		b.CSeq, b.Source = 2, "127.0.0.1:5062"
		put(t, s, b)
		got := lookup(t, s, "a@d", t0.Add(30*time.Minute))
		if len(got) != 1 || got[0].CSeq != 2 || got[0].Source != "127.0.0.1:5062" {
			t.Fatalf("after refresh %+v", got)
		}
	})

	t.Run("a binding with a +sip.instance is keyed by it", func(t *testing.T) {
		// RFC 5626 §4.2: the same device registering from a new address replaces itself.
		s := newStore(t)
		old := bind("a@d", "sip:a@10.0.0.1", t0.Add(time.Hour))
		old.InstanceID = "<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"
		moved := old
		moved.Contact = "sip:a@10.0.0.9"
		put(t, s, old, moved)
		if got := contacts(lookup(t, s, "a@d", t0)); got != "[sip:a@10.0.0.9]" {
			t.Fatalf("after moving %v", got)
		}
	})

	t.Run("removing one contact keeps the others", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Hour)), bind("a@d", "sip:2", t0.Add(time.Hour)))
		res, err := s.Update(ctx, "a@d", t0, remove("sip:1"))
		if err != nil || contacts(res) != "[sip:2]" {
			t.Fatalf("update %v %v", contacts(res), err)
		}
		if got := contacts(lookup(t, s, "a@d", t0)); got != "[sip:2]" {
			t.Fatalf("left %v", got)
		}
	})

	t.Run("removing every contact empties the AOR", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Hour)), bind("a@d", "sip:2", t0.Add(time.Hour)))
		res, err := s.Update(ctx, "a@d", t0, func([]location.Binding) ([]location.Binding, error) { return nil, nil })
		if err != nil || len(res) != 0 {
			t.Fatalf("update %v %v", res, err)
		}
		if got := lookup(t, s, "a@d", t0); len(got) != 0 {
			t.Fatalf("left %v", contacts(got))
		}
		if aors, err := s.AORs(ctx, t0); err != nil || len(aors) != 0 {
			t.Fatalf("AORs %v %v", aors, err)
		}
		if gone, err := s.Expire(ctx, t0.Add(2*time.Hour), 0); err != nil || len(gone) != 0 {
			t.Fatalf("removed bindings reported as expired: %v %v", contacts(gone), err)
		}
	})

	t.Run("fn sees only live bindings", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:x", t0.Add(-time.Second)), bind("a@d", "sip:y", t0.Add(time.Hour)))
		var seen []location.Binding
		if _, err := s.Update(ctx, "a@d", t0, func(cur []location.Binding) ([]location.Binding, error) {
			seen = cur
			return cur, nil
		}); err != nil {
			t.Fatal(err)
		}
		if contacts(seen) != "[sip:y]" {
			t.Fatalf("fn saw %v, want only the live binding", contacts(seen))
		}
	})

	t.Run("an expired binding fn leaves out is still reported by Expire", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:x", t0.Add(-time.Second)))
		put(t, s, bind("a@d", "sip:y", t0.Add(time.Hour)))
		gone, err := s.Expire(ctx, t0, 0)
		if err != nil || contacts(gone) != "[sip:x]" {
			t.Fatalf("expire %v %v", contacts(gone), err)
		}
	})

	t.Run("two bindings with one key from fn: the later wins", func(t *testing.T) {
		s := newStore(t)
		a, b := bind("a@d", "sip:1", t0.Add(time.Minute)), bind("a@d", "sip:1", t0.Add(time.Hour))
		b.CSeq = 9
		res, err := s.Update(ctx, "a@d", t0, func([]location.Binding) ([]location.Binding, error) {
			return []location.Binding{a, b}, nil
		})
		if err != nil || len(res) != 1 || res[0].CSeq != 9 {
			t.Fatalf("update %+v %v", res, err)
		}
		if got := lookup(t, s, "a@d", t0); len(got) != 1 || got[0].CSeq != 9 {
			t.Fatalf("lookup %+v", got)
		}
	})

	t.Run("fn's slice is its own: changing it after the call changes nothing", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Hour)))
		var kept []location.Binding
		if _, err := s.Update(ctx, "a@d", t0, func(cur []location.Binding) ([]location.Binding, error) {
			kept = cur
			return cur, nil
		}); err != nil {
			t.Fatal(err)
		}
		kept[0].Contact = "sip:changed"
		res, _ := s.Lookup(ctx, "a@d", t0)
		res[0].Contact = "sip:changed-too"
		if got := contacts(lookup(t, s, "a@d", t0)); got != "[sip:1]" {
			t.Fatalf("store shares memory with its callers: %v", got)
		}
	})

	t.Run("an error from fn is returned as is and changes nothing", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:x", t0.Add(time.Hour)))
		_, err := s.Update(ctx, "a@d", t0, func([]location.Binding) ([]location.Binding, error) { return nil, errAbort })
		if !errors.Is(err, errAbort) || errors.Is(err, location.ErrUnavailable) {
			t.Fatalf("err %v, want fn's own error", err)
		}
		if got := contacts(lookup(t, s, "a@d", t0)); got != "[sip:x]" {
			t.Fatalf("fn error changed the set: %v", got)
		}
		_, err = s.Update(ctx, "new@d", t0, func([]location.Binding) ([]location.Binding, error) {
			return []location.Binding{bind("new@d", "sip:n", t0.Add(time.Hour))}, errAbort
		})
		if !errors.Is(err, errAbort) {
			t.Fatalf("err %v", err)
		}
		if got := lookup(t, s, "new@d", t0); len(got) != 0 {
			t.Fatalf("bindings returned with an error were stored: %v", contacts(got))
		}
		if known, _ := s.Known(ctx); known["new@d"] != "" || len(known) != 1 {
			t.Fatalf("an aborted update made the AOR known: %v", known)
		}
	})

	t.Run("racing updates on one AOR lose nothing", func(t *testing.T) {
		s := newStore(t)
		const n = 20
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Go(func() {
				b := bind("race@d", fmt.Sprintf("sip:%02d@h", i), t0.Add(time.Hour))
				_, err := s.Update(ctx, b.AOR, t0, replace(b))
				errs <- err
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("racing update: %v", err)
			}
		}
		if got := lookup(t, s, "race@d", t0); len(got) != n {
			t.Fatalf("%d of %d bindings survived the race: %v", len(got), n, contacts(got))
		}
	})

	t.Run("racing read-modify-write on one binding loses no increment", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("cnt@d", "sip:c", t0.Add(time.Hour)))
		const n = 20
		var wg sync.WaitGroup
		for range n {
			wg.Go(func() {
				_, err := s.Update(ctx, "cnt@d", t0, func(cur []location.Binding) ([]location.Binding, error) {
					cur[0].CSeq++
					return cur, nil
				})
				if err != nil {
					t.Errorf("update: %v", err)
				}
			})
		}
		wg.Wait()
		if got := lookup(t, s, "cnt@d", t0); len(got) != 1 || got[0].CSeq != 1+n {
			t.Fatalf("CSeq after %d increments: %+v", n, got)
		}
	})

	t.Run("expire reports each expired binding exactly once", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)), bind("a@d", "sip:2", t0.Add(time.Hour)), bind("b@d", "sip:3", t0.Add(2*time.Minute)))
		if got, err := s.Expire(ctx, t0, 100); err != nil || len(got) != 0 {
			t.Fatalf("nothing is due yet, got %v %v", contacts(got), err)
		}
		got, err := s.Expire(ctx, t0.Add(3*time.Minute), 100)
		if err != nil || contacts(got) != "[sip:1 sip:3]" {
			t.Fatalf("expire %v %v", contacts(got), err)
		}
		for _, b := range got {
			if b.AOR == "" || b.CallID != "c-"+b.Contact {
				t.Fatalf("expired binding lost its fields: %+v", b)
			}
		}
		if again, _ := s.Expire(ctx, t0.Add(3*time.Minute), 100); len(again) != 0 {
			t.Fatalf("reported twice: %v", contacts(again))
		}
		if left := contacts(lookup(t, s, "a@d", t0)); left != "[sip:2]" {
			t.Fatalf("left %v", left)
		}
		if left := lookup(t, s, "b@d", t0); len(left) != 0 {
			t.Fatalf("expired binding still stored: %v", contacts(left))
		}
	})

	t.Run("expire honours its limit and reports the rest later", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)), bind("a@d", "sip:2", t0.Add(time.Minute)), bind("a@d", "sip:3", t0.Add(time.Minute)))
		put(t, s, bind("b@d", "sip:4", t0.Add(2*time.Minute)), bind("c@d", "sip:5", t0.Add(time.Hour)))
		var all []location.Binding
		for range 10 {
			got, err := s.Expire(ctx, t0.Add(3*time.Minute), 2)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) > 2 {
				t.Fatalf("limit 2, got %d", len(got))
			}
			if len(got) == 0 {
				break
			}
			all = append(all, got...)
		}
		if contacts(all) != "[sip:1 sip:2 sip:3 sip:4]" {
			t.Fatalf("expired in batches of 2: %v", contacts(all))
		}
	})

	t.Run("expire without a limit takes every due binding", func(t *testing.T) {
		s := newStore(t)
		for i := range 5 {
			aor := fmt.Sprintf("%d@d", i)
			put(t, s, bind(aor, "sip:1-"+aor, t0.Add(time.Minute)), bind(aor, "sip:2-"+aor, t0.Add(time.Minute)))
		}
		if got, err := s.Expire(ctx, t0.Add(time.Hour), 0); err != nil || len(got) != 10 {
			t.Fatalf("limit 0 expired %d, %v; want all 10", len(got), err)
		}
	})

	t.Run("concurrent sweepers report each binding once between them", func(t *testing.T) {
		// Several sidecars sweep one store: a binding expiring must be announced once.
		s := newStore(t)
		for i := range 10 {
			aor := fmt.Sprintf("%d@d", i)
			put(t, s, bind(aor, "sip:a-"+aor, t0.Add(time.Minute)), bind(aor, "sip:b-"+aor, t0.Add(time.Minute)))
		}
		var mu sync.Mutex
		var all []location.Binding
		var wg sync.WaitGroup
		for range 4 {
			wg.Go(func() {
				for range 20 {
					got, err := s.Expire(ctx, t0.Add(time.Hour), 3)
					if err != nil {
						t.Errorf("expire: %v", err)
						return
					}
					mu.Lock()
					all = append(all, got...)
					mu.Unlock()
				}
			})
		}
		wg.Wait()
		seen := map[string]int{}
		for _, b := range all {
			seen[b.Contact]++
		}
		if len(all) != 20 || len(seen) != 20 {
			t.Fatalf("%d reports of %d distinct bindings, want 20 of 20: %v", len(all), len(seen), seen)
		}
	})

	t.Run("a refreshed binding is not expired at its old time", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)))
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Hour)))
		if got, _ := s.Expire(ctx, t0.Add(2*time.Minute), 100); len(got) != 0 {
			t.Fatalf("refreshed binding expired: %v", contacts(got))
		}
		if got, _ := s.Expire(ctx, t0.Add(time.Hour), 100); contacts(got) != "[sip:1]" {
			t.Fatalf("refreshed binding not expired at its new time: %v", contacts(got))
		}
	})

	t.Run("a shortened binding expires at its new time", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Hour)))
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)))
		if got, _ := s.Expire(ctx, t0.Add(2*time.Minute), 100); contacts(got) != "[sip:1]" {
			t.Fatalf("shortened binding: %v", contacts(got))
		}
	})

	t.Run("known users outlive their bindings", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("201@d", "sip:1", t0.Add(time.Minute)))
		nameless := bind("202@d", "sip:2", t0.Add(time.Minute))
		nameless.DisplayName = ""
		put(t, s, nameless)
		if _, err := s.Expire(ctx, t0.Add(time.Hour), 100); err != nil {
			t.Fatal(err)
		}
		known, err := s.Known(ctx)
		if err != nil || !reflect.DeepEqual(known, map[string]string{"201@d": "Name 201@d", "202@d": ""}) {
			t.Fatalf("known %v %v", known, err)
		}
		// A later REGISTER without a display name keeps the one already known.
		nameless.AOR, nameless.ExpiresAt = "201@d", t0.Add(2*time.Hour)
		put(t, s, nameless)
		renamed := bind("202@d", "sip:2", t0.Add(2*time.Hour))
		renamed.DisplayName = "Second"
		put(t, s, renamed)
		known, _ = s.Known(ctx)
		if !reflect.DeepEqual(known, map[string]string{"201@d": "Name 201@d", "202@d": "Second"}) {
			t.Fatalf("known after new registrations %v", known)
		}
	})

	t.Run("AORs lists those with a live binding", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)), bind("b@d", "sip:2", t0.Add(time.Hour)), bind("c@d", "sip:3", t0.Add(time.Hour)))
		got, err := s.AORs(ctx, t0)
		if err != nil || fmt.Sprint(got) != "[a@d b@d c@d]" {
			t.Fatalf("AORs %v %v", got, err)
		}
		got, err = s.AORs(ctx, t0.Add(2*time.Minute))
		if err != nil || fmt.Sprint(got) != "[b@d c@d]" {
			t.Fatalf("AORs after a@d expired %v %v", got, err)
		}
		// Expired bindings not yet swept: an AOR counts while any binding of it is live.
		put(t, s, bind("d@d", "sip:4", t0.Add(time.Minute)), bind("d@d", "sip:5", t0.Add(time.Hour)),
			bind("e@d", "sip:6", t0.Add(time.Minute)), bind("e@d", "sip:7", t0.Add(90*time.Second)))
		for _, at := range []struct {
			now  time.Time
			want string
		}{
			{t0, "[a@d b@d c@d d@d e@d]"},
			{t0.Add(80 * time.Second), "[b@d c@d d@d e@d]"},
			{t0.Add(2 * time.Minute), "[b@d c@d d@d]"},
			{t0.Add(2 * time.Hour), "[]"},
		} {
			if got, err := s.AORs(ctx, at.now); err != nil || fmt.Sprint(got) != at.want {
				t.Fatalf("AORs at %v: %v %v, want %s", at.now.Sub(t0), got, err, at.want)
			}
		}
		if _, err := s.Expire(ctx, t0.Add(2*time.Minute), 0); err != nil {
			t.Fatal(err)
		}
		if got, err := s.AORs(ctx, t0.Add(2*time.Minute)); err != nil || fmt.Sprint(got) != "[b@d c@d d@d]" {
			t.Fatalf("AORs after the sweep: %v %v", got, err)
		}
	})

	t.Run("nonce counts must grow", func(t *testing.T) {
		s := newStore(t)
		n := fmt.Sprintf("nonce-%d", nonceSeq.Add(1))
		steps := []struct {
			nc   uint64
			want error
		}{{1, nil}, {1, location.ErrReplay}, {3, nil}, {2, location.ErrReplay}, {3, location.ErrReplay}, {4, nil}, {0xffffffff, nil}, {0xffffffff, location.ErrReplay}}
		for _, st := range steps {
			if err := s.UseNonce(ctx, location.Count{Nonce: n, NC: st.nc, TTL: time.Minute}); !errors.Is(err, st.want) || (st.want == nil && err != nil) {
				t.Fatalf("nc %d: %v, want %v", st.nc, err, st.want)
			}
		}
		if err := s.UseNonce(ctx, location.Count{Nonce: n + "-other", NC: 1, TTL: time.Minute}); err != nil {
			t.Fatalf("another nonce has its own count: %v", err)
		}
		// A first use with nc 0, then 1: 1 is above 0 (the Redis store answers nc 1 with
		// SET NX first, and must not take the existing count for a replay).
		for i, st := range []struct {
			nc   uint64
			want error
		}{{0, nil}, {0, location.ErrReplay}, {1, nil}, {1, location.ErrReplay}, {2, nil}} {
			if err := s.UseNonce(ctx, location.Count{Nonce: n + "-zero", NC: st.nc, TTL: time.Minute}); !errors.Is(err, st.want) || (st.want == nil && err != nil) {
				t.Fatalf("step %d, nc %d: %v, want %v", i, st.nc, err, st.want)
			}
		}
	})

	t.Run("one nc is accepted once however many try at once", func(t *testing.T) {
		// A replayed Authorization sent to several sidecars at the same moment.
		s := newStore(t)
		n := fmt.Sprintf("nonce-%d", nonceSeq.Add(1))
		var ok, replay atomic.Int32
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				switch err := s.UseNonce(ctx, location.Count{Nonce: n, NC: 1, TTL: time.Minute}); {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, location.ErrReplay):
					replay.Add(1)
				default:
					t.Errorf("UseNonce: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 1 || replay.Load() != 15 {
			t.Fatalf("%d accepted, %d replays; want 1 and 15", ok.Load(), replay.Load())
		}
	})

	t.Run("nonce counts are forgotten after their TTL", func(t *testing.T) {
		s := newStore(t)
		n := fmt.Sprintf("nonce-%d", nonceSeq.Add(1))
		const ttl = 100 * time.Millisecond
		if err := s.UseNonce(ctx, location.Count{Nonce: n, NC: 5, TTL: ttl}); err != nil {
			t.Fatal(err)
		}
		if err := s.UseNonce(ctx, location.Count{Nonce: n, NC: 5, TTL: ttl}); !errors.Is(err, location.ErrReplay) {
			t.Fatalf("within TTL: %v, want ErrReplay", err)
		}
		time.Sleep(ttl + 50*time.Millisecond) // the Store API takes no clock for nonces
		if err := s.UseNonce(ctx, location.Count{Nonce: n, NC: 1, TTL: ttl}); err != nil {
			t.Fatalf("after TTL: %v", err)
		}
	})

	// A Serial changes where the sidecar keeps its own memory of the count, not the count.
	for _, serial := range []bool{false, true} {
		t.Run(map[bool]string{false: "UpdateCounted takes the count exactly when it stores", true: "with a serial, UpdateCounted takes the count exactly when it stores"}[serial], func(t *testing.T) {
			s := newStore(t)
			n := fmt.Sprintf("nonce-%d", nonceSeq.Add(1))
			c := stamped(location.Count{Nonce: n, NC: 1, TTL: time.Minute})
			if serial {
				c.Serial = uint32(nonceSeq.Add(1))
			}
			at := func(nc uint64) location.Count { d := c; d.NC = nc; return d }
			// fn refuses: nothing stored, and the count is still free.
			if _, err := s.UpdateCounted(ctx, "a@d", t0, c, func([]location.Binding) ([]location.Binding, error) { return nil, errAbort }); !errors.Is(err, errAbort) {
				t.Fatalf("fn's error: %v", err)
			}
			if s.Replayed(at(1)) {
				t.Fatal("a count fn refused is taken")
			}
			b := bind("a@d", "sip:1", t0.Add(time.Hour))
			if res, err := s.UpdateCounted(ctx, "a@d", t0, c, replace(b)); err != nil || contacts(res) != "[sip:1]" {
				t.Fatalf("first use: %v %v", res, err)
			}
			if !s.Replayed(at(1)) || s.Replayed(at(2)) {
				t.Fatal("Replayed after the count was taken")
			}
			// The same count again stores nothing. (On another AOR a store may take it: the
			// registrar's nonces belong to one AOR.)
			_, err := s.UpdateCounted(ctx, "a@d", t0, c, func(cur []location.Binding) ([]location.Binding, error) {
				return append(cur, bind("a@d", "sip:replayed", t0.Add(time.Hour))), nil
			})
			if !errors.Is(err, location.ErrReplay) {
				t.Fatalf("replayed count: %v, want ErrReplay", err)
			}
			if bs, _ := s.Lookup(ctx, "a@d", t0); strings.Contains(contacts(bs), "replayed") {
				t.Fatalf("a replay stored %v", bs)
			}
			// The next count goes through; a zero Count takes none.
			c.NC = 2
			if _, err := s.UpdateCounted(ctx, "a@d", t0, c, replace(bind("a@d", "sip:2", t0.Add(time.Hour)))); err != nil {
				t.Fatalf("nc 2: %v", err)
			}
			for range 2 {
				if _, err := s.UpdateCounted(ctx, "a@d", t0, location.Count{}, replace(b)); err != nil {
					t.Fatalf("zero Count: %v", err)
				}
			}
			other := stamped(location.Count{Nonce: fmt.Sprintf("nonce-%d", nonceSeq.Add(1)), NC: 1})
			if serial {
				other.Serial = uint32(nonceSeq.Add(1))
			}
			if s.Replayed(other) {
				t.Fatal("a nonce never counted is a replay")
			}
		})
	}

	t.Run("one count is taken once however many try at once", func(t *testing.T) {
		s := newStore(t)
		n := fmt.Sprintf("nonce-%d", nonceSeq.Add(1))
		c := stamped(location.Count{Nonce: n, NC: 1, TTL: time.Minute})
		var ok, replay atomic.Int32
		var wg sync.WaitGroup
		for i := range 16 {
			wg.Go(func() {
				aor := "u@d"
				switch _, err := s.UpdateCounted(ctx, aor, t0, c, replace(bind(aor, fmt.Sprintf("sip:%d", i), t0.Add(time.Hour)))); {
				case err == nil:
					ok.Add(1)
				case errors.Is(err, location.ErrReplay):
					replay.Add(1)
				default:
					t.Errorf("UpdateCounted: %v", err)
				}
			})
		}
		wg.Wait()
		if ok.Load() != 1 || replay.Load() != 15 {
			t.Fatalf("%d stored, %d replays; want 1 and 15", ok.Load(), replay.Load())
		}
		if bs, _ := s.Lookup(ctx, "u@d", t0); len(bs) != 1 {
			t.Fatalf("%d bindings stored, want the one that took the count", len(bs))
		}
	})

	t.Run("Recall knows what this store wrote", func(t *testing.T) {
		s := newStore(t)
		put(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)), bind("a@d", "sip:2", t0.Add(time.Hour)))
		bs, ok := s.Recall("a@d", t0)
		if !ok || contacts(bs) != contacts([]location.Binding{bind("a@d", "sip:1", t0), bind("a@d", "sip:2", t0)}) {
			t.Fatalf("Recall: %v %v", bs, ok)
		}
		if bs, ok := s.Recall("a@d", t0.Add(2*time.Minute)); !ok || len(bs) != 1 || bs[0].Contact != "sip:2" {
			t.Fatalf("Recall after sip:1 expired: %v %v", bs, ok)
		}
		// What it answers is a copy.
		bs[0].Contact = "sip:changed"
		if again, _ := s.Recall("a@d", t0.Add(2*time.Minute)); again[0].Contact != "sip:2" {
			t.Fatal("changing Recall's answer changed the store")
		}
	})

	t.Run("ping", func(t *testing.T) {
		if err := newStore(t).Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})
}

// RunBans checks the Bans that newBans makes. Bans run on the store's own clock, so the
// windows here are short real waits.
func RunBans(t *testing.T, newBans func(t *testing.T) location.Bans) {
	ctx := context.Background()
	ip := func() string { return fmt.Sprintf("192.0.2.%d", nonceSeq.Add(1)%250+1) }

	t.Run("failures count up within a window and restart after it", func(t *testing.T) {
		b, addr, other := newBans(t), ip(), ip()
		const window = 150 * time.Millisecond
		for want := 1; want <= 3; want++ {
			if n, err := b.Fail(ctx, addr, window); err != nil || n != want {
				t.Fatalf("failure %d counted as %d, %v", want, n, err)
			}
		}
		if n, err := b.Fail(ctx, other, window); err != nil || n != 1 {
			t.Fatalf("another address starts at 1, got %d, %v", n, err)
		}
		time.Sleep(window + 50*time.Millisecond)
		if n, err := b.Fail(ctx, addr, window); err != nil || n != 1 {
			t.Fatalf("after the window: %d, %v; want a new count", n, err)
		}
	})

	t.Run("a ban holds for its duration and only for its address", func(t *testing.T) {
		b, addr, other := newBans(t), ip(), ip()
		if banned, err := b.Banned(ctx, addr); err != nil || banned {
			t.Fatalf("banned before any ban: %v %v", banned, err)
		}
		const d = 150 * time.Millisecond
		if err := b.Ban(ctx, addr, d); err != nil {
			t.Fatal(err)
		}
		if banned, err := b.Banned(ctx, addr); err != nil || !banned {
			t.Fatalf("not banned after Ban: %v %v", banned, err)
		}
		if banned, err := b.Banned(ctx, other); err != nil || banned {
			t.Fatalf("another address is banned: %v %v", banned, err)
		}
		time.Sleep(d + 50*time.Millisecond)
		if banned, err := b.Banned(ctx, addr); err != nil || banned {
			t.Fatalf("still banned after the ban ran out: %v %v", banned, err)
		}
	})
}
