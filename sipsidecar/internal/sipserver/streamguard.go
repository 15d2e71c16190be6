package sipserver

import (
	"encoding/binary"
	"errors"
	"net"
)

// guardListener hands sipgo connections whose bytes are checked before sipgo's parser sees
// them. That parser files every URI and header parameter with a search of the ones before
// it, and over a stream it parses each complete line as it arrives, checking the message's
// size only after: one 32 KB line of distinct parameters cost about 165 ms of CPU to
// refuse. A connection that sends a message with more than maxParams parameters (';' and
// '&', as for UDP) is closed before sipgo parses it. With ws, the bytes are WebSocket
// frames: each is unmasked and counted by message.
type guardListener struct {
	net.Listener
	ws bool
}

func (l guardListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	g := &guardConn{Conn: c}
	if l.ws {
		g.ws = &wsScan{}
	}
	return g, nil
}

var errTooManyParams = errors.New("a SIP message with too many parameters: connection closed")

// guardConn counts the parameters of the message under way in what it reads. Over TCP a
// message's count ends at the blank line after its headers, so a body's parameters (a
// registrar's requests carry none) count toward the message after it.
type guardConn struct {
	net.Conn
	params int
	tail   uint32 // the last four bytes read, to find CRLF CRLF
	ws     *wsScan
	err    error
}

func (c *guardConn) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		ok := false
		if c.ws != nil {
			ok = c.ws.scan(p[:n])
		} else {
			ok = c.scan(p[:n])
		}
		if !ok {
			c.err = errTooManyParams
			c.Conn.Close()
			return 0, c.err
		}
	}
	return n, err
}

func (c *guardConn) scan(b []byte) bool {
	for _, x := range b {
		switch x {
		case ';', '&':
			if c.params++; c.params > maxParams {
				return false
			}
		}
		if c.tail = c.tail<<8 | uint32(x); c.tail == 0x0d0a0d0a {
			c.params = 0
		}
	}
	return true
}

// wsScan follows a WebSocket connection from the server's side (RFC 6455 §5.2): the
// upgrade request, then frames, each with a header, a mask key when the client masked it
// (clients must), and a payload. It counts the parameters of each message (a data frame and
// its continuations, up to the one with FIN set); control frames are skipped.
type wsScan struct {
	upgraded  bool
	tail      uint32
	hdr       [14]byte
	have      int    // header bytes collected
	left      uint64 // payload bytes still to come
	key       [4]byte
	masked    bool
	at        uint64 // payload bytes seen, for the mask
	fin, data bool
	params    int
}

func (w *wsScan) scan(b []byte) bool {
	for len(b) > 0 {
		if !w.upgraded { // the HTTP upgrade request, up to its blank line
			x := b[0]
			b = b[1:]
			if w.tail = w.tail<<8 | uint32(x); w.tail == 0x0d0a0d0a {
				w.upgraded = true
			}
			continue
		}
		if w.left == 0 { // a frame header, byte by byte
			w.hdr[w.have] = b[0]
			w.have++
			b = b[1:]
			if !w.header() {
				continue
			}
			if w.left == 0 {
				w.frameEnd()
			}
			continue
		}
		n := min(uint64(len(b)), w.left)
		if w.data {
			for _, x := range b[:n] {
				if w.masked {
					x ^= w.key[w.at&3]
				}
				w.at++
				if x == ';' || x == '&' {
					if w.params++; w.params > maxParams {
						return false
					}
				}
			}
		}
		b = b[n:]
		if w.left -= n; w.left == 0 {
			w.frameEnd()
		}
	}
	return true
}

// header reports whether the frame header is complete, and then takes it in.
func (w *wsScan) header() bool {
	if w.have < 2 {
		return false
	}
	need := 2
	switch w.hdr[1] & 0x7f {
	case 126:
		need += 2
	case 127:
		need += 8
	}
	masked := w.hdr[1]&0x80 != 0
	if masked {
		need += 4
	}
	if w.have < need {
		return false
	}
	var size uint64
	switch n := w.hdr[1] & 0x7f; n {
	case 126:
		size = uint64(binary.BigEndian.Uint16(w.hdr[2:4]))
	case 127:
		size = binary.BigEndian.Uint64(w.hdr[2:10])
	default:
		size = uint64(n)
	}
	if masked {
		copy(w.key[:], w.hdr[need-4:need])
	}
	opcode := w.hdr[0] & 0x0f
	w.fin, w.data, w.masked = w.hdr[0]&0x80 != 0, opcode < 8, masked
	w.left, w.at, w.have = size, 0, 0
	return true
}

// frameEnd closes a frame: the last frame of a message starts the next message's count.
func (w *wsScan) frameEnd() {
	if w.data && w.fin {
		w.params = 0
	}
}
