package location

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"sort"
	"testing"
	"time"
)

// checkIndex fails t unless m's expiry index files every AOR with bindings exactly once, in
// the slot of its earliest expiry, and holds nothing else: no empty slot, a valid heap.
func checkIndex(t *testing.T, m *Memory) {
	t.Helper()
	x := &m.due
	seen := map[*aorEntry]bool{}
	for sec, s := range x.slots {
		if s.sec != sec || s.head == nil {
			t.Fatalf("slot %d: sec %d, head %v", sec, s.sec, s.head)
		}
		if s.index < 0 || s.index >= len(x.order) || x.order[s.index] != s {
			t.Fatalf("slot %d not at its heap position %d", sec, s.index)
		}
		var prev *aorEntry
		for e := s.head; e != nil; e = e.next {
			if e.slot != s || e.prev != prev || seen[e] {
				t.Fatalf("slot %d: %s badly linked", sec, e.aor)
			}
			seen[e] = true
			prev = e
		}
	}
	if len(x.order) != len(x.slots) {
		t.Fatalf("%d slots in the heap, %d in the map", len(x.order), len(x.slots))
	}
	for i := 1; i < len(x.order); i++ {
		if x.order[(i-1)/2].sec > x.order[i].sec {
			t.Fatalf("heap order broken at %d", i)
		}
	}
	for aor, e := range m.aors {
		if len(e.bindings) == 0 {
			if e.slot != nil || seen[e] {
				t.Fatalf("%s has no bindings but is indexed", aor)
			}
			continue
		}
		if !seen[e] {
			t.Fatalf("%s has bindings but is not indexed", aor)
		}
		if first := earliest(e.bindings); !e.first.Equal(first) || e.slot.sec != first.Unix() {
			t.Fatalf("%s filed under %v in slot %d, earliest expiry %v", aor, e.first, e.slot.sec, first)
		}
	}
}

func binding(contact string, exp time.Time) Binding {
	return Binding{Contact: contact, ExpiresAt: exp, CallID: "c-" + contact}
}

// set makes aor hold exactly bs, as a REGISTER listing every contact would.
func set(t *testing.T, m *Memory, aor string, now time.Time, bs ...Binding) {
	t.Helper()
	if _, err := m.Update(context.Background(), aor, now, func([]Binding) ([]Binding, error) {
		return bs, nil
	}); err != nil {
		t.Fatal(err)
	}
	checkIndex(t, m)
}

// expire runs Expire and returns the expired contacts, sorted.
func expire(t *testing.T, m *Memory, now time.Time, limit int) []string {
	t.Helper()
	gone, err := m.Expire(context.Background(), now, limit)
	if err != nil {
		t.Fatal(err)
	}
	checkIndex(t, m)
	out := []string{}
	for _, b := range gone {
		out = append(out, b.Contact)
	}
	sort.Strings(out)
	return out
}

