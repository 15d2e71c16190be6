package registrar

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/authhook"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

// apply stores an authenticated REGISTER's contacts atomically (RFC 3261 §10.3 steps 6-8)
// and answers with every binding.
func (r *Registrar) apply(ctx context.Context, req *sip.Request, rq request, src Source, v authhook.Verdict, now time.Time) *answer {
	var ch change
	result, err := r.store.UpdateCounted(ctx, rq.aor, now, rq.count, r.changeFn(req, rq, src, v, now, &ch))
	return r.applied(ctx, req, rq, src, &ch, result, err, now)
}

// applyThen is apply through a Deferred store: then gets the answer from the goroutine
// that reads the store's.
func (r *Registrar) applyThen(ctx context.Context, req *sip.Request, rq request, src Source, v authhook.Verdict, now time.Time, then func(*answer)) {
	ch := new(change)
	r.defer_.UpdateCountedThen(ctx, rq.aor, now, rq.count, r.changeFn(req, rq, src, v, now, ch), func(result []location.Binding, err error) {
		then(r.applied(ctx, req, rq, src, ch, result, err, now))
	})
}

// change is what a REGISTER's update did, as its last run of changeFn's fn saw it.
type change struct {
	added, removed []location.Binding
	natKeys        []string // few: a REGISTER's contacts
}

// changeFn is the update of rq's AOR: the store may run it more than once, one run at a
// time, and ch holds what the last run did.
func (r *Registrar) changeFn(req *sip.Request, rq request, src Source, v authhook.Verdict, now time.Time, ch *change) func([]location.Binding) ([]location.Binding, error) {
	name := v.DisplayName
	if name == "" {
		name = rq.displayName
	}
	source := src.Addr()
	return func(cur []location.Binding) ([]location.Binding, error) {
		ch.added, ch.removed, ch.natKeys = ch.added[:0], ch.removed[:0], ch.natKeys[:0]
		if rq.wildcard {
			// "*" removes every binding, unless one of this Call-ID is newer (step 6).
			for _, b := range cur {
				if b.CallID == rq.callID && rq.cseq <= b.CSeq {
					return nil, errOutOfOrder
				}
			}
			ch.removed = append(ch.removed, cur...)
			return nil, nil
		}
		next := cur // fn owns cur (location.Store)
		for _, c := range rq.contacts {
			i := indexOf(next, c.key())
			// RFC 3261 §10.3 step 7: on the same Call-ID only a higher CSeq updates. An equal
			// one is no retransmission here: those are answered by the transaction cache, and
			// one that outlived it brings its nonce count again and is refused as a replay.
			if i >= 0 && next[i].CallID == rq.callID && rq.cseq <= next[i].CSeq {
				return nil, errOutOfOrder
			}
			if c.expires == 0 {
				if i >= 0 {
					ch.removed = append(ch.removed, next[i])
					next = append(next[:i], next[i+1:]...)
				}
				continue
			}
			granted := min(c.expires, r.cfg.MaxExpires)
			if v.Expires > 0 {
				granted = min(granted, v.Expires) // never more than the hook allows
			}
			var was location.Binding
			if i >= 0 {
				was = next[i]
			}
			b := location.Binding{
				AOR: rq.aor, Contact: c.uri, ExpiresAt: now.Add(time.Duration(granted) * time.Second),
				Granted: granted, AuthAt: now, UpdatedAt: now, CallID: own(was.CallID, rq.callID), CSeq: rq.cseq,
				Source: source, Transport: src.Transport, UserAgent: own(was.UserAgent, rq.userAgent),
				InstanceID: own(was.InstanceID, c.instance), Q: own(was.Q, c.q), NAT: behindNAT(req, c, src),
				DisplayName: own(was.DisplayName, name), CallHook: v.CallHook,
				CallStatusHook: v.CallStatusHook, WebRTC: src.Transport == "ws" || src.Transport == "wss",
			}
			if b.NAT {
				ch.natKeys = append(ch.natKeys, b.Key())
			}
			if i >= 0 {
				next[i] = b
			} else {
				next = append(next, b)
				ch.added = append(ch.added, b)
			}
		}
		if len(next) > r.cfg.MaxContacts {
			return nil, errTooMany
		}
		return next, nil
	}
}

// applied answers a REGISTER by its update's outcome, and tells Events what changed.
func (r *Registrar) applied(ctx context.Context, req *sip.Request, rq request, src Source, ch *change, result []location.Binding, err error, now time.Time) *answer {
	switch {
	case errors.Is(err, location.ErrReplay):
		return r.replayed(ctx, req, rq, src)
	case errors.Is(err, location.ErrStaleNonce):
		// Newer nonces were used on this AOR since: a fresh one, not an auth failure.
		r.count("stale")
		return r.challenge(req, rq, true)
	case errors.Is(err, errOutOfOrder):
		r.count("out_of_order")
		return r.reply(500, "Out Of Order")
	case errors.Is(err, errTooMany):
		r.count("too_many_contacts")
		return r.reply(403, "Forbidden").add("X-Reason", "too many contacts (at most "+strconv.Itoa(r.cfg.MaxContacts)+")")
	case err != nil:
		r.log.Warn("store unavailable", "aor", rq.aor, "err", err)
		r.count("store_unavailable")
		return r.unavailable()
	}
	if r.events != nil {
		for _, b := range ch.added {
			r.events.Registered(b)
		}
		for _, b := range ch.removed {
			r.events.Unregistered(b)
		}
	}
	switch {
	case len(rq.contacts) == 0 && !rq.wildcard:
		r.count("query")
	case rq.wildcard || allZero(rq.contacts):
		r.count("unregistered")
	default:
		r.count("ok")
	}
	return r.ok(result, ch.natKeys, now)
}

