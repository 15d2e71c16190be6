// Package testenv starts the real servers the tests talk to (redis-server, nginx with Nchan,
// SIPp) on free loopback ports in temporary folders, and stops them when the test ends.
//
// A missing binary skips the test with the exact install command, except when the CI
// environment variable is set: there a missing tool is a failure, so CI can never pass by
// skipping.
package testenv

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Require returns the path of binary, or skips (fails under CI) with the install hint.
func Require(t testing.TB, binary, install string) string {
	t.Helper()
	path, err := exec.LookPath(binary)
	if err == nil {
		return path
	}
	for _, dir := range []string{"/usr/sbin", "/usr/local/sbin", "/sbin"} {
		candidate := filepath.Join(dir, binary)
		if st, statErr := os.Stat(candidate); statErr == nil && !st.IsDir() {
			return candidate
		}
	}
	msg := fmt.Sprintf("%s not found; install it with: %s", binary, install)
	if os.Getenv("CI") != "" {
		t.Fatal(msg + " (CI is set, so a missing tool fails instead of skipping)")
	}
	t.Skip(msg)
	return ""
}

// FreePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// FreeUDPPort returns a port free for both UDP and TCP on 127.0.0.1 a moment ago.
func FreeUDPPort(t testing.TB) int {
	t.Helper()
	for range 50 {
		port := FreePort(t)
		pc, err := net.ListenPacket("udp", "127.0.0.1:"+strconv.Itoa(port))
		if err == nil {
			pc.Close()
			return port
		}
	}
	t.Fatal("no port free for both UDP and TCP")
	return 0
}

// WaitTCP waits until addr accepts TCP connections or the timeout passes.
func WaitTCP(t testing.TB, addr string, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not accept connections within %s", addr, timeout)
}

// Redis is a redis-server owned by one test.
type Redis struct {
	Addr string // host:port
	dir  string
	port int
	cmd  *exec.Cmd
	bin  string
}

// URL is the redis:// URL of the server.
func (r *Redis) URL() string { return "redis://" + r.Addr + "/0" }

// StartRedis starts a redis-server on a free loopback port, persisting into a temp dir,
// and stops it when the test ends.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin := Require(t, "redis-server", "apt-get install -y redis-server")
	r := &Redis{dir: t.TempDir(), port: FreePort(t), bin: bin}
	r.Addr = "127.0.0.1:" + strconv.Itoa(r.port)
	r.Start(t)
	t.Cleanup(func() { r.Stop() })
	return r
}

// Start (re)starts the server on the same port and data dir.
func (r *Redis) Start(t testing.TB) {
	t.Helper()
	r.cmd = exec.Command(r.bin,
		"--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--dir", r.dir, "--save", "", "--appendonly", "yes", "--appendfsync", "always",
		"--daemonize", "no", "--loglevel", "warning")
	r.cmd.Stdout, r.cmd.Stderr = os.Stderr, os.Stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("starting redis-server: %v", err)
	}
	WaitTCP(t, r.Addr, 10*time.Second)
	r.waitPing(t)
}

func (r *Redis) waitPing(t testing.TB) {
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", r.Addr, time.Second)
		if err == nil {
			c.SetDeadline(time.Now().Add(time.Second))
			fmt.Fprint(c, "PING\r\n")
			line, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(line, "+PONG") {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("redis at %s never answered PING", r.Addr)
}

// Stop kills the server (SIGKILL: tests use it to simulate Redis dying) and waits for it.
func (r *Redis) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	_ = r.cmd.Process.Kill()
	_ = r.cmd.Wait()
	r.cmd = nil
}

// Pause freezes the server (SIGSTOP): its connections stay open and nothing is answered,
// as with a hung server or a network partition that resets nothing. Resume thaws it.
func (r *Redis) Pause() { _ = r.cmd.Process.Signal(syscall.SIGSTOP) }

// Resume thaws a paused server.
func (r *Redis) Resume() { _ = r.cmd.Process.Signal(syscall.SIGCONT) }

// Process runs a helper program for the duration of a test and kills it at cleanup.
func Process(t testing.TB, ctx context.Context, name string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.CommandContext(ctx, name, args...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}
