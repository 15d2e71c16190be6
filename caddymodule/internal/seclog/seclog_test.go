package seclog

import (
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestLineFormat(t *testing.T) {
	at := time.Date(2026, 1, 19, 16, 44, 55, 0, time.Local)
	got := Line(AuthFailed, "Failed login attempt for user: 201", "10.0.0.5", at)
	if got != "[AUTH_FAILED] Failed login attempt for user: 201 | From: 10.0.0.5 | Time: 2026-01-19 16:44:55\n" {
		t.Fatalf("%q", got)
	}
	// A crafted username cannot forge a second line or a field.
	forged := Line(AuthFailed, "Failed login attempt for user: x\n[AUTH_SUCCESS] User 201 logged in | From: 1.2.3.4", "10.0.0.5", at)
	if strings.Count(forged, "\n") != 1 || strings.Count(forged, " | ") != 2 {
		t.Fatalf("forged line %q", forged)
	}
}

func TestRotationAndMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "security.log")
	l, err := Open(path, 300, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for i := range 20 {
		l.Write(AuthSuccess, "User "+strings.Repeat("x", i)+" logged in successfully", "127.0.0.1", time.Now())
	}
	l.Write(Logout, "the newest line", "127.0.0.1", time.Now())
	cur, _ := os.ReadFile(path)
	if !strings.Contains(string(cur), "the newest line") || len(cur) > 300 {
		t.Fatalf("current file (%d bytes): %q", len(cur), cur)
	}
	for _, p := range []string{path, path + ".1", path + ".2"} {
		st, err := os.Stat(p)
		if err != nil || st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: %v %v", p, st, err)
		}
	}
	if _, err := os.Stat(path + ".3"); err == nil {
		t.Fatal("kept more than 2 rotated files")
	}
}

func TestConcurrentWritersWriteWholeLines(t *testing.T) {
	path := filepath.Join(t.TempDir(), "security.log")
	l, _ := Open(path, 1<<20, 2)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for range 100 {
				l.Write(MediaAccessGranted, "Media access granted for user: "+strings.Repeat("u", i+1), "127.0.0.1", time.Now())
			}
		})
	}
	wg.Wait()
	l.Close()
	b, _ := os.ReadFile(path)
	lines := strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
	if len(lines) != 800 {
		t.Fatalf("%d lines", len(lines))
	}
	for _, line := range lines {
		if !strings.HasPrefix(line, "[MEDIA_ACCESS_GRANTED] Media access granted for user: u") || !strings.Contains(line, " | Time: ") {
			t.Fatalf("torn line %q", line)
		}
	}
}

// Failures reach the file at once (fail2ban reads it); routine lines within flushDelay.
func TestUrgentLinesAreWrittenAtOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "security.log")
	l, _ := Open(path, 1<<20, 2)
	defer l.Close()
	l.Write(MediaAccessGranted, "Media access granted for user: 201", "127.0.0.1", time.Now())
	l.Write(AuthFailed, "Failed login attempt for user: 202", "10.0.0.5", time.Now())
	b, _ := os.ReadFile(path)
	if !strings.Contains(string(b), "[AUTH_FAILED]") || !strings.Contains(string(b), "[MEDIA_ACCESS_GRANTED]") {
		t.Fatalf("after an urgent line: %q", b)
	}
	l.Write(AuthSuccess, "User 201 logged in successfully", "127.0.0.1", time.Now())
	time.Sleep(2 * flushDelay)
	b, _ = os.ReadFile(path)
	if !strings.Contains(string(b), "[AUTH_SUCCESS]") {
		t.Fatalf("a routine line was not written within %s: %q", 2*flushDelay, b)
	}
}

