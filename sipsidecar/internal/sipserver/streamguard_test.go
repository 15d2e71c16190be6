package sipserver

import (
	"bufio"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// params is n distinct URI parameters.
func params(n int) string {
	var b strings.Builder
	for i := range n {
		b.WriteString(";p" + strconv.Itoa(i))
	}
	return b.String()
}

// streamRegister is a REGISTER over a stream transport with extra Via parameters.
func streamRegister(transport, branch, viaParams string) string {
	return "REGISTER sip:pbx.test SIP/2.0\r\n" +
		"Via: SIP/2.0/" + transport + " 127.0.0.1:5070;branch=" + branch + viaParams + "\r\n" +
		"From: <sip:201@pbx.test>;tag=a1\r\nTo: <sip:201@pbx.test>\r\n" +
		"Call-ID: c-" + branch + "\r\nCSeq: 1 REGISTER\r\n" +
		"Contact: <sip:201@127.0.0.1:5070;transport=" + strings.ToLower(transport) + ">\r\n" +
		"Content-Length: 0\r\n\r\n"
}

// Attack: over TCP sipgo parses each complete header line as it arrives and checks the
// message's size only after, so one line of 8,000 distinct parameters cost about 165 ms of
// CPU per 32 KB written. The connection is now closed before sipgo parses the line; a
// request with 200 parameters on another connection is answered.
func TestTCPManyParametersCloseTheConnection(t *testing.T) {
	h, calls := counted(answer(200))
	s := New(Options{Handler: h, Workers: 4})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeTCP(ln)
	t.Cleanup(func() { ln.Close(); s.Close() })

	// 1,200 parameters fit in maxStreamMessage, so sipgo alone would parse the message and
	// hand it on; 8,000 do not, and sipgo alone would parse them all before refusing.
	for _, n := range []int{1200, 8000} {
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		start := time.Now()
		c.Write([]byte(streamRegister("TCP", "z9hG4bK-flood", params(n)))) // may fail once closed
		buf := make([]byte, 4096)
		got, err := c.Read(buf)
		if err == nil || got > 0 {
			t.Fatalf("%d parameters: the connection stayed open or was answered: %q, %v", n, buf[:got], err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("%d parameters: closing the connection took %v", n, d)
		}
	}

	c2, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	c2.SetDeadline(time.Now().Add(3 * time.Second))
	c2.Write([]byte(streamRegister("TCP", "z9hG4bK-many", params(200)) + streamRegister("TCP", "z9hG4bK-again", params(200))))
	r := bufio.NewReader(c2)
	answered := map[string]bool{} // the two are handled side by side: either may come first
	for range 2 {
		got := readResponse(t, r)
		if !strings.HasPrefix(got, "SIP/2.0 200") {
			t.Fatalf("a request with 200 parameters: %q", got)
		}
		for _, branch := range []string{"z9hG4bK-many", "z9hG4bK-again"} {
			if strings.Contains(got, "branch="+branch+";") {
				answered[branch] = true
			}
		}
	}
	if len(answered) != 2 {
		t.Fatalf("answers for %v, want both requests", answered)
	}
	if calls.Load() != 2 {
		t.Fatalf("the handler ran %d times, want 2", calls.Load())
	}
}

// readResponse reads one SIP response (headers and a Content-Length body) from r.
func readResponse(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	var b strings.Builder
	length := 0
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			t.Fatalf("reading a response: %v (so far %q)", err, b.String())
		}
		b.WriteString(line)
		if v, ok := strings.CutPrefix(strings.ToLower(line), "content-length:"); ok {
			length, _ = strconv.Atoi(strings.TrimSpace(v))
		}
		if line == "\r\n" {
			break
		}
	}
	body := make([]byte, length)
	if _, err := r.Read(body); length > 0 && err != nil {
		t.Fatal(err)
	}
	return b.String() + string(body)
}

// wsDial opens a SIP WebSocket to addr and returns it after the upgrade.
func wsDial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(3 * time.Second))
	key := make([]byte, 16)
	rand.Read(key)
	req := "GET / HTTP/1.1\r\nHost: " + addr + "\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
		"Sec-WebSocket-Key: " + base64.StdEncoding.EncodeToString(key) + "\r\nSec-WebSocket-Version: 13\r\n" +
		"Sec-WebSocket-Protocol: sip\r\n\r\n"
	if _, err := c.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
	r := bufio.NewReader(c)
	resp, err := http.ReadResponse(r, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	return c, r
}

// wsFrame is a masked client frame (RFC 6455 §5.2) holding payload.
func wsFrame(opcode byte, fin bool, payload []byte) []byte {
	b0 := opcode
	if fin {
		b0 |= 0x80
	}
	f := []byte{b0}
	switch n := len(payload); {
	case n < 126:
		f = append(f, 0x80|byte(n))
	case n < 1<<16:
		f = append(f, 0x80|126, byte(n>>8), byte(n))
	default:
		f = append(f, 0x80|127)
		f = binary.BigEndian.AppendUint64(f, uint64(n))
	}
	key := [4]byte{0x37, 0xfa, 0x21, 0x3d}
	f = append(f, key[:]...)
	for i, x := range payload {
		f = append(f, x^key[i&3])
	}
	return f
}

