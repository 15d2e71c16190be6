// Package bench holds make bench (run.sh) and its smoke test. The bench itself is not a test:
// it measures. This test only runs it for about a second per part and checks that every part
// produced a number, so the bench cannot rot unnoticed.
package bench

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
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
	// Every target a one-second run misses is listed again, with what is known of it.
	if gi := strings.Index(res, "## Remaining gaps"); gi < 0 {
		t.Error("no Remaining gaps section")
	} else {
		for _, m := range regexp.MustCompile(`(?m)^\| ([^|]+) \| [^|]+ \| \*\*missed\*\* \|$`).FindAllStringSubmatch(res, -1) {
			if !strings.Contains(res[gi:], "### ") || !strings.Contains(res[gi:], m[1]) {
				t.Errorf("missed target %q is not under Remaining gaps", m[1])
			}
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

// results is a RESULTS.md body as run.sh writes it, with the memory store's token checks,
// the SIP table and the microbenchmarks: guard is the softphone_guard row's ratio and
// sidecar the memory store's rate against Kamailio's 20000/s.
func results(guard string, sidecar int) string {
	return strings.Join([]string{
		"| memory | `respond` (Caddy's ceiling) | 40000 | 1.6 | 40 | 1.00× respond |",
		"| memory | file, unprotected | 16000 | 4 | 80 | 0.4000× respond |",
		"| memory | `check-media-access`, valid token | 39000 | 1.7 | 41 | 0.9750× respond |",
		"| memory | file behind `softphone_guard` | 14000 | 4.5 | 86 | " + guard + "× unprotected |",
		"| memory | file behind `forward_auth` (`transport softphone`, in-process) → `check-media-access` | 10000 | 6 | 100 | 0.6500× unprotected |",
		"| memory | file behind `forward_auth` → `check-media-access` over loopback | 8200 | 9 | 25 | 0.5100× unprotected; 0.9000× the loopback ceiling |",
		"| memory | file behind `forward_auth` → bare `respond 200` over loopback (the loopback ceiling) | 9000 | 8 | 23 | 0.5600× unprotected |",
		"| Kamailio 5.6 (registrar + auth) | 20000 | 20000, 19000 | 1.00× |",
		"| sipsidecar, memory store, callback answered by the gateway | " + strconv.Itoa(sidecar) + " | " + strconv.Itoa(sidecar) + " | x |",
		"| BenchmarkVerify-2 | 31.07 | 0 | 0 |",
		"",
	}, "\n")
}

// runTargets runs the targets.py in dir on body and returns what it made of it.
func runTargets(t *testing.T, dir, body string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "RESULTS.md")
	if err := os.WriteFile(f, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("python3", filepath.Join(dir, "targets.py"), f).CombinedOutput(); err != nil {
		t.Fatalf("targets.py: %v\n%s", err, out)
	}
	b, err := os.ReadFile(f)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestTargetsExplainEveryMiss: a missed target gets its verdict and, under "Remaining gaps",
// what bench/gaps.md knows of it; a met one gets no section; a miss gaps.md knows nothing of
// is called new.
func TestTargetsExplainEveryMiss(t *testing.T) {
	testenv.Require(t, "python3", "apt-get install -y python3")
	res := runTargets(t, ".", results("0.8500", 15000))
	for _, want := range []string{
		"| `softphone_guard` ≥ 0.9× unprotected (memory store) | 0.850× | **missed** |",
		"| sidecar REGISTER ≥ 1.0× Kamailio (memory store) | 15000/s vs 20000/s = 0.750× | **missed** |",
		"| `forward_auth` ≥ 0.5× unprotected (memory store), over loopback | 0.510× (forward_auth to a bare `respond 200` over loopback: 0.560×) | met |",
		"### `softphone_guard` ≥ 0.9× unprotected (memory store)\n\n**Cause: noise around a small cost.**",
		"### sidecar REGISTER ≥ 1.0× Kamailio (memory store)\n\n**Cause, when it misses:",
	} {
		if !strings.Contains(res, want) {
			t.Errorf("missing %q in:\n%s", want, res)
		}
	}
	gaps := res[strings.Index(res, "## Remaining gaps"):]
	if strings.Contains(gaps, "forward_auth") || strings.Contains(gaps, "Every target was met") {
		t.Errorf("a met target explained, or a miss called met:\n%s", gaps)
	}

	if res := runTargets(t, ".", results("0.9500", 21000)); !strings.Contains(res, "## Remaining gaps\n\nEvery target was met in this run.") {
		t.Errorf("all met, but:\n%s", res)
	}

	// A copy of targets.py beside a gaps.md with no section for the guard.
	dir := t.TempDir()
	src, err := os.ReadFile("targets.py")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "targets.py"), src, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "gaps.md"), []byte("# gaps\n\n## sip-memory\nKnown.\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	res = runTargets(t, dir, results("0.8500", 21000))
	if !strings.Contains(res, "### `softphone_guard` ≥ 0.9× unprotected (memory store)\n\nNothing is known of this miss yet: it is new.") {
		t.Errorf("an unexplained miss is not called new:\n%s", res)
	}
}
