package location

import (
	"runtime"
	"strconv"
	"testing"
	"time"
)

func TestAORStates(t *testing.T) {
	c := newAORStates(200)
	rd := readOf(map[string]string{revField: "r1", nameField: "Alice", "sip:a": "{}"})
	if rd.legacy != nil || rd.rev != "r1" || !rd.hasName || rd.name != "Alice" || len(rd.fields) != 1 || rd.fields[0] != "sip:a" {
		t.Fatalf("readOf: %+v", rd)
	}
	c.put("a@d", rd)
	if got, ok := c.get("a@d"); !ok || got != rd {
		t.Fatalf("get after put: %v %v", got, ok)
	}
	if got, ok := c.get("a@d"); !ok || got != rd {
		t.Fatal("a kept state is gone after one use")
	}
	// A hash without a revision is compared field by field: not kept, and it replaces
	// what was kept.
	legacy := readOf(map[string]string{"sip:a": "{}"})
	if legacy.legacy == nil {
		t.Fatal("a hash without a revision is not legacy")
	}
	c.put("a@d", legacy)
	if _, ok := c.get("a@d"); ok {
		t.Fatal("a legacy read was kept")
	}
	if empty := readOf(map[string]string{}); empty.legacy != nil || empty.rev != "" {
		t.Fatalf("an empty hash: %+v", empty)
	}
	c.put("b@d", rd)
	c.drop("b@d")
	if _, ok := c.get("b@d"); ok {
		t.Fatal("a dropped state is kept")
	}

	// Two generations bound it; the most recent are kept, and one used moves up.
	for i := range 1000 {
		c.put(strconv.Itoa(i)+"@d", rd)
		if i == 950 {
			// 900 was put 50 ago: used now, it survives the next swaps.
			if _, ok := c.get("900@d"); !ok {
				t.Fatal("900 is gone 50 puts later")
			}
		}
	}
	if n := c.len(); n > 200 {
		t.Fatalf("%d states kept, at most 200", n)
	}
	for _, aor := range []string{"999@d", "900@d"} {
		if _, ok := c.get(aor); !ok {
			t.Fatalf("%s is not kept", aor)
		}
	}
	if _, ok := c.get("0@d"); ok {
		t.Fatal("the oldest state is kept")
	}
	none := newAORStates(0)
	none.put("a@d", rd)
	if _, ok := none.get("a@d"); ok || none.len() != 0 {
		t.Fatal("a cache of 0 AORs keeps one")
	}
}

// TestAORStatesMemory measures what a full default-sized aorStates holds (DefaultCacheAORs
// AORs, one binding each), to keep the figure in its comment honest.
func TestAORStatesMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("allocates a full cache")
	}
	now := time.Now()
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	c := newAORStates(DefaultCacheAORs)
	for i := range DefaultCacheAORs {
		aor := strconv.Itoa(100000+i) + "@pbx.example.com"
		b := Binding{
			AOR: aor, Contact: "sip:" + strconv.Itoa(100000+i) + "@198.51.100.23:53012;transport=udp",
			ExpiresAt: now.Add(time.Hour), Granted: 3600, AuthAt: now, UpdatedAt: now,
			CallID: "a84b4c76e66710-" + strconv.Itoa(i), CSeq: 2, Source: "198.51.100.23:53012",
			Transport: "udp", UserAgent: "Softphone/2.1 (Android 14)", NAT: true, DisplayName: "User " + strconv.Itoa(i),
		}
		v, err := appendBinding(nil, b)
		if err != nil {
			t.Fatal(err)
		}
		// As a registration leaves it: a full nonce window, parsed.
		w := new(nonceWindow)
		for k := range maxWindow {
			c := Count{Nonce: "n", NC: 1, TTL: 6 * time.Minute, Issued: now.Unix(), ID: 0x8f3a19c200000000 | uint64(i*maxWindow+k)}
			if err := w.take(c, now); err != nil {
				t.Fatal(err)
			}
		}
		rd := readOf(map[string]string{revField: newRev(), nameField: b.DisplayName, b.Key(): string(v)})
		rd.win = w
		c.put(aor, rd)
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	per := float64(after.HeapAlloc-before.HeapAlloc) / float64(c.len())
	t.Logf("%d AORs kept, %.0f bytes each, %.1f MiB in all", c.len(), per, float64(after.HeapAlloc-before.HeapAlloc)/(1<<20))
	if per > 2304 {
		t.Fatalf("%.0f bytes per kept AOR, more than the 2.25 KiB the cache's comment allows", per)
	}
	runtime.KeepAlive(c)
}
