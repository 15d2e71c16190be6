package registrar

import (
	"context"
	"errors"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/emiago/sipgo/sip"

	"github.com/softphone-gateway/softphone-gateway/internal/sipdigest"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/authhook"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/digest"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
)

// contact is one Contact of a REGISTER with its requested expiry.
type contact struct {
	uri      string // the Contact URI as sent, without header parameters
	expires  int
	instance string // +sip.instance, if any
	q        string
	host     string
	port     int
}

func (c contact) key() string {
	return location.Binding{Contact: c.uri, InstanceID: c.instance}.Key()
}

// request is what the REGISTER says, checked.
type request struct {
	aor, user, host string
	callID          string
	cseq            uint32
	wildcard        bool
	contacts        []contact
	expires         int // what the phone asked for, for the hook
	userAgent       string
	displayName     string
	realm           string         // the realm it is challenged in
	count           location.Count // its nonce count, once credentials are checked
	// detached: answered by HandleLater with a Deferred store, on goroutines that must not
	// wait (the reader's, the hook's, the store's)
	detached bool
}

// errors that become answers
var (
	errOutOfOrder  = errors.New("out of order")
	errTooMany     = errors.New("too many contacts")
	errStoreFailed = errors.New("store failed")
)

// maxExpiresValue bounds any expires value before arithmetic (2^32-1, RFC 3261 §20.19).
const maxExpiresValue = 1<<32 - 1

func (r *Registrar) register(ctx context.Context, req *sip.Request, src Source, lt *later) *answer {
	now := r.now()
	rq, bad := r.parse(req)
	if bad != nil {
		r.count("bad_request")
		return bad
	}
	realm := r.cfg.Realm
	if realm == "" {
		realm = rq.host
	}
	rq.realm = realm
	rq.detached = lt != nil && r.defer_ != nil

	// A NATed phone refreshing its pinhole from the same place is answered from the store
	// without a challenge or a hook call (jambonz behaviour).
	if header(req, "authorization") == nil {
		if res := r.natRefresh(ctx, req, rq, src, now); res != nil {
			return res
		}
		r.count("challenged")
		return r.challenge(req, rq, false)
	}

	creds, res := r.credentials(req, &rq, src)
	if res != nil {
		return res
	}

	hr := authhook.Request{
		Method: string(req.Method), Expires: rq.expires, Scheme: "digest", Username: creds.Username,
		Realm: creds.Realm, Nonce: creds.Nonce, URI: creds.URI, Response: creds.Response, QOP: creds.QOP,
		NC: creds.NC, CNonce: creds.CNonce, Algorithm: creds.Algorithm,
		SourceAddress: src.IP, SourcePort: src.Port,
	}
	if lh, ok := r.hook.(LaterHook); ok && lt != nil {
		lh.CheckLater(hr, func(v authhook.Verdict, err error) {
			r.judgeThen(ctx, req, rq, src, v, err, now, func(a *answer) { lt.done(r.finish(lt.w, req, a)) })
		})
		return waiting
	}
	verdict, err := r.hook.Check(ctx, hr)
	return r.judge(ctx, req, rq, src, verdict, err, now)
}

// judgeThen is judge for a REGISTER answered later: then gets the answer, from the
// goroutine that reads the store's when the store is Deferred and the REGISTER detached.
func (r *Registrar) judgeThen(ctx context.Context, req *sip.Request, rq request, src Source, verdict authhook.Verdict, err error, now time.Time, then func(*answer)) {
	if err != nil || !verdict.OK || !rq.detached {
		then(r.judge(ctx, req, rq, src, verdict, err, now))
		return
	}
	r.applyThen(ctx, req, rq, src, verdict, now, then)
}

// judge answers an authenticated REGISTER by the hook's verdict.
func (r *Registrar) judge(ctx context.Context, req *sip.Request, rq request, src Source, verdict authhook.Verdict, err error, now time.Time) *answer {
	if err != nil {
		r.log.Warn("auth hook gave no verdict", "aor", rq.aor, "source", src.Addr(), "err", err)
		r.count("hook_unavailable")
		return r.unavailable()
	}
	if !verdict.OK {
		r.authFailed(ctx, rq, src, "rejected by auth hook")
		r.count("forbidden")
		res := r.reply(403, "Forbidden")
		if msg := headerSafe(verdict.Msg); msg != "" {
			res.add("X-Reason", msg)
		}
		return res
	}
	return r.apply(ctx, req, rq, src, verdict, now)
}

