package location

import (
	"errors"
	"slices"
	"strconv"
	"strings"
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

// parseWindow reads the text form; "" is the empty window.
func parseWindow(v string) (nonceWindow, error) {
	var w nonceWindow
	if v == "" {
		return w, nil
	}
	parts := strings.Split(v, " ")
	if len(parts) < 2 || len(parts) > 2+maxWindow {
		return w, errWindowSyntax
	}
	until, err := strconv.ParseInt(parts[0], 16, 64)
	if err != nil {
		return w, errWindowSyntax
	}
	w.until = until
	if w.floor, err = parseStamp(parts[1]); err != nil {
		return w, err
	}
	for _, p := range parts[2:] {
		st, nc, ok := strings.Cut(p, "=")
		if !ok {
			return w, errWindowSyntax
		}
		var e windowEntry
		if e.s, err = parseStamp(st); err != nil {
			return w, err
		}
		if e.nc, err = strconv.ParseUint(nc, 16, 64); err != nil {
			return w, errWindowSyntax
		}
		w.ents = append(w.ents, e)
	}
	return w, nil
}

func parseStamp(v string) (stamp, error) {
	is, id, ok := strings.Cut(v, ".")
	if !ok {
		return stamp{}, errWindowSyntax
	}
	issued, err1 := strconv.ParseInt(is, 16, 64)
	n, err2 := strconv.ParseUint(id, 16, 64)
	if err1 != nil || err2 != nil {
		return stamp{}, errWindowSyntax
	}
	return stamp{issued, n}, nil
}

// String is the text form.
func (w nonceWindow) String() string {
	b := make([]byte, 0, 24+len(w.ents)*32)
	b = strconv.AppendInt(b, w.until, 16)
	b = append(b, ' ')
	b = appendStamp(b, w.floor)
	for _, e := range w.ents {
		b = append(b, ' ')
		b = appendStamp(b, e.s)
		b = append(b, '=')
		b = strconv.AppendUint(b, e.nc, 16)
	}
	return string(b)
}

func appendStamp(b []byte, s stamp) []byte {
	b = strconv.AppendInt(b, s.issued, 16)
	b = append(b, '.')
	return strconv.AppendUint(b, s.id, 16)
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
