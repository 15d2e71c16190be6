package location_test

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"net"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location"
	"github.com/softphone-gateway/softphone-gateway/sipsidecar/internal/location/storetest"
)

var prefixSeq atomic.Int64

// openRedis opens a store with its own key prefix on srv, closed when the test ends.
func openRedis(t testing.TB, url string) (*location.Redis, string) {
	t.Helper()
	prefix := fmt.Sprintf("t%d:", prefixSeq.Add(1))
	s, err := location.OpenRedis(url, prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s, prefix
}

func TestRedisConformance(t *testing.T) {
	srv := testenv.StartRedis(t)
	storetest.Run(t, func(t *testing.T) location.Store {
		s, _ := openRedis(t, srv.URL())
		return s
	})
}

func TestRedisBansConformance(t *testing.T) {
	srv := testenv.StartRedis(t)
	storetest.RunBans(t, func(t *testing.T) location.Bans {
		s, _ := openRedis(t, srv.URL())
		return s.Bans()
	})
}

// The README copies the key layout from redis.go; this holds the code to it.
func TestRedisKeyLayout(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	s := location.NewRedis(raw, "")
	t0 := time.Unix(1_900_000_000, 0)
	_, err := s.Update(ctx, "201@pbx", t0, func([]location.Binding) ([]location.Binding, error) {
		return []location.Binding{
			{Contact: "sip:201@10.0.0.1", ExpiresAt: t0.Add(time.Minute), DisplayName: "Alice"},
			{Contact: "sip:201@10.0.0.2", InstanceID: "<urn:uuid:1>", ExpiresAt: t0.Add(time.Hour)},
		}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.UseNonce(ctx, location.Count{Nonce: "abc", NC: 7, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	fields, _ := raw.HGetAll(ctx, "sipsidecar:aor:201@pbx").Result()
	keys := slices.Sorted(maps.Keys(fields))
	if fmt.Sprint(keys) != "[instance:<urn:uuid:1> name rev sip:201@10.0.0.1]" {
		t.Fatalf("aor hash fields %v", keys)
	}
	if fields["name"] != "Alice" || len(fields["rev"]) < 8 {
		t.Fatalf("aor hash name %q, rev %q", fields["name"], fields["rev"])
	}
	if sc, _ := raw.ZScore(ctx, "sipsidecar:exp", "201@pbx").Result(); int64(sc) != t0.Add(time.Minute).UnixMilli() {
		t.Fatalf("exp score %v, want the earliest expiry in ms", sc)
	}
	if n, _ := raw.Exists(ctx, "sipsidecar:live").Result(); n != 0 {
		t.Fatal("a live key is written")
	}
	if name, _ := raw.HGet(ctx, "sipsidecar:known", "201@pbx").Result(); name != "Alice" {
		t.Fatalf("known %q", name)
	}
	nc, _ := raw.Get(ctx, "sipsidecar:nonce:abc").Result()
	ttl, _ := raw.PTTL(ctx, "sipsidecar:nonce:abc").Result()
	if nc != "7" || ttl <= 0 || ttl > time.Minute {
		t.Fatalf("nonce key %q ttl %s", nc, ttl)
	}
	if err := s.Close(); err != nil || raw.Ping(ctx).Err() != nil {
		t.Fatalf("Close closed a client it did not open: %v", err)
	}
}

func TestRedisSkipsUndecodableEntries(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s, prefix := openRedis(t, srv.URL())
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	t0 := time.Unix(1_900_000_000, 0)
	good := location.Binding{Contact: "sip:good", ExpiresAt: t0.Add(time.Hour)}
	if _, err := s.Update(ctx, "a@d", t0, func([]location.Binding) ([]location.Binding, error) { return []location.Binding{good}, nil }); err != nil {
		t.Fatal(err)
	}
	raw.HSet(ctx, prefix+"aor:a@d", "sip:bad", "{not json")
	got, err := s.Lookup(ctx, "a@d", t0)
	if err != nil || len(got) != 1 || got[0].Contact != "sip:good" {
		t.Fatalf("lookup with a garbage entry: %v %v", got, err)
	}
	// An index entry whose hash is gone is cleaned, not reported and not looped on.
	raw.ZAdd(ctx, prefix+"exp", redis.Z{Score: 1, Member: "ghost@d"})
	if gone, err := s.Expire(ctx, t0, 0); err != nil || len(gone) != 0 {
		t.Fatalf("expire with a dangling index entry: %v %v", gone, err)
	}
	if n, _ := raw.ZCard(ctx, prefix+"exp").Result(); n != 1 {
		t.Fatalf("exp index holds %d AORs, want 1", n)
	}
}

func TestOpenRedisRejectsBadURLs(t *testing.T) {
	for _, url := range []string{"", "http://127.0.0.1:6379", "redis://127.0.0.1:notaport", "redis://127.0.0.1:6379/notadb", "\x00"} {
		if s, err := location.OpenRedis(url, ""); err == nil {
			s.Close()
			t.Errorf("OpenRedis(%q) accepted", url)
		}
	}
}

// every runs each Store (and Bans) method once and returns its error by name; its Update
// adds a binding whose contact depends on now.
func every(ctx context.Context, s *location.Redis, now time.Time) map[string]error {
	b := location.Binding{Contact: fmt.Sprintf("sip:201@10.0.0.3;n=%d", now.UnixNano()), ExpiresAt: now.Add(time.Hour)}
	bans := s.Bans()
	errs := map[string]error{}
	_, errs["Update"] = s.Update(ctx, "201@pbx", now, func(cur []location.Binding) ([]location.Binding, error) {
		return append(cur, b), nil
	})
	then := make(chan error, 1)
	s.UpdateCountedThen(ctx, "202@pbx", now, location.Count{}, func(cur []location.Binding) ([]location.Binding, error) {
		return append(cur, b), nil
	}, func(_ []location.Binding, err error) { then <- err })
	select {
	case errs["UpdateCountedThen"] = <-then:
	case <-time.After(10 * time.Second):
		errs["UpdateCountedThen"] = errors.New("then never called")
	}
	_, errs["Lookup"] = s.Lookup(ctx, "201@pbx", now)
	_, errs["Expire"] = s.Expire(ctx, now, 10)
	_, errs["Known"] = s.Known(ctx)
	_, errs["AORs"] = s.AORs(ctx, now)
	errs["UseNonce"] = s.UseNonce(ctx, location.Count{Nonce: fmt.Sprint("n-", now.UnixNano()), NC: 1, TTL: time.Minute})
	errs["Ping"] = s.Ping(ctx)
	_, errs["Bans.Banned"] = bans.Banned(ctx, "192.0.2.1")
	_, errs["Bans.Fail"] = bans.Fail(ctx, "192.0.2.1", time.Minute)
	errs["Bans.Ban"] = bans.Ban(ctx, "192.0.2.2", time.Minute)
	return errs
}

func TestRedisRestartKeepsEverything(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s, prefix := openRedis(t, srv.URL())
	t0 := time.Now()
	b := location.Binding{Contact: "sip:201@10.0.0.1", ExpiresAt: t0.Add(time.Hour), DisplayName: "Alice", CallHook: "https://h/call"}
	short := location.Binding{Contact: "sip:202@10.0.0.2", ExpiresAt: t0.Add(time.Minute)}
	for aor, x := range map[string]location.Binding{"201@pbx": b, "202@pbx": short} {
		if _, err := s.Update(ctx, aor, t0, func([]location.Binding) ([]location.Binding, error) { return []location.Binding{x}, nil }); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.UseNonce(ctx, location.Count{Nonce: "n1", NC: 5, TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}

	srv.Stop() // SIGKILL: appendonly with fsync always must still have everything
	srv.Start(t)

	// The same client (a sidecar that kept running) and a new one (a restarted sidecar).
	s2, err := location.OpenRedis(srv.URL(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	for name, st := range map[string]location.Store{"same client": s, "new client": s2} {
		waitUp(t, st)
		got, err := st.Lookup(ctx, "201@pbx", t0)
		if err != nil || len(got) != 1 || got[0].Contact != b.Contact || got[0].CallHook != b.CallHook {
			t.Fatalf("%s after restart: %+v %v", name, got, err)
		}
		if known, err := st.Known(ctx); err != nil || known["201@pbx"] != "Alice" {
			t.Fatalf("%s known after restart: %v %v", name, known, err)
		}
		if aors, err := st.AORs(ctx, t0); err != nil || fmt.Sprint(aors) != "[201@pbx 202@pbx]" {
			t.Fatalf("%s AORs after restart: %v %v", name, aors, err)
		}
		if err := st.UseNonce(ctx, location.Count{Nonce: "n1", NC: 5, TTL: time.Hour}); !errors.Is(err, location.ErrReplay) {
			t.Fatalf("%s: nonce count forgotten across the restart: %v", name, err)
		}
	}
	// The expiry index survived too: the short binding is found without a scan.
	if gone, err := s2.Expire(ctx, t0.Add(2*time.Minute), 0); err != nil || len(gone) != 1 || gone[0].Contact != short.Contact {
		t.Fatalf("expire after restart: %+v %v", gone, err)
	}
}

// waitUp waits (bounded) for the client to reconnect after a restart.
func waitUp(t *testing.T, s location.Store) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for s.Ping(context.Background()) != nil {
		if time.Now().After(deadline) {
			t.Fatal("store did not come back within 5s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestRedisDownFailsFastWithErrUnavailableAndRecovers(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s, _ := openRedis(t, srv.URL())
	now := time.Now()
	for name, err := range every(ctx, s, now) {
		if err != nil {
			t.Fatalf("%s with redis up: %v", name, err)
		}
	}

	srv.Stop()
	for range 2 { // the pooled connections die first, then the dials are refused
		for name, err := range timed(t, func() map[string]error { return every(ctx, s, now) }) {
			if !errors.Is(err, location.ErrUnavailable) {
				t.Fatalf("%s with redis down: %v, want ErrUnavailable", name, err)
			}
			if errors.Is(err, redis.Nil) {
				t.Fatalf("%s leaked redis.Nil", name)
			}
		}
	}

	// Redis returns on the same port and data: the same client works again by itself.
	srv.Start(t)
	waitUp(t, s)
	for name, err := range every(ctx, s, now.Add(time.Second)) {
		if err != nil {
			t.Fatalf("%s after redis came back: %v", name, err)
		}
	}
	if got, err := s.Lookup(ctx, "201@pbx", now); err != nil || len(got) != 2 {
		t.Fatalf("bindings after the outage: %v %v", got, err)
	}
}

// timed runs f and fails when it took long: a dead Redis must cost each of the ten calls
// well under a second.
func timed(t *testing.T, f func() map[string]error) map[string]error {
	t.Helper()
	start := time.Now()
	errs := f()
	if d := time.Since(start); d > 3*time.Second {
		t.Fatalf("ten calls against a dead redis took %s", d)
	}
	return errs
}

func TestRedisThatNeverAnswersTimesOut(t *testing.T) {
	// A Redis that accepts and then hangs (frozen, or a half-open network path) must not
	// hang a REGISTER: each call gives up after the read timeout.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		var held []net.Conn // read nothing, answer nothing; closed with the listener
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	s, err := location.OpenRedis("redis://"+l.Addr().String()+"/0", "")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	start := time.Now()
	if err := s.Ping(ctx); !errors.Is(err, location.ErrUnavailable) {
		t.Fatalf("ping: %v", err)
	}
	if _, err := s.Lookup(ctx, "a@d", time.Now()); !errors.Is(err, location.ErrUnavailable) {
		t.Fatalf("lookup: %v", err)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Fatalf("two calls to a silent redis took %s", d)
	}
}

func TestRedisRespectsContextCancel(t *testing.T) {
	srv := testenv.StartRedis(t)
	s, _ := openRedis(t, srv.URL())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.Lookup(ctx, "a@d", time.Now()); err == nil {
		t.Fatal("lookup with a cancelled context succeeded")
	}
}

// benchRedis runs bench against a real redis-server twice: with appendfsync always (how
// testenv starts it: every write waits for the disk) and everysec (Redis's default for
// appendonly, what most deployments run).
func benchRedis(b *testing.B, bench func(*testing.B, location.Store)) {
	srv := testenv.StartRedis(b)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	for _, fsync := range []string{"always", "everysec"} {
		b.Run("fsync="+fsync, func(b *testing.B) {
			if err := raw.ConfigSet(context.Background(), "appendfsync", fsync).Err(); err != nil {
				b.Fatal(err)
			}
			s, _ := openRedis(b, srv.URL())
			bench(b, s)
		})
	}
}

func BenchmarkRedisUpdate(b *testing.B)         { benchRedis(b, benchUpdate) }
func BenchmarkRedisUpdateParallel(b *testing.B) { benchRedis(b, benchUpdateParallel) }
func BenchmarkRedisLookup(b *testing.B)         { benchRedis(b, benchLookup) }
func BenchmarkRedisUseNonce(b *testing.B)       { benchRedis(b, benchUseNonce) }
func BenchmarkRedisUseNonceFirst(b *testing.B)  { benchRedis(b, benchUseNonceFirst) }
func BenchmarkRedisExpire(b *testing.B)         { benchRedis(b, benchExpire) }

// pipelineCounter counts what a client sends: single commands and pipelines.
type pipelineCounter struct {
	singles, pipelines, piped atomic.Int32
}

func (c *pipelineCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *pipelineCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.singles.Add(1); return next(ctx, cmd) }
}
func (c *pipelineCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.pipelines.Add(1)
		c.piped.Add(int32(len(cmds)))
		return next(ctx, cmds)
	}
}

func TestRedisConcurrentCommandsSharePipelines(t *testing.T) {
	srv := testenv.StartRedis(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	counter := &pipelineCounter{}
	raw.AddHook(counter)
	s := location.NewRedis(raw, "")
	ctx := context.Background()
	now := time.Now()
	const n = 200
	var wg sync.WaitGroup
	errs := make(chan error, 2*n)
	for i := range n {
		wg.Go(func() {
			aor := "u" + strconv.Itoa(i) + "@pbx"
			_, err := s.Update(ctx, aor, now, func([]location.Binding) ([]location.Binding, error) {
				return []location.Binding{{AOR: aor, Contact: "sip:" + aor, ExpiresAt: now.Add(time.Hour), CallID: "c", CSeq: 1}}, nil
			})
			errs <- err
			errs <- s.UseNonce(ctx, location.Count{Nonce: "nonce-" + strconv.Itoa(i), NC: 1, TTL: time.Minute})
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range n {
		bs, err := s.Lookup(ctx, "u"+strconv.Itoa(i)+"@pbx", now)
		if err != nil || len(bs) != 1 {
			t.Fatalf("u%d: %v %v", i, bs, err)
		}
	}
	// 2 commands per goroutine (compare-and-set, nonce) plus the lookups.
	if got := counter.piped.Load(); got < 3*n {
		t.Fatalf("%d commands went through pipelines, want at least %d", got, 3*n)
	}
	if p := counter.pipelines.Load(); p >= counter.piped.Load() {
		t.Fatalf("%d pipelines for %d commands: nothing was shared", p, counter.piped.Load())
	}
}

// commandCounter counts the commands a client sends, by name.
type commandCounter struct {
	mu sync.Mutex
	n  map[string]int
}

func (c *commandCounter) count(cmds ...redis.Cmder) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, cmd := range cmds {
		c.n[cmd.Name()]++
	}
}
func (c *commandCounter) get(name string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[name]
}
func (c *commandCounter) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *commandCounter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.count(cmd); return next(ctx, cmd) }
}
func (c *commandCounter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.count(cmds...); return next(ctx, cmds) }
}

// adding is an Update fn that appends contact, live for an hour from now, and counts its
// runs in *calls (when calls is not nil).
func adding(contact string, now time.Time, calls *int) func([]location.Binding) ([]location.Binding, error) {
	return func(cur []location.Binding) ([]location.Binding, error) {
		if calls != nil {
			*calls++
		}
		return append(cur, location.Binding{Contact: contact, ExpiresAt: now.Add(time.Hour)}), nil
	}
}

// A registration costs Redis one command: the authenticated REGISTER's compare-and-set,
// which takes the nonce count too. The update never reads before it writes: it starts from
// this sidecar's last read or write of the AOR, or from an empty hash for an AOR it knows
// nothing of, and the script answers with the hash when that is out of date.
func TestRedisRegistrationIsOneCommand(t *testing.T) {
	srv := testenv.StartRedis(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	counter := &commandCounter{n: map[string]int{}}
	raw.AddHook(counter)
	prefix := fmt.Sprintf("t%d:", prefixSeq.Add(1))
	s := location.NewRedis(raw, prefix)
	ctx := context.Background()
	now := time.Now()
	sent := func() int {
		t.Helper()
		counter.mu.Lock()
		defer counter.mu.Unlock()
		n := 0
		for _, c := range counter.n {
			n += c
		}
		clear(counter.n)
		return n
	}
	count := func(nonce string) location.Count {
		return stamped(location.Count{Nonce: nonce, NC: 1, TTL: time.Minute}, now)
	}
	// The connection's handshake and the script's first load (NOSCRIPT, then EVAL) go first.
	if _, err := s.UpdateCounted(ctx, "warm@pbx", now, count("n0"), adding("sip:warm", now, nil)); err != nil {
		t.Fatal(err)
	}
	sent()
	calls := 0
	if _, err := s.UpdateCounted(ctx, "201@pbx", now, count("n1"), adding("sip:201@10.0.0.1", now, &calls)); err != nil {
		t.Fatal(err)
	}
	if n := sent(); n != 1 || calls != 1 {
		t.Fatalf("a new AOR's first registration sent %d commands and ran fn %d times, want 1 and 1", n, calls)
	}
	if _, ok := s.Recall("201@pbx", now); !ok {
		t.Fatal("the AOR just written is not recalled")
	}
	calls = 0
	got, err := s.UpdateCounted(ctx, "201@pbx", now, count("n2"), adding("sip:201@10.0.0.2", now, &calls))
	if err != nil || len(got) != 2 {
		t.Fatalf("second registration: %v %v", got, err)
	}
	if n := sent(); n != 1 || calls != 1 {
		t.Fatalf("a known AOR's registration sent %d commands and ran fn %d times, want 1 and 1", n, calls)
	}
	// The count went into the AOR's hash with the binding, by the same script: the same
	// count again is refused from the state this sidecar kept, without a command.
	if _, err := s.UpdateCounted(ctx, "201@pbx", now, count("n2"), adding("sip:201@203.0.113.9", now, nil)); !errors.Is(err, location.ErrReplay) {
		t.Fatalf("the count UpdateCounted took: %v, want ErrReplay", err)
	}
	if n := sent(); n != 0 {
		t.Fatalf("refusing a replay from the kept state sent %d commands", n)
	}
	if !s.Replayed(location.Count{Nonce: "n2", NC: 1}) || s.Replayed(location.Count{Nonce: "n2", NC: 2}) || s.Replayed(location.Count{Nonce: "n-unknown", NC: 1}) {
		t.Fatal("Replayed does not match the counts taken")
	}
	sent()

	// Another sidecar, which knows nothing of the AOR, guesses an empty hash: the script
	// answers with the hash, and fn runs again on it, in two commands and no read.
	other := location.NewRedis(raw, prefix)
	if _, ok := other.Recall("201@pbx", now); ok {
		t.Fatal("a sidecar that never saw the AOR recalls it")
	}
	calls = 0
	got, err = other.UpdateCounted(ctx, "201@pbx", now, count("n3"), adding("sip:201@10.0.0.3", now, &calls))
	if err != nil || len(got) != 3 {
		t.Fatalf("the other sidecar's update: %v %v", got, err)
	}
	if reads, n := counter.get("hgetall"), sent(); n != 2 || calls != 2 || reads != 0 {
		t.Fatalf("an update from a wrong guess sent %d commands (%d reads) and ran fn %d times, want 2 (none) and 2", n, reads, calls)
	}
	// The first sidecar's kept state is now stale: the same, and nothing is lost.
	calls = 0
	if got, err = s.Update(ctx, "201@pbx", now, adding("sip:201@10.0.0.4", now, &calls)); err != nil || len(got) != 4 || calls != 2 {
		t.Fatalf("update from a stale state: %v %v after %d runs of fn", got, err, calls)
	}
	// A Lookup is a read, and the Update after it starts from it.
	sent()
	if _, err := other.Lookup(ctx, "201@pbx", now); err != nil {
		t.Fatal(err)
	}
	calls = 0
	if _, err := other.Update(ctx, "201@pbx", now, adding("sip:201@10.0.0.5", now, &calls)); err != nil {
		t.Fatal(err)
	}
	if n := sent(); n != 2 || calls != 1 {
		t.Fatalf("lookup then update sent %d commands, ran fn %d times; want 2 and 1", n, calls)
	}
	if bs, _ := s.Lookup(ctx, "201@pbx", now); len(bs) != 5 {
		t.Fatalf("bindings %v, want all five", bs)
	}
}

// twoSidecars is two stores on one Redis and prefix, as two sidecars share it.
func twoSidecars(t *testing.T) (a, b *location.Redis) {
	t.Helper()
	srv := testenv.StartRedis(t)
	a, prefix := openRedis(t, srv.URL())
	b, err := location.OpenRedis(srv.URL(), prefix)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close() })
	return a, b
}

// A replayed Authorization sent to a second sidecar, which did not see the first use, is
// refused by the script (in the same step as the write it would have made), and stores
// nothing; the first sidecar refuses it without asking Redis.
func TestRedisReplayOnAnotherSidecarStoresNothing(t *testing.T) {
	a, b := twoSidecars(t)
	ctx := context.Background()
	now := time.Now()
	c := stamped(location.Count{Nonce: "nonce-shared", NC: 1, TTL: time.Minute}, now)
	if _, err := a.UpdateCounted(ctx, "201@pbx", now, c, adding("sip:201@10.0.0.1", now, nil)); err != nil {
		t.Fatal(err)
	}
	if !a.Replayed(c) {
		t.Fatal("the sidecar that took the count does not know it")
	}
	if b.Replayed(c) {
		t.Fatal("a sidecar that never saw the count claims to")
	}
	if _, err := b.UpdateCounted(ctx, "201@pbx", now, c, adding("sip:attacker@203.0.113.9", now, nil)); !errors.Is(err, location.ErrReplay) {
		t.Fatalf("replay on the other sidecar: %v, want ErrReplay", err)
	}
	if bs, _ := b.Lookup(ctx, "201@pbx", now); len(bs) != 1 || bs[0].Contact != "sip:201@10.0.0.1" {
		t.Fatalf("after the replay 201@pbx holds %v", bs)
	}
	if bs, _ := b.Lookup(ctx, "202@pbx", now); len(bs) != 0 {
		t.Fatalf("after the replay 202@pbx holds %v", bs)
	}
	// A higher count on the same nonce (the phone's next request) goes through.
	c.NC = 2
	if _, err := b.UpdateCounted(ctx, "201@pbx", now, c, adding("sip:201@10.0.0.2", now, nil)); err != nil {
		t.Fatalf("nc 2 after nc 1: %v", err)
	}
}

// A kept read that another writer made stale (a second sidecar on the same Redis) costs a
// retry, never the other writer's binding.
func TestRedisStaleKeptReadLosesNothing(t *testing.T) {
	a, b := twoSidecars(t)
	ctx := context.Background()
	now := time.Now()
	add := func(contact string) func([]location.Binding) ([]location.Binding, error) {
		return adding(contact, now, nil)
	}
	for round, aor := range []string{"empty@pbx", "full@pbx"} {
		if round == 1 {
			if _, err := a.Update(ctx, aor, now, add("sip:first")); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := a.Lookup(ctx, aor, now); err != nil { // a keeps this read
			t.Fatal(err)
		}
		if _, err := b.Update(ctx, aor, now, add("sip:other-sidecar")); err != nil {
			t.Fatal(err)
		}
		calls := 0
		got, err := a.Update(ctx, aor, now, adding("sip:mine", now, &calls))
		if err != nil {
			t.Fatal(err)
		}
		want := 2 + round
		if len(got) != want || calls != 2 {
			t.Fatalf("%s: update from a stale read stored %v after %d calls of fn; want %d bindings, fn run twice", aor, got, calls, want)
		}
		bs, _ := b.Lookup(ctx, aor, now)
		if len(bs) != want {
			t.Fatalf("%s: the other sidecar sees %v", aor, bs)
		}
	}
}

func TestRedisScriptsSurviveAFlush(t *testing.T) {
	srv := testenv.StartRedis(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	s := location.NewRedis(raw, "")
	ctx := context.Background()
	if err := s.UseNonce(ctx, location.Count{Nonce: "n1", NC: 1, TTL: time.Minute}); err != nil {
		t.Fatal(err)
	}
	// A restarted Redis (or SCRIPT FLUSH) no longer knows the scripts: EVALSHA says NOSCRIPT.
	if err := raw.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	if err := s.UseNonce(ctx, location.Count{Nonce: "n1", NC: 2, TTL: time.Minute}); err != nil {
		t.Fatalf("after SCRIPT FLUSH: %v", err)
	}
	if err := s.UseNonce(ctx, location.Count{Nonce: "n1", NC: 2, TTL: time.Minute}); !errors.Is(err, location.ErrReplay) {
		t.Fatalf("replayed nc after the flush: %v, want ErrReplay", err)
	}
	now := time.Now()
	raw.ScriptFlush(ctx)
	if _, err := s.Update(ctx, "201@pbx", now, func([]location.Binding) ([]location.Binding, error) {
		return []location.Binding{{AOR: "201@pbx", Contact: "sip:201@h", ExpiresAt: now.Add(time.Hour)}}, nil
	}); err != nil {
		t.Fatalf("Update after SCRIPT FLUSH: %v", err)
	}
}

// A refresh under the same name, as a phone re-registering sends, costs Redis one revision
// check, one HSET, and the index update: no length check, no field-by-field compare, no
// DEL, and no write of the known name (INFO commandstats counts the script's own commands).
func TestRedisRefreshWritesLittle(t *testing.T) {
	srv := testenv.StartRedis(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	prefix := fmt.Sprintf("t%d:", prefixSeq.Add(1))
	s := location.NewRedis(raw, prefix)
	ctx := context.Background()
	now := time.Now()
	put := func(name string, contacts ...string) {
		t.Helper()
		if _, err := s.Update(ctx, "201@pbx", now, func([]location.Binding) ([]location.Binding, error) {
			var bs []location.Binding
			for _, c := range contacts {
				bs = append(bs, location.Binding{Contact: c, ExpiresAt: now.Add(time.Hour), DisplayName: name})
			}
			return bs, nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	calls := func() map[string]int {
		t.Helper()
		info, err := raw.InfoMap(ctx, "commandstats").Result()
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]int{}
		for k, v := range info["Commandstats"] {
			var n int
			if _, err := fmt.Sscanf(v, "calls=%d,", &n); err == nil {
				out[strings.TrimPrefix(k, "cmdstat_")] = n
			}
		}
		raw.ConfigResetStat(ctx)
		return out
	}
	put("Alice", "sip:201@10.0.0.1", "sip:201@10.0.0.2")
	calls()
	put("Alice", "sip:201@10.0.0.1", "sip:201@10.0.0.2")
	got := calls()
	for cmd, want := range map[string]int{"hget": 1, "hset": 1, "zadd": 1, "hlen": 0, "del": 0, "hdel": 0, "hsetnx": 0} {
		if got[cmd] != want {
			t.Errorf("a refresh ran %s %d times, want %d (all: %v)", cmd, got[cmd], want, got)
		}
	}
	// A new name is written, and a dropped contact deleted from the hash, still in one step.
	put("Bob", "sip:201@10.0.0.1")
	if got := calls(); got["hset"] != 2 || got["hdel"] != 1 || got["del"] != 0 {
		t.Errorf("renaming and dropping a contact ran %v", got)
	}
	if name, _ := raw.HGet(ctx, prefix+"known", "201@pbx").Result(); name != "Bob" {
		t.Fatalf("known name %q after the rename, want Bob", name)
	}
	if keys, _ := raw.HKeys(ctx, prefix+"aor:201@pbx").Result(); len(keys) != 3 {
		t.Fatalf("hash fields %v after dropping a contact", keys)
	}
}

// A hash written by an older sidecar has no revision: Update compares it field by field,
// loses nothing written in between, and gives it a revision.
func TestRedisUpdatesAHashWithoutRevision(t *testing.T) {
	srv := testenv.StartRedis(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	s, prefix := openRedis(t, srv.URL())
	ctx := context.Background()
	now := time.Now()
	key := prefix + "aor:201@pbx"
	old := fmt.Sprintf(`{"aor":"201@pbx","contact":"sip:201@old","expires_at":%q}`, now.Add(time.Hour).Format(time.RFC3339Nano))
	raw.HSet(ctx, key, "sip:201@old", old)
	if bs, err := s.Lookup(ctx, "201@pbx", now); err != nil || len(bs) != 1 {
		t.Fatalf("lookup of an old hash: %v %v", bs, err)
	}
	// The older sidecar writes again after our read (as its own compare-and-set would).
	raw.HSet(ctx, key, "sip:201@other", strings.Replace(old, "sip:201@old", "sip:201@other", 1))
	calls := 0
	got, err := s.Update(ctx, "201@pbx", now, adding("sip:201@new", now, &calls))
	if err != nil || len(got) != 3 || calls != 2 {
		t.Fatalf("update over a stale read of an old hash: %v %v after %d calls, want 3 bindings after 2", got, err, calls)
	}
	if rev, _ := raw.HGet(ctx, key, "rev").Result(); rev == "" {
		t.Fatal("the hash has no revision after the update")
	}
}

// Expire writes a new revision: an Update from a read taken before it starts again.
func TestRedisExpireInvalidatesAKeptRead(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s, _ := openRedis(t, srv.URL())
	now := time.Now()
	if _, err := s.Update(ctx, "201@pbx", now, func([]location.Binding) ([]location.Binding, error) {
		return []location.Binding{
			{Contact: "sip:201@soon", ExpiresAt: now.Add(time.Second)},
			{Contact: "sip:201@later", ExpiresAt: now.Add(time.Hour)},
		}, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(ctx, "201@pbx", now); err != nil { // kept for the Update below
		t.Fatal(err)
	}
	later := now.Add(2 * time.Second)
	if gone, err := s.Expire(ctx, later, 0); err != nil || len(gone) != 1 {
		t.Fatalf("expire: %v %v", gone, err)
	}
	calls := 0
	got, err := s.Update(ctx, "201@pbx", later, adding("sip:201@new", later, &calls))
	if err != nil || len(got) != 2 || calls != 2 {
		t.Fatalf("update after an expire: %v %v after %d calls, want 2 bindings after 2", got, err, calls)
	}
	// The expired binding is not brought back, nor reported twice.
	if gone, err := s.Expire(ctx, later, 0); err != nil || len(gone) != 0 {
		t.Fatalf("second expire: %v %v", gone, err)
	}
}

// The name field holds a display name, which the phone chooses: one shaped like a binding
// is never read as one.
func TestRedisNameFieldIsNotABinding(t *testing.T) {
	srv := testenv.StartRedis(t)
	ctx := context.Background()
	s, _ := openRedis(t, srv.URL())
	now := time.Now()
	forged := fmt.Sprintf(`{"aor":"201@pbx","contact":"sip:evil@attacker","expires_at":%q}`, now.Add(time.Hour).Format(time.RFC3339Nano))
	if _, err := s.Update(ctx, "201@pbx", now, func([]location.Binding) ([]location.Binding, error) {
		return []location.Binding{{Contact: "sip:201@10.0.0.1", ExpiresAt: now.Add(time.Hour), DisplayName: forged}}, nil
	}); err != nil {
		t.Fatal(err)
	}
	bs, err := s.Lookup(ctx, "201@pbx", now)
	if err != nil || len(bs) != 1 || bs[0].Contact != "sip:201@10.0.0.1" {
		t.Fatalf("lookup: %v %v", bs, err)
	}
}

// thenResult is what UpdateCountedThen handed to then.
type thenResult struct {
	bs        []location.Binding
	err       error
	inHandOut bool
}

// updateThen runs UpdateCountedThen and waits for its then (which must come exactly once).
func updateThen(t *testing.T, s *location.Redis, handingOut *atomic.Bool, aor string, now time.Time, c location.Count, fn func([]location.Binding) ([]location.Binding, error)) thenResult {
	t.Helper()
	got := make(chan thenResult, 2)
	s.UpdateCountedThen(context.Background(), aor, now, c, fn, func(bs []location.Binding, err error) {
		got <- thenResult{bs, err, handingOut.Load()}
	})
	var r thenResult
	select {
	case r = <-got:
	case <-time.After(5 * time.Second):
		t.Fatal("then was never called")
	}
	select {
	case <-got:
		t.Fatal("then was called twice")
	case <-time.After(20 * time.Millisecond):
	}
	return r
}

// UpdateCountedThen gives what UpdateCounted would, from inside the pipeline's hand-out
// when Redis answered at once, and from a goroutine of its own when it had to start over.
func TestRedisUpdateCountedThen(t *testing.T) {
	a, b := twoSidecars(t)
	var handingOut atomic.Bool
	handOuts := atomic.Int32{}
	a.SetHandOut(func(deliver func()) {
		handOuts.Add(1)
		handingOut.Store(true)
		defer handingOut.Store(false)
		deliver()
	})
	now := time.Now()
	// Redis learns the script (its first EVALSHA answers NOSCRIPT).
	if _, err := a.Update(context.Background(), "warm@pbx", now, adding("sip:warm", now, nil)); err != nil {
		t.Fatal(err)
	}
	c := stamped(location.Count{Nonce: "nonce-then", NC: 1, TTL: time.Minute}, now)
	// A new AOR: one script, answered inside the hand-out.
	r := updateThen(t, a, &handingOut, "201@pbx", now, c, adding("sip:201@10.0.0.1", now, nil))
	if r.err != nil || len(r.bs) != 1 || !r.inHandOut || handOuts.Load() == 0 {
		t.Fatalf("new AOR: %+v after %d hand-outs", r, handOuts.Load())
	}
	// The same count again: ErrReplay, nothing stored.
	r = updateThen(t, a, &handingOut, "201@pbx", now, c, adding("sip:201@203.0.113.9", now, nil))
	if !errors.Is(r.err, location.ErrReplay) {
		t.Fatalf("replay: %+v", r)
	}
	// fn refusing: its error, at once.
	r = updateThen(t, a, &handingOut, "201@pbx", now, location.Count{}, func([]location.Binding) ([]location.Binding, error) { return nil, errTestAbort })
	if !errors.Is(r.err, errTestAbort) {
		t.Fatalf("fn's error: %+v", r)
	}
	// Another sidecar writes: a's kept state is stale, and the update starts over from the
	// hash the script answers with, losing nothing.
	if _, err := b.Update(context.Background(), "201@pbx", now, adding("sip:201@10.0.0.2", now, nil)); err != nil {
		t.Fatal(err)
	}
	calls := 0
	r = updateThen(t, a, &handingOut, "201@pbx", now, stamped(location.Count{Nonce: "nonce-then", NC: 2, TTL: time.Minute}, now), adding("sip:201@10.0.0.3", now, &calls))
	if r.err != nil || len(r.bs) != 3 || calls != 2 || r.inHandOut {
		t.Fatalf("from a stale state: %+v after %d runs of fn", r, calls)
	}
	if bs, _ := b.Lookup(context.Background(), "201@pbx", now); len(bs) != 3 {
		t.Fatalf("the other sidecar sees %v", bs)
	}
}

// A Redis that has forgotten the script (restart, SCRIPT FLUSH) answers NOSCRIPT: the
// update loads it and goes through.
func TestRedisUpdateCountedThenAfterAFlush(t *testing.T) {
	srv := testenv.StartRedis(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	s := location.NewRedis(raw, fmt.Sprintf("t%d:", prefixSeq.Add(1)))
	var handingOut atomic.Bool
	now := time.Now()
	if r := updateThen(t, s, &handingOut, "201@pbx", now, location.Count{}, adding("sip:201@10.0.0.1", now, nil)); r.err != nil {
		t.Fatal(r.err)
	}
	raw.ScriptFlush(context.Background())
	if r := updateThen(t, s, &handingOut, "201@pbx", now, location.Count{}, adding("sip:201@10.0.0.2", now, nil)); r.err != nil || len(r.bs) != 2 {
		t.Fatalf("after SCRIPT FLUSH: %+v", r)
	}
}

var errTestAbort = errors.New("test: fn refused")

// stamped gives c the order a nonce of digest.Nonces carries: issued at now, with an ID of
// its own (a function of the nonce, as digest's is).
func stamped(c location.Count, now time.Time) location.Count {
	h := fnv.New64a()
	h.Write([]byte(c.Nonce))
	c.Issued, c.ID = now.Unix(), h.Sum64()
	return c
}

// SIPSIDECAR_REDIS_CACHE_AORS=0: nothing is kept, every update starts from the guess of an
// empty hash and, for a known AOR, from the hash the script answers with; nothing is lost.
func TestRedisWithoutStateCache(t *testing.T) {
	srv := testenv.StartRedis(t)
	s, _ := openRedis(t, srv.URL())
	s.KeepAORs(0)
	ctx := context.Background()
	now := time.Now()
	for i, contact := range []string{"sip:201@10.0.0.1", "sip:201@10.0.0.2", "sip:201@10.0.0.3"} {
		calls := 0
		c := stamped(location.Count{Nonce: "nonce-nocache", NC: uint64(i + 1), TTL: time.Minute}, now)
		got, err := s.UpdateCounted(ctx, "201@pbx", now, c, adding(contact, now, &calls))
		if err != nil || len(got) != i+1 {
			t.Fatalf("update %d: %v %v", i, got, err)
		}
		if want := min(i+1, 2); calls != want {
			t.Fatalf("update %d ran fn %d times, want %d (an empty guess, then the hash)", i, calls, want)
		}
	}
	if _, ok := s.Recall("201@pbx", now); ok {
		t.Fatal("a store that keeps nothing recalls an AOR")
	}
	if _, err := s.UpdateCounted(ctx, "201@pbx", now, stamped(location.Count{Nonce: "nonce-nocache", NC: 3, TTL: time.Minute}, now), adding("sip:evil", now, nil)); !errors.Is(err, location.ErrReplay) {
		t.Fatalf("replayed count: %v", err)
	}
	if bs, err := s.Lookup(ctx, "201@pbx", now); err != nil || len(bs) != 3 {
		t.Fatalf("lookup: %v %v", bs, err)
	}
}

// The nonce counts an AOR took live in its hash: a registration adds no key, and a count
// outlives the bindings it came with (unregistered, or expired and swept) for as long as
// its nonce is fresh, so a replay after the phone left is refused too, on any sidecar.
func TestRedisNonceWindowOutlivesTheBindings(t *testing.T) {
	srv := testenv.StartRedis(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	ctx := context.Background()
	a, prefix := openRedis(t, srv.URL())
	fresh := func() *location.Redis { // a sidecar that knows nothing yet
		s := location.NewRedis(raw, prefix)
		s.KeepAORs(0)
		return s
	}
	key := prefix + "aor:201@pbx"
	now := time.Now()
	ttl := 6 * time.Minute
	count := func(nonce string, nc uint64) location.Count {
		return stamped(location.Count{Nonce: nonce, NC: nc, TTL: ttl}, now)
	}
	removing := func([]location.Binding) ([]location.Binding, error) { return nil, nil }
	if _, err := a.UpdateCounted(ctx, "201@pbx", now, count("n1", 1), adding("sip:201@10.0.0.1", now, nil)); err != nil {
		t.Fatal(err)
	}
	keys, _ := raw.Keys(ctx, prefix+"*").Result()
	sort.Strings(keys)
	if want := []string{prefix + "aor:201@pbx", prefix + "exp", prefix + "known"}; !reflect.DeepEqual(keys, want) {
		t.Fatalf("keys %v, want %v: a count needs no key of its own", keys, want)
	}
	if d, _ := raw.PTTL(ctx, key).Result(); d != -1 {
		t.Fatalf("a hash with a binding expires in %v", d)
	}
	// Unregistered: the bindings and the index entry go, the hash stays until the window's end.
	if got, err := a.UpdateCounted(ctx, "201@pbx", now, count("n1", 2), removing); err != nil || len(got) != 0 {
		t.Fatalf("unregister: %v %v", got, err)
	}
	d, _ := raw.PTTL(ctx, key).Result()
	if d <= ttl-time.Minute || d > ttl+time.Second {
		t.Fatalf("the emptied hash expires in %v, want about %v", d, ttl)
	}
	if n, _ := raw.ZCard(ctx, prefix+"exp").Result(); n != 0 {
		t.Fatalf("exp holds %d AORs after the unregister", n)
	}
	if aors, err := a.AORs(ctx, now); err != nil || len(aors) != 0 {
		t.Fatalf("AORs: %v %v", aors, err)
	}
	for _, nc := range []uint64{1, 2} {
		if _, err := fresh().UpdateCounted(ctx, "201@pbx", now, count("n1", nc), adding("sip:attacker", now, nil)); !errors.Is(err, location.ErrReplay) {
			t.Fatalf("replay of nc %d after the unregister: %v", nc, err)
		}
	}
	// A new registration brings the hash back for good.
	brief := func(cur []location.Binding) ([]location.Binding, error) {
		return append(cur, location.Binding{Contact: "sip:201@10.0.0.2", ExpiresAt: now.Add(time.Second)}), nil
	}
	if _, err := fresh().UpdateCounted(ctx, "201@pbx", now, count("n1", 3), brief); err != nil {
		t.Fatal(err)
	}
	if d, _ := raw.PTTL(ctx, key).Result(); d != -1 {
		t.Fatalf("registered again, the hash expires in %v", d)
	}
	// Expired and swept: the same.
	later := now.Add(2 * time.Second)
	if gone, err := a.Expire(ctx, later, 0); err != nil || len(gone) != 1 {
		t.Fatalf("expire: %v %v", gone, err)
	}
	if d, _ := raw.PTTL(ctx, key).Result(); d <= ttl-time.Minute || d > ttl+time.Second {
		t.Fatalf("after the sweep the hash expires in %v, want about %v", d, ttl)
	}
	if _, err := fresh().UpdateCounted(ctx, "201@pbx", now, count("n1", 3), adding("sip:attacker", now, nil)); !errors.Is(err, location.ErrReplay) {
		t.Fatalf("replay after the sweep: %v", err)
	}
	// A hash without a window goes at once, as before.
	if _, err := a.Update(ctx, "202@pbx", now, adding("sip:202@10.0.0.1", now, nil)); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Update(ctx, "202@pbx", now, removing); err != nil {
		t.Fatal(err)
	}
	if n, _ := raw.Exists(ctx, prefix+"aor:202@pbx").Result(); n != 0 {
		t.Fatal("an emptied hash without counts stays")
	}
}

// More nonces used on one AOR than its window holds: the oldest is refused as stale (a
// fresh nonce for the phone), not as a replay, on this sidecar and another.
func TestRedisNonceWindowRefusesEvictedNoncesAsStale(t *testing.T) {
	a, b := twoSidecars(t)
	ctx := context.Background()
	now := time.Now()
	for i := range 12 { // the window holds 8
		c := location.Count{Nonce: fmt.Sprint("w", i), NC: 1, TTL: time.Minute, Issued: now.Unix(), ID: uint64(i + 1)}
		if _, err := a.UpdateCounted(ctx, "201@pbx", now, c, adding(fmt.Sprint("sip:201@10.0.0.", i), now, nil)); err != nil {
			t.Fatalf("nonce %d: %v", i, err)
		}
	}
	old := location.Count{Nonce: "w0", NC: 2, TTL: time.Minute, Issued: now.Unix(), ID: 1}
	for name, s := range map[string]*location.Redis{"this sidecar": a, "another": b} {
		if _, err := s.UpdateCounted(ctx, "201@pbx", now, old, adding("sip:201@late", now, nil)); !errors.Is(err, location.ErrStaleNonce) {
			t.Fatalf("%s: an evicted nonce: %v, want ErrStaleNonce", name, err)
		}
	}
	newest := location.Count{Nonce: "w11", NC: 2, TTL: time.Minute, Issued: now.Unix(), ID: 12}
	if _, err := b.UpdateCounted(ctx, "201@pbx", now, newest, adding("sip:201@10.0.0.9", now, nil)); err != nil {
		t.Fatalf("the newest nonce again: %v", err)
	}
}

// A window this store cannot read (written by hand, or by something else) refuses every
// nonce made up to now, and takes newer ones.
func TestRedisUnreadableWindowRefusesOlderNonces(t *testing.T) {
	srv := testenv.StartRedis(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	ctx := context.Background()
	s, prefix := openRedis(t, srv.URL())
	now := time.Now()
	if err := raw.HSet(ctx, prefix+"aor:201@pbx", "rev", "r1", "nc", "garbage").Err(); err != nil {
		t.Fatal(err)
	}
	c := location.Count{Nonce: "old", NC: 1, TTL: time.Minute, Issued: now.Unix(), ID: 7}
	if _, err := s.UpdateCounted(ctx, "201@pbx", now, c, adding("sip:201@10.0.0.1", now, nil)); !errors.Is(err, location.ErrStaleNonce) {
		t.Fatalf("a nonce of this second: %v, want ErrStaleNonce", err)
	}
	c = location.Count{Nonce: "new", NC: 1, TTL: time.Minute, Issued: now.Unix() + 1, ID: 7}
	if got, err := s.UpdateCounted(ctx, "201@pbx", now, c, adding("sip:201@10.0.0.1", now, nil)); err != nil || len(got) != 1 {
		t.Fatalf("a newer nonce: %v %v", got, err)
	}
	if v, _ := raw.HGet(ctx, prefix+"aor:201@pbx", "nc").Result(); v == "garbage" {
		t.Fatal("the unreadable window is still there")
	}
}

// A burst of REGISTERs on one AOR through one sidecar: they take turns, each starting from
// the state the one before wrote, so none of them fails a compare-and-set and retries, and
// every binding is kept. A turn waited for past its context's end gives up without taking
// the AOR down with it.
func TestRedisOneAORsUpdatesTakeTurns(t *testing.T) {
	srv := testenv.StartRedis(t)
	raw := redis.NewClient(&redis.Options{Addr: srv.Addr})
	defer raw.Close()
	counter := &commandCounter{n: map[string]int{}}
	raw.AddHook(counter)
	s := location.NewRedis(raw, fmt.Sprintf("t%d:", prefixSeq.Add(1)))
	ctx := context.Background()
	now := time.Now()
	if _, err := s.Update(ctx, "warm@pbx", now, adding("sip:warm", now, nil)); err != nil {
		t.Fatal(err) // Redis learns the script
	}
	before := counter.get("evalsha")
	const burst = 40
	var wg sync.WaitGroup
	var mu sync.Mutex
	runs := 0
	for i := range burst {
		c := location.Count{} // (the goroutines' order is not the nonces')
		fn := func(cur []location.Binding) ([]location.Binding, error) {
			mu.Lock()
			runs++
			mu.Unlock()
			return append(cur, location.Binding{Contact: fmt.Sprintf("sip:201@10.0.%d.1", i), ExpiresAt: now.Add(time.Hour)}), nil
		}
		wg.Add(1)
		if i%2 == 0 {
			s.UpdateCountedThen(ctx, "201@pbx", now, c, fn, func(_ []location.Binding, err error) {
				if err != nil {
					t.Errorf("deferred update %d: %v", i, err)
				}
				wg.Done()
			})
		} else {
			go func() {
				defer wg.Done()
				if _, err := s.UpdateCounted(ctx, "201@pbx", now, c, fn); err != nil {
					t.Errorf("update %d: %v", i, err)
				}
			}()
		}
	}
	wg.Wait()
	if n := counter.get("evalsha") - before; n != burst || runs != burst {
		t.Fatalf("%d updates sent %d compare-and-sets and ran fn %d times: some lost a race", burst, n, runs)
	}
	if bs, err := s.Lookup(ctx, "201@pbx", now); err != nil || len(bs) != burst {
		t.Fatalf("%d bindings, %v", len(bs), err)
	}
	// A caller whose context ends while it waits for its turn gets an error at once, and
	// the turns go on.
	gate := make(chan struct{})
	s.UpdateCountedThen(ctx, "202@pbx", now, location.Count{}, adding("sip:202@a", now, nil), func([]location.Binding, error) { <-gate })
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	begin := time.Now()
	if _, err := s.UpdateCounted(short, "202@pbx", now, location.Count{}, adding("sip:202@b", now, nil)); !errors.Is(err, location.ErrUnavailable) || time.Since(begin) > 2*time.Second {
		t.Fatalf("waiting past the deadline: %v after %v", err, time.Since(begin))
	}
	close(gate)
	done := make(chan error, 1)
	go func() {
		_, err := s.UpdateCounted(ctx, "202@pbx", now, location.Count{}, adding("sip:202@c", now, nil))
		done <- err
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the AOR's turns stopped after a caller gave up waiting")
	}
	if bs, _ := s.Lookup(ctx, "202@pbx", now); len(bs) != 2 {
		t.Fatalf("202@pbx holds %v, want a and c", bs)
	}
}
