package location

import (
	"errors"
	"math"
	"slices"
	"time"
)

// The Redis store keeps the digest nonce counts an AOR took in the AOR's own hash (field
// "nc"), not in a key per nonce: a registration then adds no key to Redis and no expiry to
// run, and its compare-and-set, which already proves the sidecar read the hash as it is,
// proves the counts current too, so the sidecar checks them itself.
//
// A nonceWindow holds the counts of the few newest nonces the AOR took (maxWindow) and a
// floor: a nonce at or below it (in the order of Issued, then ID) is refused as stale,
// whether or not it was ever counted. Every count the AOR took is either in the window,
// at or below that count, or of a nonce at or below the floor; taking a count needs it to
// be above both, so no count is taken twice. A phone whose nonce fell out of the window
// (more than maxWindow newer nonces used on its AOR since) gets a fresh one with
// stale=true, one more round trip.
//
// Text form: "until floor entry...", where until is the unix ms after which every nonce
// the window ever took is stale (the hash may go then, when it holds no binding), floor
// is a stamp, and each entry is "stamp=nc"; a stamp is "issued.id", all numbers in hex.
type nonceWindow struct {
	until int64
	floor stamp
	ents  []windowEntry
	room  [maxWindow + 1]windowEntry // where ents usually lives: a window fits on the stack
}

// stamp orders nonces: by issued, then by id (Count.Issued, Count.ID).
type stamp struct {
	issued int64
	id     uint64
}

func (s stamp) after(o stamp) bool {
	return s.issued > o.issued || s.issued == o.issued && s.id > o.id
}

type windowEntry struct {
	s  stamp
	nc uint64
}

// maxWindow is how many nonces an AOR's window holds: several phones on one AOR, each using
// its nonce for several registrations, keep theirs, and a REGISTER that lost a few races on
// its AOR still finds its nonce in the window.
const maxWindow = 8

// windowField is the AOR hash's field for the window; like rev and name it holds no ':',
// so no binding key can be it.
const windowField = "nc"

var errWindowSyntax = errors.New("malformed nonce window")

// parse reads the text form into w, which must be the zero window; "" is the empty
// window. (A nonceWindow is not copied: its entries live in its own room; see copyOf.)
func (w *nonceWindow) parse(v string) error {
	w.ents = w.room[:0]
	if v == "" {
		return nil
	}
	var ok bool
	var n uint64
	if n, v, ok = cutHex(v, ' '); !ok || n > math.MaxInt64 {
		return errWindowSyntax
	}
	w.until = int64(n)
	if w.floor, v, ok = cutStamp(v, ' '); !ok {
		return errWindowSyntax
	}
	for v != "" {
		if len(w.ents) == maxWindow {
			return errWindowSyntax
		}
		var e windowEntry
		if e.s, v, ok = cutStamp(v, '='); !ok {
			return errWindowSyntax
		}
		if e.nc, v, ok = cutHex(v, ' '); !ok {
			return errWindowSyntax
		}
		w.ents = append(w.ents, e)
	}
	return nil
}

// copyOf makes w a copy of o.
func (w *nonceWindow) copyOf(o *nonceWindow) {
	*w = *o
	w.ents = w.room[:len(o.ents)]
}

// cutStamp reads "issued.id" up to end (or the end of v) and returns the rest after it.
func cutStamp(v string, end byte) (s stamp, rest string, ok bool) {
	issued, rest, ok := cutHex(v, '.')
	if !ok || issued > math.MaxInt64 || rest == "" {
		return s, "", false
	}
	if s.id, rest, ok = cutHex(rest, end); !ok {
		return s, "", false
	}
	s.issued = int64(issued)
	return s, rest, true
}

// cutHex reads a lowercase hex number of 1 to 16 digits, without leading zeros, up to end
// (or the end of v), and returns the rest after end; the text form has nothing else.
func cutHex(v string, end byte) (n uint64, rest string, ok bool) {
	i := 0
	for ; i < len(v) && v[i] != end; i++ {
		c := v[i]
		switch {
		case '0' <= c && c <= '9':
			n = n<<4 | uint64(c-'0')
		case 'a' <= c && c <= 'f':
			n = n<<4 | uint64(c-'a'+10)
		default:
			return 0, "", false
		}
	}
	if i == 0 || i > 16 || (v[0] == '0' && i > 1) {
		return 0, "", false
	}
	if i == len(v) {
		return n, "", true
	}
	if i+1 == len(v) {
		return 0, "", false // a separator with nothing after it
	}
	return n, v[i+1:], true
}

// String is the text form.
func (w *nonceWindow) String() string {
	var buf [32 + (maxWindow+1)*48]byte
	b := appendHex(buf[:0], uint64(w.until))
	b = append(b, ' ')
	b = appendStamp(b, w.floor)
	for _, e := range w.ents {
		b = append(b, ' ')
		b = appendStamp(b, e.s)
		b = append(b, '=')
		b = appendHex(b, e.nc)
	}
	return string(b)
}

func appendStamp(b []byte, s stamp) []byte {
	b = appendHex(b, uint64(s.issued))
	b = append(b, '.')
	return appendHex(b, s.id)
}

func appendHex(b []byte, n uint64) []byte {
	var d [16]byte
	i := len(d)
	for {
		i--
		d[i] = "0123456789abcdef"[n&15]
		n >>= 4
		if n == 0 {
			break
		}
	}
	return append(b, d[i:]...)
}

// end is the window's end (unix ms), and whether it is after now: until then a hash that
// holds the window must stay.
func (w *nonceWindow) end(now time.Time) (until int64, live bool) {
	return w.until, w.until > now.UnixMilli()
}

// take takes c's count at now: ErrReplay when the window holds c's nonce at c.NC or above,
// ErrStaleNonce when the nonce is at or below the floor. Nonces stale at now (issued more
// than c.TTL ago) leave the window first, raising the floor.
func (w *nonceWindow) take(c Count, now time.Time) error {
	ttl := max(c.TTL.Milliseconds(), 1)
	cut := now.UnixMilli() - ttl // a nonce issued at or before this is stale
	w.ents = slices.DeleteFunc(w.ents, func(e windowEntry) bool {
		if e.s.issued*1000 > cut {
			return false
		}
		if e.s.after(w.floor) {
			w.floor = e.s
		}
		return true
	})
	s := stamp{c.Issued, c.ID}
	for i := range w.ents {
		if w.ents[i].s == s {
			if c.NC <= w.ents[i].nc {
				return ErrReplay
			}
			w.ents[i].nc = c.NC
			return nil
		}
	}
	if !s.after(w.floor) {
		return ErrStaleNonce
	}
	w.ents = append(w.ents, windowEntry{s, c.NC})
	if len(w.ents) > maxWindow {
		oldest := 0
		for i := range w.ents {
			if w.ents[oldest].s.after(w.ents[i].s) {
				oldest = i
			}
		}
		w.floor = w.ents[oldest].s // above the old floor: every entry is
		w.ents = slices.Delete(w.ents, oldest, oldest+1)
	}
	w.until = max(w.until, c.Issued*1000+ttl)
	return nil
}
