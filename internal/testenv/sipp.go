package testenv

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// SIPp runs sipp with args in a temp dir (its logs land there) and returns its exit code and
// its error log. It is bounded by timeout.
func SIPp(t testing.TB, timeout time.Duration, args ...string) (int, string) {
	t.Helper()
	bin := Require(t, "sipp", "apt-get install -y sip-tester")
	dir := t.TempDir()
	errFile := filepath.Join(dir, "errors.log")
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, append(args, "-trace_err", "-error_file", errFile, "-nostdin")...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	code := 0
	if err != nil {
		code = -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
	}
	log, _ := os.ReadFile(errFile)
	if code != 0 {
		t.Logf("sipp exit %d\n%s\n%s", code, tail(out, 2000), log)
	}
	return code, string(log)
}

// UsersCSV writes a SIPp injection file: SEQUENTIAL, then user;domain;[authentication …].
func UsersCSV(t testing.TB, domain string, users map[string]string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "users.csv")
	b := []byte("SEQUENTIAL\n")
	for u, pw := range users {
		b = append(b, u+";"+domain+";[authentication username="+u+" password="+pw+"]\n"...)
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// Itoa is strconv.Itoa, for building command lines.
func Itoa(n int) string { return strconv.Itoa(n) }
