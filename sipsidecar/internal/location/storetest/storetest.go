// Package storetest is the one conformance suite every location.Store passes.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

var errAbort = errors.New("abort")

// Run checks s. Binding expiry uses the injected now, so only the nonce TTL needs a short
// real wait.
func Run(t *testing.T, newStore func(t *testing.T) location.Store) {
	ctx := context.Background()
	t0 := time.Unix(1_900_000_000, 0)
	bind := func(aor, contact string, exp time.Time) location.Binding {
		return location.Binding{AOR: aor, Contact: contact, ExpiresAt: exp, CallID: "c-" + contact, CSeq: 1,
			Source: "127.0.0.1:5060", Transport: "udp", DisplayName: "Name " + aor}
	}
	add := func(t *testing.T, s location.Store, bs ...location.Binding) {
		t.Helper()
		for _, b := range bs {
			_, err := s.Update(ctx, b.AOR, t0, func(cur []location.Binding) ([]location.Binding, error) {
				out := cur[:0:0]
				for _, c := range cur {
					if c.Key() != b.Key() {
						out = append(out, c)
					}
				}
				return append(out, b), nil
			})
			if err != nil {
				t.Fatal(err)
			}
		}
	}
	contacts := func(bs []location.Binding) []string {
		var out []string
		for _, b := range bs {
			out = append(out, b.Contact)
		}
		sort.Strings(out)
		return out
	}

	t.Run("several contacts per AOR, each with its own expiry", func(t *testing.T) {
		s := newStore(t)
		add(t, s, bind("201@pbx", "sip:201@10.0.0.1", t0.Add(time.Minute)), bind("201@pbx", "sip:201@10.0.0.2", t0.Add(time.Hour)))
		got, err := s.Lookup(ctx, "201@pbx", t0)
		if err != nil || fmt.Sprint(contacts(got)) != "[sip:201@10.0.0.1 sip:201@10.0.0.2]" {
			t.Fatalf("lookup %v %v", contacts(got), err)
		}
		got, _ = s.Lookup(ctx, "201@pbx", t0.Add(2*time.Minute))
		if fmt.Sprint(contacts(got)) != "[sip:201@10.0.0.2]" {
			t.Fatalf("lookup after the first expired: %v", contacts(got))
		}
		if got, _ := s.Lookup(ctx, "202@pbx", t0); len(got) != 0 {
			t.Fatalf("unknown AOR has bindings %v", got)
		}
		if b := got[0]; b.Source != "127.0.0.1:5060" || b.Transport != "udp" || b.CallID != "c-sip:201@10.0.0.2" {
			t.Fatalf("fields not kept: %+v", b)
		}
	})

	t.Run("update sees live bindings only and replaces the set", func(t *testing.T) {
		s := newStore(t)
		add(t, s, bind("a@d", "sip:x", t0.Add(-time.Second)), bind("a@d", "sip:y", t0.Add(time.Hour)))
		var seen []location.Binding
		res, err := s.Update(ctx, "a@d", t0, func(cur []location.Binding) ([]location.Binding, error) {
			seen = cur
			return nil, nil // remove every live binding
		})
		if err != nil || len(res) != 0 {
			t.Fatalf("update %v %v", res, err)
		}
		if fmt.Sprint(contacts(seen)) != "[sip:y]" {
			t.Fatalf("fn saw %v, want only the live binding", contacts(seen))
		}
		if got, _ := s.Lookup(ctx, "a@d", t0); len(got) != 0 {
			t.Fatalf("after removing all: %v", got)
		}
	})

	t.Run("an error from fn changes nothing", func(t *testing.T) {
		s := newStore(t)
		add(t, s, bind("a@d", "sip:x", t0.Add(time.Hour)))
		_, err := s.Update(ctx, "a@d", t0, func([]location.Binding) ([]location.Binding, error) { return nil, errAbort })
		if !errors.Is(err, errAbort) {
			t.Fatalf("err %v, want fn's own error", err)
		}
		if got, _ := s.Lookup(ctx, "a@d", t0); len(got) != 1 {
			t.Fatalf("fn error changed the set: %v", got)
		}
	})

	t.Run("racing updates on one AOR lose nothing", func(t *testing.T) {
		s := newStore(t)
		var wg sync.WaitGroup
		for i := range 20 {
			wg.Go(func() {
				add(t, s, bind("race@d", fmt.Sprintf("sip:%02d@h", i), t0.Add(time.Hour)))
			})
		}
		wg.Wait()
		if got, _ := s.Lookup(ctx, "race@d", t0); len(got) != 20 {
			t.Fatalf("%d of 20 bindings survived the race", len(got))
		}
	})

	t.Run("expire reports each expired binding exactly once", func(t *testing.T) {
		s := newStore(t)
		add(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)), bind("a@d", "sip:2", t0.Add(time.Hour)), bind("b@d", "sip:3", t0.Add(2*time.Minute)))
		if got, _ := s.Expire(ctx, t0, 100); len(got) != 0 {
			t.Fatalf("nothing is due yet, got %v", got)
		}
		got, err := s.Expire(ctx, t0.Add(3*time.Minute), 100)
		if err != nil || fmt.Sprint(contacts(got)) != "[sip:1 sip:3]" {
			t.Fatalf("expire %v %v", contacts(got), err)
		}
		if again, _ := s.Expire(ctx, t0.Add(3*time.Minute), 100); len(again) != 0 {
			t.Fatalf("reported twice: %v", again)
		}
		if left, _ := s.Lookup(ctx, "a@d", t0); fmt.Sprint(contacts(left)) != "[sip:2]" {
			t.Fatalf("left %v", contacts(left))
		}
	})

	t.Run("a refreshed binding is not expired at its old time", func(t *testing.T) {
		s := newStore(t)
		add(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)))
		add(t, s, bind("a@d", "sip:1", t0.Add(time.Hour)))
		if got, _ := s.Expire(ctx, t0.Add(2*time.Minute), 100); len(got) != 0 {
			t.Fatalf("refreshed binding expired: %v", got)
		}
	})

	t.Run("known users outlive their bindings", func(t *testing.T) {
		s := newStore(t)
		add(t, s, bind("201@d", "sip:1", t0.Add(time.Minute)))
		s.Expire(ctx, t0.Add(time.Hour), 100)
		known, err := s.Known(ctx)
		if err != nil || known["201@d"] != "Name 201@d" {
			t.Fatalf("known %v %v", known, err)
		}
	})

	t.Run("AORs lists those with a live binding", func(t *testing.T) {
		s := newStore(t)
		add(t, s, bind("a@d", "sip:1", t0.Add(time.Minute)), bind("b@d", "sip:2", t0.Add(time.Hour)))
		got, err := s.AORs(ctx, t0.Add(2*time.Minute))
		if err != nil || fmt.Sprint(got) != "[b@d]" {
			t.Fatalf("AORs %v %v", got, err)
		}
	})

	t.Run("nonce counts must grow, and are forgotten after their TTL", func(t *testing.T) {
		s := newStore(t)
		n := fmt.Sprintf("nonce-%d", time.Now().UnixNano())
		if err := s.UseNonce(ctx, n, 1, 300*time.Millisecond); err != nil {
			t.Fatal(err)
		}
		if err := s.UseNonce(ctx, n, 1, 300*time.Millisecond); !errors.Is(err, location.ErrReplay) {
			t.Fatalf("same nc again: %v, want ErrReplay", err)
		}
		if err := s.UseNonce(ctx, n, 3, 300*time.Millisecond); err != nil {
			t.Fatalf("higher nc: %v", err)
		}
		if err := s.UseNonce(ctx, n, 2, 300*time.Millisecond); !errors.Is(err, location.ErrReplay) {
			t.Fatalf("lower nc: %v, want ErrReplay", err)
		}
		if err := s.UseNonce(ctx, n+"-other", 1, 300*time.Millisecond); err != nil {
			t.Fatalf("another nonce: %v", err)
		}
		time.Sleep(400 * time.Millisecond)
		if err := s.UseNonce(ctx, n, 1, time.Second); err != nil {
			t.Fatalf("after TTL: %v", err)
		}
	})

	t.Run("ping", func(t *testing.T) {
		if err := newStore(t).Ping(ctx); err != nil {
			t.Fatal(err)
		}
	})
}
