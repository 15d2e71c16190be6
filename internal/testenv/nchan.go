package testenv

import (
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

// nchanModule is where Debian's libnginx-mod-nchan puts the module.
const nchanModule = "/usr/lib/nginx/modules/ngx_nchan_module.so"

// Nchan is an nginx + Nchan owned by one test, running the project's docker/nginx-nchan.conf.
type Nchan struct {
	URL  string // http://127.0.0.1:port
	dir  string
	conf string
	bin  string
	cmd  *exec.Cmd
}

// StartNchan renders docker/nginx-nchan.conf (only the listen port changes, plus the
// subscriber timeout when subscriberTimeout is not empty) into a temp dir and runs nginx on
// it until the test ends.
func StartNchan(t testing.TB, subscriberTimeout string) *Nchan {
	t.Helper()
	bin := Require(t, "nginx", "apt-get install -y nginx-light libnginx-mod-nchan")
	if _, err := os.Stat(nchanModule); err != nil {
		msg := "the Nchan module is missing; install it with: apt-get install -y libnginx-mod-nchan"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	src, err := os.ReadFile(filepath.Join(RepoRoot(t), "docker", "nginx-nchan.conf"))
	if err != nil {
		t.Fatal(err)
	}
	port := FreePort(t)
	conf := strings.Replace(string(src), "listen 127.0.0.1:8089;", "listen 127.0.0.1:"+strconv.Itoa(port)+";", 1)
	if subscriberTimeout != "" {
		conf = strings.Replace(conf, "nchan_subscriber_timeout 60s;", "nchan_subscriber_timeout "+subscriberTimeout+";", 1)
	}
	n := &Nchan{URL: "http://127.0.0.1:" + strconv.Itoa(port), dir: t.TempDir(), bin: bin}
	if err := os.MkdirAll(filepath.Join(n.dir, "temp"), 0o755); err != nil {
		t.Fatal(err)
	}
	n.conf = filepath.Join(n.dir, "nginx.conf")
	if err := os.WriteFile(n.conf, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	n.Start(t)
	t.Cleanup(n.Stop)
	return n
}

// Start (re)starts nginx on the same port and config.
func (n *Nchan) Start(t testing.TB) {
	t.Helper()
	n.cmd = exec.Command(n.bin, "-c", n.conf, "-p", n.dir)
	n.cmd.Stdout, n.cmd.Stderr = os.Stderr, os.Stderr
	// Its own process group, so Stop kills the workers with the master.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := n.cmd.Start(); err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	WaitTCP(t, strings.TrimPrefix(n.URL, "http://"), 10*time.Second)
}

// Stop kills nginx (its memory store, and every channel in it, is gone).
func (n *Nchan) Stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL) // master and workers
	_ = n.cmd.Wait()
	n.cmd = nil
	addr := strings.TrimPrefix(n.URL, "http://")
	for range 100 { // until the port is closed
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(20 * time.Millisecond)
	}
}

// Reload sends nginx -s reload: Nchan's memory store drops its channels.
func (n *Nchan) Reload(t testing.TB) {
	t.Helper()
	if out, err := exec.Command(n.bin, "-c", n.conf, "-p", n.dir, "-s", "reload").CombinedOutput(); err != nil {
		t.Fatalf("nginx reload: %v\n%s", err, out)
	}
	time.Sleep(300 * time.Millisecond)
}

// RepoRoot is the folder holding go.mod, found upwards from the working directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the working directory")
		}
		dir = parent
	}
}