// readWSText reads one unmasked server frame and returns its payload.
func readWSText(t *testing.T, r *bufio.Reader) string {
	t.Helper()
	var h [2]byte
	if _, err := r.Read(h[:1]); err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	h[1], _ = r.ReadByte()
	n := int(h[1] & 0x7f)
	switch n {
	case 126:
		var l [2]byte
		r.Read(l[:])
		n = int(binary.BigEndian.Uint16(l[:]))
	case 127:
		var l [8]byte
		r.Read(l[:])
		n = int(binary.BigEndian.Uint64(l[:]))
	}
	p := make([]byte, n)
	for got := 0; got < n; {
		m, err := r.Read(p[got:])
		if err != nil {
			t.Fatal(err)
		}
		got += m
	}
	return string(p)
}

// The same attack over WebSocket, where every frame is masked: the connection is closed
// whether the parameters come in one frame or spread over continuation frames, and a
// request with 200 parameters is answered.
func TestWSManyParametersCloseTheConnection(t *testing.T) {
	h, calls := counted(answer(200))
	s := New(Options{Handler: h, Workers: 4})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go s.ServeWS(ln)
	t.Cleanup(func() { ln.Close(); s.Close() })

	c, r := wsDial(t, ln.Addr().String())
	c.Write(wsFrame(1, true, []byte(streamRegister("WS", "z9hG4bK-many", params(200)))))
	if got := readWSText(t, r); !strings.HasPrefix(got, "SIP/2.0 200") || !strings.Contains(got, "z9hG4bK-many") {
		t.Fatalf("the request with 200 parameters: %q", got)
	}

	for name, frames := range map[string][][]byte{
		"one frame":       {wsFrame(1, true, []byte(streamRegister("WS", "z9hG4bK-flood", params(8000))))},
		"one small frame": {wsFrame(1, true, []byte(streamRegister("WS", "z9hG4bK-small", params(1200))))},
		"fragments": func() [][]byte {
			msg := []byte(streamRegister("WS", "z9hG4bK-frag", params(8000)))
			var fs [][]byte
			for i := 0; i < len(msg); i += 4000 {
				end := min(i+4000, len(msg))
				op := byte(0)
				if i == 0 {
					op = 1
				}
				fs = append(fs, wsFrame(op, end == len(msg), msg[i:end]))
			}
			return fs
		}(),
	} {
		c, r := wsDial(t, ln.Addr().String())
		start := time.Now()
		for _, f := range frames {
			c.Write(f)
		}
		if b, err := r.ReadByte(); err == nil {
			t.Fatalf("%s: the flooding connection was answered (first byte %q)", name, b)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("%s: closing the flooding connection took %v", name, d)
		}
	}
	if calls.Load() != 1 {
		t.Fatalf("the handler ran %d times, want 1", calls.Load())
	}
}

// wsScan counts by message across frames and chunks, unmasks, skips control frames, and
// starts each message's count afresh.
func TestWSScan(t *testing.T) {
	upgrade := []byte("GET / HTTP/1.1\r\nX-Many: " + strings.Repeat(";", 300) + "\r\n\r\n")
	feed := func(chunk int, parts ...[]byte) bool {
		w := &wsScan{}
		var all []byte
		for _, p := range parts {
			all = append(all, p...)
		}
		for i := 0; i < len(all); i += chunk {
			if !w.scan(all[i:min(i+chunk, len(all))]) {
				return false
			}
		}
		return true
	}
	semis := func(n int) []byte { return []byte(strings.Repeat(";", n)) }
	for _, chunk := range []int{1, 3, 7, 64, 1 << 20} {
		cases := []struct {
			name  string
			ok    bool
			parts [][]byte
		}{
			{"the upgrade's own semicolons do not count", true, [][]byte{upgrade, wsFrame(1, true, semis(maxParams))}},
			{"one frame at the bound", true, [][]byte{upgrade, wsFrame(1, true, semis(maxParams))}},
			{"one frame over it", false, [][]byte{upgrade, wsFrame(1, true, semis(maxParams+1))}},
			{"a message over it in two frames", false, [][]byte{upgrade, wsFrame(1, false, semis(200)), wsFrame(0, true, semis(100))}},
			{"two messages under it", true, [][]byte{upgrade, wsFrame(1, true, semis(200)), wsFrame(1, true, semis(200))}},
			{"a ping between fragments is not counted", true, [][]byte{upgrade, wsFrame(1, false, semis(200)), wsFrame(9, true, semis(100)), wsFrame(0, true, semis(50))}},
			{"a 16-bit length", false, [][]byte{upgrade, wsFrame(2, true, append(make([]byte, 1000), semis(maxParams+1)...))}},
			{"a 64-bit length", true, [][]byte{upgrade, wsFrame(2, true, make([]byte, 70000))}},
		}
		for _, c := range cases {
			if got := feed(chunk, c.parts...); got != c.ok {
				t.Errorf("chunks of %d, %s: scan says %v, want %v", chunk, c.name, got, c.ok)
			}
		}
	}
	// Masking is undone: a payload of ';' masked with 0x00 would read as itself either way,
	// so check a masked byte that becomes ';' only once unmasked.
	w := &wsScan{upgraded: true}
	f := wsFrame(1, true, semis(maxParams+1))
	if f[6] == ';' {
		t.Fatal("the test's mask leaves ';' unchanged")
	}
	if w.scan(f) {
		t.Error("masked semicolons were not counted")
	}
}
