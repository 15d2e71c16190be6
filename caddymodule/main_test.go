package caddymodule

import (
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"

	"github.com/softphone-gateway/softphone-gateway/internal/testenv"
)

// TestMain lets the test binary stand in for our Caddy: with SOFTPHONE_TEST_AS_CADDY set it
// runs Caddy's command line (the same main as cmd/caddy), so tests can start whole gateway
// processes — two sharing a Redis, or one killed and started again — without building
// anything extra.
func TestMain(m *testing.M) {
	if args := os.Getenv("SOFTPHONE_TEST_AS_CADDY"); args != "" {
		os.Args = append([]string{"caddy"}, strings.Split(args, "\x1f")...)
		caddycmd.Main()
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// gatewayProc is a gateway running as its own process.
type gatewayProc struct {
	t        *testing.T
	cmd      *exec.Cmd
	config   string
	Base     string
	API      string
	Port     int
	AdminURL string
	logPath  string
	env      []string
}

// startGatewayProc runs Caddy (this test binary) on the Caddyfile in config, in which
// {PORT} and {ADMIN} are replaced by free ports. dir holds the Caddyfile and its log.
func startGatewayProc(t *testing.T, dir, config string) *gatewayProc {
	t.Helper()
	p := &gatewayProc{t: t, Port: testenv.FreePort(t)}
	admin := testenv.FreePort(t)
	p.Base = "http://127.0.0.1:" + strconv.Itoa(p.Port)
	p.API = p.Base + DefaultPrefix
	p.AdminURL = "http://127.0.0.1:" + strconv.Itoa(admin)
	config = strings.ReplaceAll(config, "{PORT}", strconv.Itoa(p.Port))
	config = strings.ReplaceAll(config, "{ADMIN}", "127.0.0.1:"+strconv.Itoa(admin))
	p.config = filepath.Join(dir, fmt.Sprintf("Caddyfile.%d", p.Port))
	p.logPath = p.config + ".log"
	if err := os.WriteFile(p.config, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	p.start()
	t.Cleanup(p.stop)
	return p
}

// startExampleProc runs ../Caddyfile.example as shipped, placed by its environment
// variables (plus env), with data in dir.
func startExampleProc(t *testing.T, dir string, env ...string) *gatewayProc {
	t.Helper()
	return startExampleConfig(t, dir, "../Caddyfile.example", env...)
}

// startExampleConfig runs the Caddyfile at config (Caddyfile.example or a variant of it),
// placed by the example's environment variables (plus env), with data in dir.
func startExampleConfig(t *testing.T, dir, config string, env ...string) *gatewayProc {
	t.Helper()
	p := &gatewayProc{t: t, Port: testenv.FreePort(t), config: config}
	admin := testenv.FreePort(t)
	p.Base = "http://127.0.0.1:" + strconv.Itoa(p.Port)
	p.API = p.Base + DefaultPrefix
	p.AdminURL = "http://127.0.0.1:" + strconv.Itoa(admin)
	p.logPath = filepath.Join(dir, "caddy.log")
	p.env = append([]string{
		"SOFTPHONE_LISTEN=http://127.0.0.1:" + strconv.Itoa(p.Port),
		"SOFTPHONE_ADMIN=127.0.0.1:" + strconv.Itoa(admin),
		"SOFTPHONE_DATA_DIR=" + filepath.Join(dir, "data"),
		"SOFTPHONE_USERS_FILE=../examples/users.json",
		"SOFTPHONE_RECORDINGS_DIR=../examples/recordings",
		"XDG_DATA_HOME=" + filepath.Join(dir, "xdg-data"),
		"XDG_CONFIG_HOME=" + filepath.Join(dir, "xdg-config"),
	}, env...)
	p.start()
	t.Cleanup(p.stop)
	return p
}

// log returns what the process has written so far.
func (p *gatewayProc) log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

func (p *gatewayProc) start() {
	p.t.Helper()
	log, err := os.OpenFile(p.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer log.Close()
	p.cmd = exec.Command(os.Args[0])
	p.cmd.Env = append(append(os.Environ(), p.env...), "SOFTPHONE_TEST_AS_CADDY="+strings.Join([]string{"run", "--config", p.config, "--adapter", "caddyfile"}, "\x1f"))
	p.cmd.Stdout, p.cmd.Stderr = log, log
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get(p.API + "/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, _ := os.ReadFile(p.logPath)
	p.t.Fatalf("gateway process did not come up:\n%s", b)
}

// stop kills the process (SIGKILL: nothing is flushed on the way out).
func (p *gatewayProc) stop() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	_ = p.cmd.Wait()
	p.cmd = nil
}

// restart kills the process and starts it again on the same config and ports.
func (p *gatewayProc) restart() {
	p.t.Helper()
	p.stop()
	p.start()
}

// reload asks the running Caddy to load its Caddyfile again through the admin API, as
// `caddy reload` does.
func (p *gatewayProc) reload() {
	p.t.Helper()
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), "SOFTPHONE_TEST_AS_CADDY="+strings.Join([]string{"reload", "--config", p.config, "--adapter", "caddyfile", "--address", strings.TrimPrefix(p.AdminURL, "http://"), "--force"}, "\x1f"))
	if out, err := cmd.CombinedOutput(); err != nil {
		p.t.Fatalf("caddy reload: %v\n%s", err, out)
	}
}

// client is a testGateway view of the process, for its request helpers.
func (p *gatewayProc) client() *testGateway {
	return &testGateway{t: p.t, Base: p.Base, API: p.API, Port: p.Port}
}