// natRefresh answers a refresh without credentials when every contact is already bound,
// live, NATed, from this very source and transport, in this Call-ID with a higher CSeq.
// The binding keeps its granted expiry; only CSeq and UpdatedAt move. nil: not a refresh.
func (r *Registrar) natRefresh(ctx context.Context, req *sip.Request, rq request, src Source, now time.Time) *answer {
	if !mayRefresh(rq) {
		return nil
	}
	// What this sidecar last saw of the AOR decides whether to try; the Update checks it.
	existing, known := r.store.Recall(rq.aor, now)
	if !known {
		var err error
		if existing, err = r.store.Lookup(ctx, rq.aor, now); err != nil {
			return nil
		}
	}
	if !refreshes(existing, rq, src) {
		return nil
	}
	var natKeys []string
	result, err := r.store.Update(ctx, rq.aor, now, func(cur []location.Binding) ([]location.Binding, error) {
		natKeys = natKeys[:0]
		for _, c := range rq.contacts {
			i := indexOf(cur, c.key())
			if i < 0 || cur[i].CallID != rq.callID || rq.cseq <= cur[i].CSeq {
				return nil, errOutOfOrder // changed under us: take the authenticated path
			}
			cur[i].CSeq, cur[i].UpdatedAt = rq.cseq, now
			natKeys = append(natKeys, cur[i].Key())
		}
		return cur, nil
	})
	if err != nil {
		return nil
	}
	r.count("nat_refresh")
	return r.ok(result, natKeys, now)
}

// mayRefresh says whether rq could be a NAT refresh at all: it binds contacts, and
// unregisters none (unregistering always needs credentials).
func mayRefresh(rq request) bool {
	if rq.wildcard || len(rq.contacts) == 0 {
		return false
	}
	for _, c := range rq.contacts {
		if c.expires == 0 {
			return false
		}
	}
	return true
}

// refreshes says whether rq, without credentials, would refresh existing as a NAT refresh:
// every contact bound, NATed, from this source and transport, in this Call-ID, with a
// higher CSeq.
func refreshes(existing []location.Binding, rq request, src Source) bool {
	if len(existing) == 0 {
		return false
	}
	source := "" // formatted once a binding passes the cheaper checks
	for _, c := range rq.contacts {
		i := indexOf(existing, c.key())
		if i < 0 {
			return false
		}
		b := existing[i]
		if !b.NAT || b.Transport != src.Transport || b.CallID != rq.callID || rq.cseq <= b.CSeq {
			return false
		}
		if source == "" {
			source = src.Addr()
		}
		if b.Source != source {
			return false
		}
	}
	return true
}

// ok is the 200 listing every live binding with its remaining expiry; a NATed contact of
// this request is told NATExpires so it keeps its pinhole open.
func (r *Registrar) ok(bindings []location.Binding, natKeys []string, now time.Time) *answer {
	a := r.reply(200, "OK")
	a.contacts = make([]boundContact, 0, len(bindings))
	for _, b := range bindings {
		left := int(b.ExpiresAt.Sub(now).Round(time.Second) / time.Second)
		if left <= 0 {
			continue
		}
		if len(natKeys) > 0 && slices.Contains(natKeys, b.Key()) {
			left = min(left, r.cfg.NATExpires)
		}
		// The stored Contact is the URI as sipgo printed it from the REGISTER, so it is
		// written back as it is rather than parsed again for every answer.
		a.contacts = append(a.contacts, boundContact{uri: b.Contact, instance: b.InstanceID, expires: left})
	}
	return a.add("Date", sipDate(now))
}

// sipDate is now as a SIP Date (RFC 3261 §20.17), formatted once per second.
func sipDate(now time.Time) string {
	sec := now.Unix()
	if d := lastDate.Load(); d != nil && d.sec == sec {
		return d.text
	}
	d := &formattedDate{sec: sec, text: now.UTC().Format("Mon, 02 Jan 2006 15:04:05 GMT")}
	lastDate.Store(d)
	return d.text
}

type formattedDate struct {
	sec  int64
	text string
}

var lastDate atomic.Pointer[formattedDate]

func indexOf(bs []location.Binding, key string) int {
	for i, b := range bs {
		if b.Key() == key {
			return i
		}
	}
	return -1
}

func allZero(cs []contact) bool {
	for _, c := range cs {
		if c.expires != 0 {
			return false
		}
	}
	return len(cs) > 0
}

// own is s in memory of its own, for a binding that outlives the request: the request's
// strings share the whole datagram's (sipserver's parser copies it once), which would
// stay alive, credentials and all, as long as the binding. A refresh that sends what the
// binding holds keeps the binding's copy.
func own(held, s string) string {
	if s == held {
		return held
	}
	return strings.Clone(s)
}
