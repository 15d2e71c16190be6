package location

import (
	"strconv"
	"testing"
	"time"
)

func TestRecentReads(t *testing.T) {
	now := time.Unix(1_900_000_000, 0)
	c := newRecentReads(func() time.Time { return now })
	hash := map[string]string{"sip:a": "{}"}

	c.put("a@d", hash, nil)
	if e, ok := c.take("a@d"); !ok || e.hash["sip:a"] != "{}" {
		t.Fatalf("take after put: %v %v", e, ok)
	}
	if _, ok := c.take("a@d"); ok {
		t.Fatal("a kept read was taken twice")
	}

	c.put("old@d", hash, nil)
	now = now.Add(recentTTL + time.Millisecond)
	if _, ok := c.take("old@d"); ok {
		t.Fatal("a read older than recentTTL was used")
	}

	// Two generations bound the entries; the newest survive.
	for i := range 3 * recentMax {
		c.put(strconv.Itoa(i)+"@d", hash, nil)
	}
	if n := c.len(); n > 2*recentMax {
		t.Fatalf("%d entries kept, at most %d", n, 2*recentMax)
	}
	if _, ok := c.take(strconv.Itoa(3*recentMax-1) + "@d"); !ok {
		t.Fatal("the newest read was dropped")
	}
	if _, ok := c.take("0@d"); ok {
		t.Fatal("the oldest read outlived two generations")
	}
}
