package location

import (
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"
)

func TestNonceWindowTakes(t *testing.T) {
	now := time.Unix(2_000_000_000, 0)
	ttl := 6 * time.Minute
	at := func(issued int64, id uint64, nc uint64) Count {
		return Count{Nonce: "n", NC: nc, TTL: ttl, Issued: issued, ID: id}
	}
	i0 := now.Unix() - 10
	var w nonceWindow
	check := func(step string, c Count, want error) {
		t.Helper()
		if err := w.take(c, now); !errors.Is(err, want) || (want == nil && err != nil) {
			t.Fatalf("%s %+v: %v, want %v (window %s)", step, c, err, want, w.String())
		}
		var back nonceWindow
		if err := back.parse(w.String()); err != nil || back.String() != w.String() {
			t.Fatalf("%s: %q does not read back (%v)", step, w.String(), err)
		}
	}
	check("first", at(i0, 1, 1), nil)
	check("the same count", at(i0, 1, 1), ErrReplay)
	check("a higher one", at(i0, 1, 3), nil)
	check("a lower one", at(i0, 1, 2), ErrReplay)
	check("another nonce, newer", at(i0, 2, 1), nil)
	check("an older one not yet counted, above the floor", at(i0-1, 9, 1), nil)
	for k := range maxWindow - 3 {
		check("filling the window", at(i0+1+int64(k), 1, 1), nil)
	}
	if len(w.ents) != maxWindow || w.floor != (stamp{}) {
		t.Fatalf("full window %s", w.String())
	}
	// One more: the oldest, (i0-1, 9), leaves, and the floor rises to it.
	check("one more than the window holds", at(i0+maxWindow, 1, 1), nil)
	check("the evicted nonce: not a replay for sure, but refused", at(i0-1, 9, 2), ErrStaleNonce)
	check("below the floor, never counted: refused all the same", at(i0-1, 8, 1), ErrStaleNonce)
	check("still in the window", at(i0, 1, 4), nil)
	if len(w.ents) != maxWindow || w.floor != (stamp{i0 - 1, 9}) {
		t.Fatalf("window %s", w.String())
	}
	if want := (i0+maxWindow)*1000 + ttl.Milliseconds(); w.until != want {
		t.Fatalf("until %d, want %d", w.until, want)
	}
	// Later, the nonces issued up to i0 are stale: they leave, and the floor rises past them.
	later := time.Unix(i0, 0).Add(ttl).Add(500 * time.Millisecond)
	if err := w.take(at(i0+maxWindow+1, 1, 1), later); err != nil {
		t.Fatal(err)
	}
	if len(w.ents) != maxWindow-1 || w.floor != (stamp{i0, 2}) {
		t.Fatalf("after the first ones went stale: %s", w.String())
	}
}

// Whatever phones and attackers send, in any order, a count is taken at most once: a
// model of every count taken, checked against the window through its text form.
func TestNonceWindowNeverTakesACountTwice(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	start := time.Unix(2_000_000_000, 0)
	ttl := 90 * time.Second
	for round := range 200 {
		var text string
		taken := map[Count]bool{}
		var sent []Count
		now := start
		for range 300 {
			now = now.Add(time.Duration(rng.IntN(2000)) * time.Millisecond)
			var c Count
			if len(sent) > 0 && rng.IntN(3) == 0 {
				c = sent[rng.IntN(len(sent))] // a replay, or a phone reusing its nonce
				if rng.IntN(2) == 0 {
					c.NC += uint64(rng.IntN(3))
				}
			} else {
				c = Count{Nonce: "n", NC: 1 + uint64(rng.IntN(3)), TTL: ttl,
					Issued: now.Unix() - int64(rng.IntN(60)), ID: uint64(rng.IntN(8))}
			}
			var w nonceWindow
			if err := w.parse(text); err != nil {
				t.Fatalf("round %d: %q: %v", round, text, err)
			}
			err := w.take(c, now)
			if err == nil {
				key := Count{NC: c.NC, Issued: c.Issued, ID: c.ID}
				if taken[key] {
					t.Fatalf("round %d: %+v taken twice (window %s)", round, c, w.String())
				}
				taken[key] = true
				text = w.String()
				sent = append(sent, c)
				if len(w.ents) > maxWindow {
					t.Fatalf("round %d: window of %d", round, len(w.ents))
				}
			} else if !errors.Is(err, ErrReplay) && !errors.Is(err, ErrStaleNonce) {
				t.Fatalf("round %d: %v", round, err)
			}
		}
	}
}

func TestParseWindowRefusesWhatItDidNotWrite(t *testing.T) {
	for _, v := range []string{
		"x", "1", "1 2", "1 2.", "1 .2", "1 2.3 4", "1 2.3 4.5", "1 2.3 4.5=", "1 2.3 4.5=z",
		"1 2.3 " + strings.Repeat("4.5=1 ", maxWindow+1), "1  2.3", "-", "1 2.3 4.5=1=2",
		"ffffffffffffffffff 2.3",
	} {
		var w nonceWindow
		if err := w.parse(v); err == nil {
			t.Errorf("%q parsed as %s", v, w.String())
		}
	}
	var w nonceWindow
	if err := w.parse(""); err != nil || w.until != 0 || len(w.ents) != 0 {
		t.Fatalf("the empty window: %s %v", w.String(), err)
	}
}

func BenchmarkNonceWindowTake(b *testing.B) {
	now := time.Unix(2_000_000_000, 0)
	text := ""
	b.ReportAllocs()
	i := int64(0)
	for b.Loop() {
		i++
		var w nonceWindow
		w.parse(text)
		if err := w.take(Count{Nonce: "n", NC: 1, TTL: 6 * time.Minute, Issued: now.Unix(), ID: uint64(i)}, now); err != nil {
			b.Fatal(err)
		}
		text = w.String()
	}
}

// Whatever a hash's "nc" field holds, parse either refuses it or reads a window that
// writes back to text it reads the same way.
func FuzzNonceWindowParse(f *testing.F) {
	for _, s := range []string{"", "0 0.0", "1d1a94f7f00 773593f5.9 773593f6.1=3 773593f6.2=1", "1 2.3 4.5=z", "0 00.0", "ffffffffffffffff 1.1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, v string) {
		var w nonceWindow
		if w.parse(v) != nil {
			return
		}
		text := w.String()
		var back nonceWindow
		if err := back.parse(text); err != nil || back.String() != text {
			t.Fatalf("%q read as %q, which reads back as %q (%v)", v, text, back.String(), err)
		}
		if v != "" && text != v {
			t.Fatalf("%q read as %q: the text form has one spelling", v, text)
		}
	})
}