// credentials checks the Authorization header up to (not including) the hook, and sets
// rq.count: a response means the REGISTER ends here.
//
// A nonce count this sidecar has already taken is a replay, refused before the hook. The
// count is taken by the store together with the bindings (apply's UpdateCounted), so that
// with Redis a registration costs one round trip, not two; a replay sent to another sidecar
// than the original, which cannot tell it from here, is refused there, after its hook call.
func (r *Registrar) credentials(req *sip.Request, rq *request, src Source) (sipdigest.Credentials, *answer) {
	realm := rq.realm
	var creds sipdigest.Credentials
	var err error
	found := false
	var buf [4]sip.Header
	for _, h := range headers(req, "authorization", buf[:0]) {
		c, perr := sipdigest.Parse(h.Value())
		if perr == nil && c.Realm == realm {
			creds, err, found = c, nil, true
			break
		}
		if !found {
			err = perr
		}
	}
	switch {
	case errors.Is(err, sipdigest.ErrNotDigest), errors.Is(err, sipdigest.ErrAlgorithm):
		r.count("challenged")
		return creds, r.challenge(req, *rq, false)
	case err != nil:
		r.count("bad_request")
		return creds, r.reply(400, "Malformed Authorization")
	case !found:
		// Credentials for another realm: challenge for ours.
		r.count("challenged")
		return creds, r.challenge(req, *rq, false)
	}
	if !offered(r.cfg.Algorithms, creds.Algorithm) {
		r.count("challenged")
		return creds, r.challenge(req, *rq, false)
	}
	if creds.Username != rq.user {
		// RFC 3261 §10.3 step 3: the authenticated user may not bind someone else's AOR.
		r.authFailed(context.Background(), *rq, src, "auth username differs from the To user")
		r.count("forbidden")
		return creds, r.reply(403, "Forbidden")
	}
	if creds.QOP != "auth" {
		// We offered qop=auth; without it there is no nonce count and no replay guard.
		r.count("challenged")
		return creds, r.challenge(req, *rq, false)
	}
	info, err := r.nonces.Inspect(creds.Nonce, rq.aor)
	switch {
	case errors.Is(err, digest.ErrStale):
		r.count("stale")
		return creds, r.challenge(req, *rq, true)
	case err != nil:
		r.count("challenged")
		return creds, r.challenge(req, *rq, false)
	}
	nc, err := digest.ParseNC(creds.NC)
	if err != nil {
		r.count("bad_request")
		return creds, r.reply(400, "Malformed Authorization")
	}
	rq.count = location.Count{Nonce: creds.Nonce, NC: nc, TTL: r.nonces.TTL() + time.Minute,
		Serial: info.Serial, Issued: info.Issued, ID: info.ID}
	if r.store.Replayed(rq.count) {
		return creds, r.replayed(context.Background(), req, *rq, src)
	}
	return creds, nil
}

// replayed answers a REGISTER whose nonce count was already taken: a fresh challenge.
func (r *Registrar) replayed(ctx context.Context, req *sip.Request, rq request, src Source) *answer {
	r.authFailed(ctx, rq, src, "replayed nonce count")
	r.count("replay")
	return r.challenge(req, rq, false)
}

// challenge is a 401 with one WWW-Authenticate per offered algorithm, in order of
// preference (RFC 8760 §2.4), all on one nonce, made for rq's AOR: a nonce count taken
// for one AOR then says nothing of any other, since no other accepts the nonce.
func (r *Registrar) challenge(req *sip.Request, rq request, stale bool) *answer {
	realm := rq.realm
	res := r.reply(401, "Unauthorized")
	res.digest = challenge{realm: realm, nonce: r.nonces.MakeFor(rq.aor), algorithms: r.cfg.Algorithms, stale: stale}
	return res
}

// authFailed writes the fail2ban line (never the digest) and tells the guard, on a
// goroutine of its own when rq is detached (its Bans may wait for Redis).
func (r *Registrar) authFailed(ctx context.Context, rq request, src Source, reason string) {
	r.log.Warn("SIP_AUTH_FAILED", "source", src.Addr(), "ip", src.IP, "aor", rq.aor, "reason", reason)
	if now := r.now(); rq.detached {
		go r.guard.failed(context.WithoutCancel(ctx), src, now)
	} else {
		r.guard.failed(ctx, src, now)
	}
}

// header is req's first header called name, in any case; headers appends all of them to out
// (a caller's array on its stack holds the usual one or two). sipgo's
// GetHeader lower-cases the name of every header it passes, allocating for each one outside
// its short list of common names (Authorization, User-Agent, Expires…): several allocations
// per lookup. These compare in place.
func header(req *sip.Request, name string) sip.Header {
	for _, h := range req.Headers() {
		if strings.EqualFold(h.Name(), name) {
			return h
		}
	}
	return nil
}

func headers(req *sip.Request, name string, out []sip.Header) []sip.Header {
	for _, h := range req.Headers() {
		if strings.EqualFold(h.Name(), name) {
			out = append(out, h)
		}
	}
	return out
}