// Write reuses the last formatted timestamp within one second: each line still carries its
// own second and zone.
func TestWriteTimestamps(t *testing.T) {
	path := filepath.Join(t.TempDir(), "security.log")
	l, _ := Open(path, 1<<20, 2)
	at := time.Date(2026, 1, 19, 23, 59, 59, 100, time.UTC)
	east := time.FixedZone("UTC+3", 3*3600)
	for _, w := range []time.Time{at, at.Add(800 * time.Millisecond), at.Add(time.Second), at.Add(time.Second).In(east), at.Add(time.Second)} {
		l.Write(MediaAccessGranted, "Media access granted for user: 201", "127.0.0.1", w)
	}
	l.Close()
	b, _ := os.ReadFile(path)
	var stamps []string
	for _, line := range strings.Split(strings.TrimSuffix(string(b), "\n"), "\n") {
		_, stamp, _ := strings.Cut(line, " | Time: ")
		stamps = append(stamps, stamp)
	}
	want := []string{"2026-01-19 23:59:59", "2026-01-19 23:59:59", "2026-01-20 00:00:00", "2026-01-20 03:00:00", "2026-01-20 00:00:00"}
	if strings.Join(stamps, ",") != strings.Join(want, ",") {
		t.Fatalf("stamps %q, want %q", stamps, want)
	}
}

// Names outside printable ASCII keep their letters; control bytes, '|' and broken UTF-8
// become '_'.
func TestLineCleansFields(t *testing.T) {
	at := time.Date(2026, 1, 19, 16, 44, 55, 0, time.UTC)
	for in, want := range map[string]string{
		"Žofie":        "Žofie",
		"a|b":          "a_b",
		"a\x7fb":       "a_b",
		"a\xffb":       "a_b",
		"a\tb":         "a_b",
		"plain-name.1": "plain-name.1",
	} {
		got := Line(AuthFailed, in, "10.0.0.5", at)
		if got != "[AUTH_FAILED] "+want+" | From: 10.0.0.5 | Time: 2026-01-19 16:44:55\n" {
			t.Errorf("%q: %q", in, got)
		}
	}
}

// Lines wait in memory for the writer goroutine. A burst of more lines than may wait
// (maxPending) loses none: writers wait when that much is pending, and Close writes the rest.
func TestBurstLosesNoLine(t *testing.T) {
	path := filepath.Join(t.TempDir(), "security.log")
	l, _ := Open(path, 1<<30, 2)
	const writers, each = 4, 15000 // about 6 MiB of lines, over maxPending
	var wg sync.WaitGroup
	for i := range writers {
		wg.Go(func() {
			for range each {
				if err := l.Write(MediaAccessGranted, "Media access granted for user: "+strings.Repeat("u", 20+i), "127.0.0.1", time.Now()); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(path)
	if len(b) < maxPending {
		t.Fatalf("the burst (%d bytes) did not exceed maxPending", len(b))
	}
	if n := strings.Count(string(b), "\n"); n != writers*each {
		t.Fatalf("%d lines, want %d", n, writers*each)
	}
}

func TestWriteAfterCloseFails(t *testing.T) {
	path := filepath.Join(t.TempDir(), "security.log")
	l, _ := Open(path, 1<<20, 2)
	l.Write(AuthSuccess, "User 201 logged in successfully", "127.0.0.1", time.Now())
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	for _, ev := range []Event{AuthFailed, MediaAccessGranted} {
		if err := l.Write(ev, "after close", "127.0.0.1", time.Now()); err == nil {
			t.Fatalf("%s written after Close", ev)
		}
	}
	if err := l.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	b, _ := os.ReadFile(path)
	if strings.Count(string(b), "\n") != 1 || strings.Contains(string(b), "after close") {
		t.Fatalf("file after Close: %q", b)
	}
}

// A line longer than max_size gets a file of its own; no file is cut inside a line.
func TestLongLineRotatesWhole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "security.log")
	l, _ := Open(path, 300, 3)
	l.Write(AuthSuccess, "User 201 logged in successfully", "127.0.0.1", time.Now())
	l.Write(AuthFailed, "Failed login attempt for user: "+strings.Repeat("x", 400), "10.0.0.5", time.Now())
	l.Write(AuthFailed, "Failed login attempt for user: 202", "10.0.0.5", time.Now())
	l.Close()
	for p, want := range map[string]string{path + ".2": "User 201", path + ".1": "xxxx", path: "user: 202"} {
		b, err := os.ReadFile(p)
		if err != nil || strings.Count(string(b), "\n") != 1 || !strings.HasSuffix(string(b), "\n") || !strings.Contains(string(b), want) {
			t.Fatalf("%s: %q %v", p, b, err)
		}
	}
}
