package location

import (
	"container/heap"
	"time"
)

// expiryIndex orders the memory store's AORs by the earliest expiry among their stored
// bindings, to the second: one slot per second that some AOR expires in, each slot an
// intrusive doubly linked list of its entries, and a min-heap of the slots.
//
// A refresh moves its AOR to a later slot by relinking three entries, where a heap of every
// AOR sifted it down some fifteen levels, two random entries compared on each (cache misses
// with 20,000 AORs). Only the first entry into a second and the last out of it touch the
// heap, which holds no more slots than the longest expiry granted has seconds, few enough
// to stay in cache. Within a slot entries are in no order: the slot of the current second
// may hold entries not due until later in that second, which Expire passes over (on each
// call in that second: a second's worth of registrations at most, never the table).
type expiryIndex struct {
	slots map[int64]*expirySlot
	order slotHeap
}

// expirySlot holds the entries whose earliest expiry falls in one second.
type expirySlot struct {
	sec   int64 // Unix seconds
	head  *aorEntry
	index int // position in expiryIndex.order
}

// set files e under first, its earliest expiry. Staying within its second costs nothing.
func (x *expiryIndex) set(e *aorEntry, first time.Time) {
	e.first = first
	sec := first.Unix()
	if e.slot != nil && e.slot.sec == sec {
		return
	}
	x.remove(e)
	s := x.slot(sec)
	e.slot, e.next = s, s.head
	if s.head != nil {
		s.head.prev = e
	}
	s.head = e
}

// remove takes e out of the index, if it is in it.
func (x *expiryIndex) remove(e *aorEntry) {
	s := e.slot
	if s == nil {
		return
	}
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		s.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	}
	e.slot, e.prev, e.next = nil, nil, nil
	if s.head == nil {
		delete(x.slots, s.sec)
		heap.Remove(&x.order, s.index)
	}
}

// slot returns the slot of sec, making it when no entry is in that second yet.
func (x *expiryIndex) slot(sec int64) *expirySlot {
	s := x.slots[sec]
	if s == nil {
		if x.slots == nil {
			x.slots = map[int64]*expirySlot{}
		}
		s = &expirySlot{sec: sec}
		x.slots[sec] = s
		heap.Push(&x.order, s)
	}
	return s
}

// due returns the earliest slot if its second has begun at now, else nil: the entries
// that may be due are in it.
func (x *expiryIndex) due(now time.Time) *expirySlot {
	if len(x.order) == 0 || x.order[0].sec > now.Unix() {
		return nil
	}
	return x.order[0]
}

type slotHeap []*expirySlot

func (h slotHeap) Len() int           { return len(h) }
func (h slotHeap) Less(i, j int) bool { return h[i].sec < h[j].sec }
func (h slotHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index, h[j].index = i, j
}
func (h *slotHeap) Push(x any) {
	s := x.(*expirySlot)
	s.index = len(*h)
	*h = append(*h, s)
}
func (h *slotHeap) Pop() any {
	old := *h
	s := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	s.index = -1
	return s
}