// parse checks the REGISTER's headers; a non-nil response is the answer to a bad one.
func (r *Registrar) parse(req *sip.Request) (request, *answer) {
	var rq request
	to, from, callID, cseq := req.To(), req.From(), req.CallID(), req.CSeq()
	if to == nil || from == nil || callID == nil || cseq == nil || string(*callID) == "" {
		return rq, r.reply(400, "Missing Mandatory Header")
	}
	if cseq.MethodName != sip.REGISTER {
		return rq, r.reply(400, "CSeq Method Mismatch")
	}
	scheme := strings.ToLower(to.Address.Scheme)
	if (scheme != "sip" && scheme != "sips") || to.Address.User == "" || to.Address.Host == "" {
		return rq, r.reply(400, "Bad To URI")
	}
	if len(to.Address.User) > 64 || strings.ContainsAny(to.Address.User, ":@\"\\ \t") {
		return rq, r.reply(400, "Bad To URI")
	}
	rq.user = to.Address.User
	rq.host = strings.ToLower(to.Address.Host)
	if len(r.cfg.Domains) > 0 && (!slices.Contains(r.cfg.Domains, rq.host) || !slices.Contains(r.cfg.Domains, strings.ToLower(req.Recipient.Host))) {
		return rq, r.reply(404, "Not Found")
	}
	rq.aor = rq.user + "@" + rq.host
	rq.callID = string(*callID)
	rq.cseq = cseq.SeqNo
	rq.displayName = from.DisplayName
	if ua := header(req, "user-agent"); ua != nil {
		rq.userAgent = ua.Value()
		if len(rq.userAgent) > 256 {
			rq.userAgent = rq.userAgent[:256]
		}
	}

	headerExpires := -1
	if h := header(req, "expires"); h != nil {
		v, ok := parseExpires(h.Value())
		if !ok {
			return rq, r.reply(400, "Bad Expires")
		}
		headerExpires = v
	}
	var buf [4]sip.Header
	hs := headers(req, "contact", buf[:0])
	if len(hs) > 64 {
		return rq, r.reply(400, "Too Many Contact Headers")
	}
	for _, h := range hs {
		ch, ok := h.(*sip.ContactHeader)
		if !ok {
			return rq, r.reply(400, "Bad Contact")
		}
		if ch.Address.Wildcard {
			rq.wildcard = true
			continue
		}
		cs := strings.ToLower(ch.Address.Scheme)
		if (cs != "sip" && cs != "sips") || ch.Address.Host == "" {
			return rq, r.reply(400, "Bad Contact")
		}
		c := contact{uri: uriString(&ch.Address), host: ch.Address.Host, port: ch.Address.Port}
		// Answers write the stored URI back between < and >: nothing in it may end that.
		if len(c.uri) > 512 || strings.ContainsAny(c.uri, "<>\"\r\n \t") {
			return rq, r.reply(400, "Bad Contact")
		}
		switch v, has := ch.Params.Get("expires"); {
		case has:
			e, ok := parseExpires(v)
			if !ok {
				return rq, r.reply(400, "Bad Contact Expires")
			}
			c.expires = e
		case headerExpires >= 0:
			c.expires = headerExpires
		default:
			c.expires = r.cfg.DefaultExpires
		}
		if v, has := ch.Params.Get("+sip.instance"); has {
			c.instance = strings.Trim(v, `"`)
			if len(c.instance) > 128 {
				return rq, r.reply(400, "Bad Contact")
			}
		}
		c.q, _ = ch.Params.Get("q")
		rq.contacts = append(rq.contacts, c)
	}
	// RFC 3261 §10.3 step 6: "*" only alone and only with Expires: 0.
	if rq.wildcard && (len(rq.contacts) > 0 || headerExpires != 0) {
		return rq, r.reply(400, "Invalid Wildcard Contact")
	}
	rq.expires = r.cfg.DefaultExpires
	if headerExpires >= 0 {
		rq.expires = headerExpires
	}
	for _, c := range rq.contacts {
		if c.expires > 0 && c.expires < r.cfg.MinExpires {
			return rq, r.reply(423, "Interval Too Brief").add("Min-Expires", strconv.Itoa(r.cfg.MinExpires))
		}
	}
	if len(rq.contacts) > 0 {
		rq.expires = rq.contacts[0].expires
	}
	return rq, nil
}

// parseExpires reads delta-seconds; values above 2^32-1 are clamped (RFC 3261 §20.19).
func parseExpires(s string) (int, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 20 {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v > maxExpiresValue {
		return maxExpiresValue, true
	}
	return int(v), true
}

// headerSafe makes a hook message fit a header: printable ASCII, short.
func headerSafe(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return -1
		}
		return r
	}, s)
	if len(s) > 128 {
		s = s[:128]
	}
	return strings.TrimSpace(s)
}

// behindNAT: UDP, or a Via sent-by or Contact that disagrees with the observed source.
func behindNAT(req *sip.Request, c contact, src Source) bool {
	if src.Transport == "udp" {
		return true
	}
	if v := req.Via(); v != nil && !sameHostPort(v.Host, v.Port, src) {
		return true
	}
	return !sameHostPort(c.host, c.port, src)
}

func sameHostPort(host string, port int, src Source) bool {
	if port == 0 {
		port = 5060
	}
	ip := net.ParseIP(strings.Trim(host, "[]"))
	return ip != nil && ip.Equal(net.ParseIP(src.IP)) && port == src.Port
}

func offered(algs []string, alg string) bool {
	for _, a := range algs {
		if strings.EqualFold(a, alg) {
			return true
		}
	}
	return false
}
