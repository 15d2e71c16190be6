package sipserver

import (
	"bytes"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"

	"golang.org/x/net/ipv4"
	"golang.org/x/net/ipv6"
)

// A system call per datagram was the largest single cost of the sidecar: on the 2-core VM
// of the bench a sendto of a 500-byte datagram on loopback cost 5.5-6 µs of the sender's
// CPU, and one sendmmsg of 8 or more 2.5-3 µs each (recvfrom and recvmmsg alike). So the
// UDP path reads with recvmmsg and sends with sendmmsg (golang.org/x/net's batch calls,
// one message at a time where the OS has no such call), without holding any answer back
// on a quiet server:
//   - a reader handles everything one recvmmsg returned and sends the answers together;
//   - the goroutine that hands out a batch of hook verdicts (Server.HoldAnswers) sends
//     their answers together;
//   - any other answer goes at once, unless another goroutine is already in a sendmmsg on
//     that socket: then it joins the queue that goroutine sends next.

// batchConn is the batch I/O of a UDP socket: an ipv4.PacketConn or ipv6.PacketConn (one
// Message type serves both).
type batchConn interface {
	ReadBatch(ms []ipv4.Message, flags int) (int, error)
	WriteBatch(ms []ipv4.Message, flags int) (int, error)
}

func newBatchConn(pc *net.UDPConn) batchConn {
	if a, ok := pc.LocalAddr().(*net.UDPAddr); ok && a.IP.To4() != nil {
		return ipv4.NewPacketConn(pc)
	}
	return ipv6.NewPacketConn(pc) // also a dual-stack socket's IPv4 peers
}

const (
	readBatch = 16 // datagrams one recvmmsg may return
	sendBatch = 64 // datagrams one sendmmsg carries at most
)

// outgoing is one datagram to send.
type outgoing struct {
	b   []byte
	buf *bytes.Buffer // holds b, back to buffers once sent; nil: b is the datagram's own
	to  netip.AddrPort
}

// outbox sends one UDP socket's answers, as many to a system call as are ready together.
type outbox struct {
	bc  batchConn
	log *slog.Logger

	mu    sync.Mutex
	held  int  // holders that will send what is queued when they let go
	busy  bool // a goroutine is sending: it takes what is queued next
	queue []outgoing

	// The sending goroutine's own (busy guards them).
	spare []outgoing
	msgs  [sendBatch]ipv4.Message
	iov   [sendBatch][1][]byte
	addrs [sendBatch]net.UDPAddr
	ips   [sendBatch][16]byte

	calls atomic.Uint64 // batch system calls made (for tests)
}

func newOutbox(bc batchConn, log *slog.Logger) *outbox {
	o := &outbox{bc: bc, log: log}
	for i := range o.msgs {
		o.msgs[i].Buffers = o.iov[i][:]
		o.msgs[i].Addr = &o.addrs[i]
	}
	return o
}

// send sends b to to, at once unless the outbox is held or another goroutine is sending.
// buf, when not nil, holds b and goes back to the buffer pool once b is sent.
func (o *outbox) send(b []byte, buf *bytes.Buffer, to netip.AddrPort) {
	o.mu.Lock()
	o.queue = append(o.queue, outgoing{b: b, buf: buf, to: to})
	if o.held > 0 || o.busy {
		o.mu.Unlock()
		return
	}
	o.drainLocked()
}

// hold queues what is sent from now on until the matching release.
func (o *outbox) hold() {
	o.mu.Lock()
	o.held++
	o.mu.Unlock()
}

// release ends a hold and sends everything queued, whoever else holds the outbox: an
// answer waits at most until the next release, never for every holder to let go at once.
func (o *outbox) release() {
	o.mu.Lock()
	o.held--
	if o.busy || len(o.queue) == 0 {
		o.mu.Unlock()
		return
	}
	o.drainLocked()
}

// drainLocked sends until the queue is empty; o.mu is held on entry and released on return.
func (o *outbox) drainLocked() {
	o.busy = true
	for len(o.queue) > 0 {
		batch := o.queue
		o.queue = o.spare[:0]
		o.mu.Unlock()
		o.write(batch)
		for i := range batch {
			if batch[i].buf != nil {
				buffers.Put(batch[i].buf)
			}
			batch[i] = outgoing{}
		}
		o.mu.Lock()
		o.spare = batch[:0]
	}
	o.busy = false
	o.mu.Unlock()
}

// write sends batch in sendmmsg calls of up to sendBatch datagrams. A datagram the kernel
// refuses is dropped (the phone retransmits) and the rest still go.
func (o *outbox) write(batch []outgoing) {
	for len(batch) > 0 {
		n := min(len(batch), sendBatch)
		for i := range n {
			o.iov[i][0] = batch[i].b
			a := &o.addrs[i]
			ip := batch[i].to.Addr()
			if ip.Is4() {
				v := ip.As4()
				a.IP = append(o.ips[i][:0], v[:]...)
			} else {
				v := ip.As16()
				a.IP = append(o.ips[i][:0], v[:]...)
			}
			a.Port, a.Zone = int(batch[i].to.Port()), ip.Zone()
		}
		o.calls.Add(1)
		sent, err := o.bc.WriteBatch(o.msgs[:n], 0)
		if sent <= 0 {
			// sendmmsg reports an error only for its first datagram.
			o.log.Debug("sending answer", "to", batch[0].to.String(), "err", err)
			sent = 1
		}
		batch = batch[sent:]
	}
	clear(o.iov[:])
}
