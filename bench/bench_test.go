// Package bench holds make bench (run.sh) and its smoke test. The bench itself is not a test:
// it measures. This test only runs it for about a second per part and checks that every part
// produced a number, so the bench cannot rot unnoticed.
package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

func TestBenchSmoke(t *testing.T) {
	for bin, pkg := range map[string]string{"wrk": "wrk", "sipp": "sip-tester", "kamailio": "kamailio", "redis-server": "redis-server", "nginx": "nginx-light libnginx-mod-nchan"} {
		testenv.Require(t, bin, "apt-get install -y "+pkg)
	}
	out := filepath.Join(t.TempDir(), "RESULTS.md")
	cmd := exec.Command("./run.sh", "--smoke", "--out", out)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("bench/run.sh --smoke: %v", err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	res := string(b)
	checks := map[string]string{
		"token check":        `\| memory \| file behind .softphone_guard. \| [1-9]\d* \|`,
		"forward_auth":       `\| redis \| file behind .forward_auth. → .check-media-access. over loopback \| [1-9]\d* \| [\d.]+ \| [\d.]+ \| [\d.]+× unprotected( \(rounds [\d., ]+\))?; [\d.]+× the loopback ceiling( \(rounds [\d., ]+\))? \|`,
		"forward_auth local": `\| memory \| file behind .forward_auth. \(.transport softphone., in-process\) → .check-media-access. \| [1-9]\d* \| [\d.]+ \| [\d.]+ \| [\d.]+× unprotected( \(rounds [\d., ]+\))? \|`,
		"forward_auth ceil":  `\| memory \| file behind .forward_auth. → bare [^|]* \| [1-9]\d* \| [\d.]+ \| [\d.]+ \| [\d.]+× unprotected( \(rounds [\d., ]+\))? \|`,
		"check ratio":        `\| memory \| .check-media-access., valid token \| [1-9]\d* \| [\d.]+ \| [\d.]+ \| [\d.]+× respond( \(rounds [\d., ]+\))? \|`,
		"kamailio rate":      `\| Kamailio [^|]* \| (≥ )?[1-9]\d* \|`,
		"sidecar rate":       `\| sipsidecar, memory store[^|]* \| (≥ )?[1-9]\d* \|`,
		"sidecar redis rate": `\| sipsidecar, redis store[^|]* \| (≥ )?[1-9]\d* \|`,
		"fan-out gateway":    `\| gateway → Nchan \| eventsource \| \d+ \| [1-9]\d* \| [\d.]+ \|`,
		"fan-out embedded":   `\| gateway, embedded broker \| longpoll \| \d+ \| [1-9]\d* \| [\d.]+ \|`,
		"microbenchmark":     `\| BenchmarkVerify-\d+ \| [\d.]+ \|`,
		"targets":            `\| .check-media-access. ≥ 0\.9× .respond. \(memory store\) \| \d\.\d{3}× \| (met|\*\*missed\*\*) \|`,
	}
	for name, pat := range checks {
		if !regexp.MustCompile(pat).MatchString(res) {
			t.Errorf("%s: no number in the smoke results (pattern %s)", name, pat)
		}
	}
	if !strings.Contains(res, "This file is a smoke run") {
		t.Error("a smoke result is not marked as such")
	}
	if t.Failed() {
		t.Log(res)
	}
}

// TestSidecarCPUSmoke runs bench/sidecar-cpu.sh (the A/B of sidecar builds) once, briefly,
// and checks that it measured a registration cost with no failed call.
func TestSidecarCPUSmoke(t *testing.T) {
	testenv.Require(t, "sipp", "apt-get install -y sip-tester")
	bin := filepath.Join(t.TempDir(), "sipsidecar")
	if out, err := exec.Command("go", "build", "-o", bin, "../sipsidecar").CombinedOutput(); err != nil {
		t.Fatalf("building the sidecar: %v\n%s", err, out)
	}
	out, err := exec.Command("./sidecar-cpu.sh", "-r", "500", "-s", "8", "-n", "1", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("bench/sidecar-cpu.sh: %v\n%s", err, out)
	}
	res := string(out)
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(bin) + ` [\d.]+ [\d.]+ [\d.]+ 0 [1-9][\d.]*$`).MatchString(res) {
		t.Errorf("no run line with zero failed calls:\n%s", res)
	}
	if !regexp.MustCompile(regexp.QuoteMeta(bin) + `: mean sidecar [\d.]+% \([1-9][\d.]* µs/registration\)`).MatchString(res) {
		t.Errorf("no mean cost per registration:\n%s", res)
	}
	// With --redis it also reads redis-server's CPU: a Redis store that did work has some.
	testenv.Require(t, "redis-server", "apt-get install -y redis-server")
	out, err = exec.Command("./sidecar-cpu.sh", "-r", "500", "-s", "8", "-n", "1", "--redis", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("bench/sidecar-cpu.sh --redis: %v\n%s", err, out)
	}
	res = string(out)
	if !regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(bin) + ` [\d.]+ [\d.]+ [\d.]+ 0 [1-9][\d.]* [\d.]+$`).MatchString(res) {
		t.Errorf("no run line with zero failed calls and redis-server's CPU:\n%s", res)
	}
	if !regexp.MustCompile(`, redis-server [\d.]+% \((0\.[1-9]|[1-9])[\d.]* µs\)`).MatchString(res) {
		t.Errorf("no redis-server cost per registration:\n%s", res)
	}
}
