package broker

import (
	"bufio"
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"testing"
	"time"
)

// A subscriber whose context is already over (an access token inside the verification leeway
// after exp, or a logout racing the subscribe) is shut by context.AfterFunc in another
// goroutine while parkEventSource is still registering it. If the shut comes first, the
// stream used to be added to c.streams after it was closed and never removed: every publish
// and sweep walked it from then on. Other goroutines hold b.mu meanwhile, as publishes and
// polls do, so that registering has to wait for it.
func TestCancelledStreamIsNotLeftRegistered(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(max(4, runtime.GOMAXPROCS(0)))) // the race needs threads in parallel
	b := New(Options{})
	defer b.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	stop := make(chan struct{})
	var busy sync.WaitGroup
	for range 4 {
		busy.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
					b.Info("ch")
				}
			}
		})
	}
	const n = 2000
	var released sync.WaitGroup
	released.Add(n)
	for range n {
		r := httptest.NewRequest(http.MethodGet, "/sub/ch", nil)
		r.Header.Set("Accept", "text/event-stream")
		b.ServeSubscriber(ctx, hijacker{httptest.NewRecorder()}, r, "ch", released.Done)
	}
	released.Wait() // every stream is shut: its context was over from the start
	close(stop)
	busy.Wait()
	b.mu.Lock()
	left := len(b.channels["ch"].streams)
	b.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d of %d closed streams are still registered", left, n)
	}
	if got := b.Subscribers(); got != 0 {
		t.Fatalf("%d subscribers left", got)
	}
}

// hijacker hands parkEventSource a connection that takes every write.
type hijacker struct{ *httptest.ResponseRecorder }

func (hijacker) Hijack() (net.Conn, *bufio.ReadWriter, error) { return sinkConn{}, nil, nil }

// sinkConn implements only what a parked stream calls.
type sinkConn struct{ net.Conn }

func (sinkConn) Write(p []byte) (int, error)      { return len(p), nil }
func (sinkConn) Close() error                     { return nil }
func (sinkConn) SetWriteDeadline(time.Time) error { return nil }