func TestExpiryIndex(t *testing.T) {
	t0 := time.Unix(1_900_000_000, 0)
	sec := func(n float64) time.Time { return t0.Add(time.Duration(n * float64(time.Second))) }
	type step struct {
		at    float64 // seconds after t0
		aor   string  // set aor to bs, else Expire
		bs    []Binding
		limit int
		want  []string // expired contacts, sorted
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"bindings of one AOR with different expiries expire one at a time", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(10)), binding("2", sec(20)), binding("3", sec(30))}},
			{at: 9.999, want: []string{}},
			{at: 10, want: []string{"1"}},
			{at: 25, want: []string{"2"}},
			{at: 30, want: []string{"3"}},
			{at: 100, want: []string{}},
		}},
		{"a refresh moving an AOR later leaves nothing at the old time", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(10))}},
			{at: 5, aor: "a", bs: []Binding{binding("1", sec(3605))}},
			{at: 3604, want: []string{}},
			{at: 3605, want: []string{"1"}},
		}},
		{"a refresh moving an AOR earlier expires it at the new time", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(3600))}},
			{at: 1, aor: "a", bs: []Binding{binding("1", sec(30))}},
			{at: 30, want: []string{"1"}},
			{at: 3600, want: []string{}},
		}},
		{"the earliest binding removed, the AOR is due at the next one", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(10)), binding("2", sec(50))}},
			{at: 1, aor: "a", bs: []Binding{binding("2", sec(50))}},
			{at: 49, want: []string{}},
			{at: 50, want: []string{"2"}},
		}},
		{"a removed AOR is never reported", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(10))}},
			{at: 0, aor: "b", bs: []Binding{binding("2", sec(10))}},
			{at: 1, aor: "a"},
			{at: 20, want: []string{"2"}},
		}},
		{"the limit stopping inside one AOR's bindings", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(1)), binding("2", sec(1)), binding("3", sec(1))}},
			{at: 5, limit: 1, want: []string{"1"}},
			{at: 5, limit: 1, want: []string{"2"}},
			{at: 5, limit: 1, want: []string{"3"}},
		}},
		{"one second's slot holds AORs due before and after now", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(10.2))}},
			{at: 0, aor: "b", bs: []Binding{binding("2", sec(10.7))}},
			{at: 0, aor: "c", bs: []Binding{binding("3", sec(10))}},
			{at: 10.5, want: []string{"1", "3"}},
			{at: 10.6, want: []string{}},
			{at: 10.7, want: []string{"2"}},
		}},
		{"a second's slot emptied and filled again", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(10))}},
			{at: 1, aor: "a"},
			{at: 2, aor: "b", bs: []Binding{binding("2", sec(10.5))}},
			{at: 11, want: []string{"2"}},
		}},
		{"a refresh within its second stays in its slot", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(10.2))}},
			{at: 1, aor: "a", bs: []Binding{binding("1", sec(10.9))}},
			{at: 10.5, want: []string{}},
			{at: 10.9, want: []string{"1"}},
		}},
		{"after a long pause Expire crosses many seconds in one call", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(1)), binding("2", sec(86_400))}},
			{at: 0, aor: "b", bs: []Binding{binding("3", sec(7))}},
			{at: 0, aor: "c", bs: []Binding{binding("4", sec(3600)), binding("5", sec(100_000))}},
			{at: 0, aor: "d", bs: []Binding{binding("6", sec(200_000))}},
			{at: 100_000, want: []string{"1", "2", "3", "4", "5"}},
			{at: 1_000_000, want: []string{"6"}},
		}},
		{"bindings already expired when stored are reported at once", []step{
			{at: 100, aor: "a", bs: []Binding{binding("1", sec(-5)), binding("2", sec(200))}},
			{at: 100, want: []string{"1"}},
		}},
		{"an expired AOR registering again is indexed again", []step{
			{at: 0, aor: "a", bs: []Binding{binding("1", sec(10))}},
			{at: 10, want: []string{"1"}},
			{at: 20, aor: "a", bs: []Binding{binding("1", sec(30))}},
			{at: 30, want: []string{"1"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := NewMemory()
			for i, st := range tt.steps {
				if st.aor != "" {
					set(t, m, st.aor, sec(st.at), st.bs...)
					continue
				}
				if got := expire(t, m, sec(st.at), st.limit); !slices.Equal(got, st.want) {
					t.Fatalf("step %d, Expire at %gs: %v, want %v", i, st.at, got, st.want)
				}
			}
		})
	}
}

func TestSameKeyIsKeyEquality(t *testing.T) {
	bs := []Binding{
		{Contact: "sip:a@h"},
		{Contact: "sip:b@h"},
		{Contact: "sip:a@h", InstanceID: "<urn:uuid:1>"},
		{Contact: "sip:b@h", InstanceID: "<urn:uuid:1>"},
		{Contact: "sip:a@h", InstanceID: "<urn:uuid:2>"},
		{Contact: "instance:<urn:uuid:1>"}, // not a URI a phone sends, but Key would match it
		{Contact: "instance:"},
	}
	for _, a := range bs {
		for _, b := range bs {
			if got, want := sameKey(a, b), a.Key() == b.Key(); got != want {
				t.Errorf("sameKey(%+v, %+v) = %v, Key equality %v", a, b, got, want)
			}
		}
	}
}

func TestExpireLimitLeavesTheRestForTheNextCall(t *testing.T) {
	t0 := time.Unix(1_900_000_000, 0)
	m := NewMemory()
	set(t, m, "a", t0, binding("1", t0.Add(time.Second)), binding("2", t0.Add(2*time.Second)), binding("3", t0.Add(3*time.Second)))
	set(t, m, "b", t0, binding("4", t0.Add(time.Second)), binding("5", t0.Add(3*time.Second)))
	set(t, m, "c", t0, binding("6", t0.Add(time.Minute)))
	var all []string
	for i, want := range []int{2, 2, 1, 0} {
		got := expire(t, m, t0.Add(10*time.Second), 2)
		if len(got) != want {
			t.Fatalf("call %d expired %v, want %d", i, got, want)
		}
		all = append(all, got...)
	}
	sort.Strings(all)
	if !slices.Equal(all, []string{"1", "2", "3", "4", "5"}) {
		t.Fatalf("expired in batches of 2: %v", all)
	}
	if got := expire(t, m, t0.Add(time.Minute), 2); !slices.Equal(got, []string{"6"}) {
		t.Fatalf("then at a minute: %v", got)
	}
}

