package testhub

import (
	"fmt"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Redis is a real redis-server (Debian's) on loopback, for the cluster's
// tests: no persistence, stopped by its PID at cleanup.
type Redis struct {
	Addr string // 127.0.0.1:port

	t   testing.TB
	bin string
	out *TailBuffer
	cmd *exec.Cmd
}

// StartRedis starts redis-server on a free loopback port and waits until
// it answers.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	bin, err := findTool("REGCACHE_TEST_REDIS", "redis-server", "/usr/bin/redis-server", "install Debian's redis-server (.ci/deps does)")
	if err != nil {
		t.Fatalf("testhub: %v", err)
	}
	addr, err := FreeAddr("127.0.0.1")
	if err != nil {
		t.Fatal(err)
	}
	r := &Redis{Addr: addr, t: t, bin: bin, out: NewTailBuffer(0)}
	r.Start()
	t.Cleanup(r.Stop)
	return r
}

// Start (re)starts the server on its address, after Stop.
func (r *Redis) Start() {
	r.t.Helper()
	_, port, _ := net.SplitHostPort(r.Addr)
	r.cmd = exec.Command(r.bin, "--port", port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no")
	r.cmd.Stdout, r.cmd.Stderr = r.out, r.out
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("testhub: redis-server: %v", err)
	}
	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.DialTimeout("tcp", r.Addr, 100*time.Millisecond); err == nil {
			fmt.Fprint(c, "PING\r\n")
			buf := make([]byte, 7)
			c.SetReadDeadline(time.Now().Add(time.Second))
			n, _ := c.Read(buf)
			c.Close()
			if strings.HasPrefix(string(buf[:n]), "+PONG") {
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("testhub: redis-server did not answer on %s:\n%s", r.Addr, r.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Stop kills the server (the coordinator "goes down").
func (r *Redis) Stop() {
	if r.cmd == nil || r.cmd.Process == nil {
		return
	}
	r.cmd.Process.Signal(syscall.SIGKILL)
	r.cmd.Wait()
	r.cmd = nil
}
