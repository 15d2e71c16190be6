package broker

import (
	"bufio"
	"context"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// The WebSocket subscriber: an RFC 6455 upgrade, then one text frame per message. Only what
// a subscriber needs is implemented: server frames are unfragmented text, client frames are
// read for close and ping and otherwise discarded.

const wsGUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

// maxClientFrame bounds what a subscriber may send us.
const maxClientFrame = 64 << 10

func (b *Broker) serveWebSocket(ctx context.Context, w http.ResponseWriter, r *http.Request, name string) {
	key := r.Header.Get("Sec-WebSocket-Key")
	if r.Method != http.MethodGet || !headerHas(r.Header, "Connection", "upgrade") ||
		r.Header.Get("Sec-WebSocket-Version") != "13" || !validKey(key) {
		w.Header().Set("Sec-WebSocket-Version", "13")
		http.Error(w, "bad websocket handshake", http.StatusBadRequest)
		return
	}
	conn, rw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		http.Error(w, "websocket not supported here", http.StatusInternalServerError)
		return
	}
	defer conn.Close()
	sum := sha1.Sum([]byte(key + wsGUID))
	rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		base64.StdEncoding.EncodeToString(sum[:]) + "\r\n\r\n")
	if rw.Flush() != nil {
		return
	}
	ws := &wsConn{conn: conn, w: rw.Writer}
	closed := make(chan struct{})
	go func() {
		defer close(closed)
		ws.readLoop(rw.Reader)
	}()

	cur := eventCursor(r)
	c, err := b.join(name)
	if err != nil {
		ws.close(1011)
		return
	}
	defer b.leave(c)
	for {
		m, ok, st, wait := b.poll(c, cur)
		switch {
		case ok:
			if ws.write(opText, m.Data) != nil {
				return
			}
			id := m.ID
			cur = &id
			continue
		case st == stateGone:
			ws.close(1000)
			return
		case st == stateDown:
			ws.close(1011) // the client reconnects
			return
		}
		select {
		case <-wait:
		case <-closed:
			return
		case <-ctx.Done():
			ws.close(1008) // policy: token expired or logged out
			return
		}
	}
}

func headerHas(h http.Header, name, token string) bool {
	for _, v := range h.Values(name) {
		for _, p := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(p), token) {
				return true
			}
		}
	}
	return false
}

func validKey(k string) bool {
	raw, err := base64.StdEncoding.DecodeString(k)
	return err == nil && len(raw) == 16
}

const (
	opText  = 0x1
	opClose = 0x8
	opPing  = 0x9
	opPong  = 0xA
)

type wsConn struct {
	conn net.Conn
	mu   sync.Mutex
	w    *bufio.Writer
}

// write sends one final frame.
func (c *wsConn) write(op byte, payload []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var hdr [10]byte
	hdr[0] = 0x80 | op
	n := 2
	switch l := len(payload); {
	case l < 126:
		hdr[1] = byte(l)
	case l < 1<<16:
		hdr[1] = 126
		binary.BigEndian.PutUint16(hdr[2:], uint16(l))
		n = 4
	default:
		hdr[1] = 127
		binary.BigEndian.PutUint64(hdr[2:], uint64(l))
		n = 10
	}
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.w.Write(hdr[:n]); err != nil {
		return err
	}
	if _, err := c.w.Write(payload); err != nil {
		return err
	}
	return c.w.Flush()
}

func (c *wsConn) close(code uint16) {
	var p [2]byte
	binary.BigEndian.PutUint16(p[:], code)
	c.write(opClose, p[:])
}

// readLoop reads client frames until the connection ends or the client closes it.
func (c *wsConn) readLoop(r *bufio.Reader) {
	for {
		var h [2]byte
		if _, err := io.ReadFull(r, h[:]); err != nil {
			return
		}
		op := h[0] & 0x0f
		masked := h[1]&0x80 != 0
		l := uint64(h[1] & 0x7f)
		switch l {
		case 126:
			var e [2]byte
			if _, err := io.ReadFull(r, e[:]); err != nil {
				return
			}
			l = uint64(binary.BigEndian.Uint16(e[:]))
		case 127:
			var e [8]byte
			if _, err := io.ReadFull(r, e[:]); err != nil {
				return
			}
			l = binary.BigEndian.Uint64(e[:])
		}
		if !masked || l > maxClientFrame {
			c.close(1002) // RFC 6455 §5.1: client frames must be masked
			return
		}
		var mask [4]byte
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return
		}
		payload := make([]byte, l)
		if _, err := io.ReadFull(r, payload); err != nil {
			return
		}
		for i := range payload {
			payload[i] ^= mask[i%4]
		}
		switch op {
		case opClose:
			c.write(opClose, payload[:min(len(payload), 2)])
			return
		case opPing:
			c.write(opPong, payload)
		}
	}
}