func TestMemoryKnownKeepsExpiredAndRemovedAORs(t *testing.T) {
	t0 := time.Unix(1_900_000_000, 0)
	m := NewMemory()
	named := binding("1", t0.Add(time.Minute))
	named.DisplayName = "Alice"
	set(t, m, "a", t0, named)
	set(t, m, "b", t0, binding("2", t0.Add(time.Hour)))
	set(t, m, "b", t0) // unregistered
	if got := expire(t, m, t0.Add(2*time.Minute), 0); !slices.Equal(got, []string{"1"}) {
		t.Fatalf("expired %v", got)
	}
	known, _ := m.Known(context.Background())
	if fmt.Sprint(known) != "map[a:Alice b:]" {
		t.Fatalf("known %v", known)
	}
	if aors, _ := m.AORs(context.Background(), t0); len(aors) != 0 {
		t.Fatalf("AORs %v", aors)
	}
	if e := m.aors["a"]; e.bindings != nil {
		t.Fatalf("an AOR without bindings keeps its array: %v", e.bindings)
	}
}

// TestExpiryIndexMatchesModel runs random updates and sweeps, the clock moving on in steps
// from milliseconds to days, against a plain list of every stored binding.
func TestExpiryIndexMatchesModel(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	m := NewMemory()
	model := map[string][]Binding{} // aor -> stored bindings, expired ones included
	now := time.Unix(1_900_000_000, 0)
	jumps := []time.Duration{time.Millisecond, 300 * time.Millisecond, time.Second, time.Minute, time.Hour, 48 * time.Hour}
	for i := range 20_000 {
		if r.IntN(4) == 0 {
			now = now.Add(time.Duration(r.Int64N(int64(jumps[r.IntN(len(jumps))]))))
		}
		if r.IntN(5) > 0 {
			aor := fmt.Sprintf("%d@d", r.IntN(50))
			var bs []Binding
			for c := range r.IntN(4) {
				// Few distinct seconds, so AORs share slots, empty them and fill them again.
				exp := now.Truncate(time.Second).Add(time.Duration(r.IntN(130)-10) * time.Second)
				if r.IntN(2) == 0 {
					exp = exp.Add(time.Duration(r.Int64N(int64(time.Second))))
				}
				bs = append(bs, binding(fmt.Sprintf("sip:%d-%s", c+r.IntN(2)*10, aor), exp))
			}
			set(t, m, aor, now, bs...)
			next := normalize(aor, bs)
			stored := slices.Clone(next)
			for _, b := range model[aor] {
				if !b.Live(now) && !hasKeyOf(next, b) {
					stored = append(stored, b)
				}
			}
			model[aor] = stored
			continue
		}
		limit := r.IntN(4) // 0: no limit
		gone, err := m.Expire(context.Background(), now, limit)
		if err != nil {
			t.Fatal(err)
		}
		checkIndex(t, m)
		due := 0
		for _, bs := range model {
			for _, b := range bs {
				if !b.Live(now) {
					due++
				}
			}
		}
		if want := min(due, limit); len(gone) != want && !(limit <= 0 && len(gone) == due) {
			t.Fatalf("op %d: Expire(limit %d) returned %d of %d due", i, limit, len(gone), due)
		}
		for _, g := range gone {
			bs := model[g.AOR]
			j := slices.IndexFunc(bs, func(b Binding) bool { return b.Contact == g.Contact && b.ExpiresAt.Equal(g.ExpiresAt) })
			if j < 0 || g.Live(now) {
				t.Fatalf("op %d: Expire returned %s of %s, not a due stored binding", i, g.Contact, g.AOR)
			}
			model[g.AOR] = slices.Delete(bs, j, j+1)
		}
		for aor, bs := range model {
			var held []Binding
			if e := m.aors[aor]; e != nil {
				held = e.bindings
			}
			if !slices.EqualFunc(held, bs, func(a, b Binding) bool { return a.Contact == b.Contact && a.ExpiresAt.Equal(b.ExpiresAt) }) {
				t.Fatalf("op %d: %s holds %v, model %v", i, aor, held, bs)
			}
		}
	}
}
