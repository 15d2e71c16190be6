package sipserver

import (
	"bytes"
	"hash/maphash"
	"strings"
	"testing"
	"time"
)

func TestTxCache(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	answer := []byte("SIP/2.0 200 OK\r\n\r\n")

	t.Run("a retransmission while in flight is absorbed, after completion repeated", func(t *testing.T) {
		c := newTxCache(0)
		if v, _ := c.begin("k", t0); v != fresh {
			t.Fatalf("first sight: %v, want fresh", v)
		}
		if v, _ := c.begin("k", t0.Add(500*time.Millisecond)); v != absorbed {
			t.Fatalf("in flight: %v, want absorbed", v)
		}
		c.finish("k", answer, t0.Add(time.Second))
		v, got := c.begin("k", t0.Add(2*time.Second))
		if v != repeat || !bytes.Equal(got, answer) {
			t.Fatalf("completed: %v %q, want repeat of the answer", v, got)
		}
		got[0] = 'X' // the caller's copy: the cache must not change
		if _, again := c.begin("k", t0.Add(3*time.Second)); !bytes.Equal(again, answer) {
			t.Fatalf("cached answer changed through a returned copy: %q", again)
		}
	})

	t.Run("an answer is remembered for Timer J and then forgotten", func(t *testing.T) {
		c := newTxCache(0)
		c.begin("k", t0)
		c.finish("k", answer, t0)
		// Steady traffic from elsewhere ages the generations, a second at a time.
		end := timerJ + 2*c.span
		for d := time.Second; d <= end; d += time.Second {
			c.begin("other", t0.Add(d))
			c.abandon("other")
			v, _ := c.begin("k", t0.Add(d))
			if d <= timerJ && v != repeat {
				t.Fatalf("%v after the answer (Timer J %v): %v, want repeat", d, timerJ, v)
			}
			if d == end && v != fresh {
				t.Fatalf("%v after the answer: %v, want fresh", d, v)
			}
			if v == fresh {
				c.abandon("k")
			}
		}
		if answers, inflight, _ := c.stats(); answers != 0 || inflight != 0 {
			t.Fatalf("stats after expiry: %d answers, %d in flight", answers, inflight)
		}
	})

	t.Run("an abandoned transaction is handled again", func(t *testing.T) {
		c := newTxCache(0)
		c.begin("k", t0)
		c.abandon("k")
		if v, _ := c.begin("k", t0); v != fresh {
			t.Fatalf("after abandon: %v, want fresh", v)
		}
	})

	t.Run("a transaction answered with nothing stays silent", func(t *testing.T) {
		c := newTxCache(0)
		c.begin("k", t0)
		c.finish("k", nil, t0)
		if v, _ := c.begin("k", t0.Add(time.Second)); v != absorbed {
			t.Fatalf("dropped request retransmitted: %v, want absorbed", v)
		}
	})

	t.Run("the memory cap drops the oldest answers first", func(t *testing.T) {
		big := bytes.Repeat([]byte("a"), 1000)
		c := newTxCache(10_000)
		for i := range 30 {
			k := "k" + strings.Repeat("x", i)
			now := t0.Add(time.Duration(i) * c.span) // one generation each
			c.begin(k, now)
			c.finish(k, big, now)
		}
		_, _, mem := c.stats()
		if mem > 10_000 {
			t.Fatalf("cache holds %d bytes, cap 10000", mem)
		}
		last := "k" + strings.Repeat("x", 29)
		if v, _ := c.begin(last, t0.Add(29*c.span)); v != repeat {
			t.Fatalf("newest answer: %v, want repeat", v)
		}
		if v, _ := c.begin("k", t0.Add(29*c.span)); v != fresh {
			t.Fatalf("oldest answer survived the cap: %v", v)
		}
	})

	t.Run("entries spread over many chunks are all found whole", func(t *testing.T) {
		c := newTxCache(0)
		c.chunk = 100 // a few entries per chunk, and one entry larger than a chunk
		want := map[string][]byte{}
		for i := range 200 {
			k := "key-" + strings.Repeat("k", i%7) + string(rune('a'+i%26)) + strings.Repeat("z", i/26)
			a := bytes.Repeat([]byte{byte('A' + i%26)}, 1+i%40)
			if i == 77 {
				a = bytes.Repeat([]byte("big"), 100)
			}
			c.begin(k, t0)
			c.finish(k, a, t0)
			want[k] = a
		}
		if len(c.gens) != 1 || len(c.gens[0].chunks) < 20 {
			t.Fatalf("%d generations, %d chunks: the test meant one generation of many chunks", len(c.gens), len(c.gens[0].chunks))
		}
		for k, a := range want {
			if v, got := c.begin(k, t0); v != repeat || !bytes.Equal(got, a) {
				t.Fatalf("%s: %v %q, want repeat of %q", k, v, got, a)
			}
		}
		if _, _, mem := c.stats(); mem != c.gens[0].used {
			t.Fatalf("stats say %d bytes, the generation uses %d", mem, c.gens[0].used)
		}
	})

	t.Run("keys that collide in the hash are told apart by their bytes", func(t *testing.T) {
		c := newTxCache(0)
		c.begin("a", t0)
		c.finish("a", answer, t0)
		// Forge the index so that "b" hashes to a's slot: its bytes still differ.
		g := c.gens[0]
		for _, s := range g.index {
			g.index[hashOf(c, "b")] = s
		}
		if v, _ := c.begin("b", t0); v != fresh {
			t.Fatalf("colliding key got another transaction's answer: %v", v)
		}
	})
}

func hashOf(c *txCache, key string) uint64 { return maphash.String(c.seed, key) }
