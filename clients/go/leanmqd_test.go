package leanmq_test

// A real leanmqd (and a private redis-server) for the auth and TLS tests.
// The binary is $LEANMQD or the repository's target/debug/leanmqd; the
// tests skip when it, redis-server, redis-cli (or openssl for TLS) is
// missing. Nothing here builds leanmqd.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
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

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
)

// The tokens of writeTokensFile: sdkToken may send to and subscribe to
// /sdk/>, sendOnlyToken may only send to /other/>, adminToken may also
// administer /sdk/> (the Admin tests).
const (
	sdkToken      = "sdk-token-3f9c1b7e"
	sendOnlyToken = "send-only-token-8d2a4c6f"
	adminToken    = "admin-token-5e1d9a27"
)

// leanmqdBinary returns the leanmqd to test against, or skips the test.
func leanmqdBinary(t *testing.T, tools ...string) string {
	t.Helper()
	for _, tool := range append([]string{"redis-server", "redis-cli"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s is not installed", tool)
		}
	}
	bin := os.Getenv("LEANMQD")
	if bin == "" {
		bin = filepath.Join("..", "..", "target", "debug", "leanmqd")
	} else if !filepath.IsAbs(bin) {
		bin = filepath.Join("..", "..", bin) // relative to the repository root
	}
	bin, _ = filepath.Abs(bin)
	if st, err := os.Stat(bin); err != nil || st.IsDir() || st.Mode()&0o111 == 0 {
		t.Skipf("no leanmqd binary at %s (set LEANMQD or build target/debug/leanmqd)", bin)
	}
	return bin
}

// tokenHash is what `leanmqd hash-token` prints for token.
func tokenHash(token string) string {
	sum := sha256.Sum256([]byte(token))
	return "sha256:" + hex.EncodeToString(sum[:])
}

func writeTokensFile(t *testing.T, dir string) string {
	t.Helper()
	path := filepath.Join(dir, "tokens.toml")
	text := fmt.Sprintf(`[[tokens]]
name = "sdk"
hash = %q
send = ["/sdk/>"]
subscribe = ["/sdk/>"]

[[tokens]]
name = "send-only"
hash = %q
send = ["/other/>"]

[[tokens]]
name = "admin"
hash = %q
send = ["/sdk/>"]
subscribe = ["/sdk/>"]
admin = ["/sdk/>"]
`, tokenHash(sdkToken), tokenHash(sendOnlyToken), tokenHash(adminToken))
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// selfSignedCert makes a throwaway certificate for localhost and 127.0.0.1
// in dir and returns the cert and key files.
func selfSignedCert(t *testing.T, dir string) (certFile, keyFile string) {
	t.Helper()
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	out, err := exec.Command("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
		"-keyout", keyFile, "-out", certFile, "-subj", "/CN=localhost",
		"-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-days", "1").CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	return certFile, keyFile
}

// tlsCredentials trusts certFile only.
func tlsCredentials(t *testing.T, certFile string) credentials.TransportCredentials {
	t.Helper()
	pem, err := os.ReadFile(certFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		t.Fatal("no certificate in " + certFile)
	}
	return credentials.NewClientTLSFromCert(pool, "")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// stopProcess sends SIGTERM to cmd's process and waits, killing it after 10 s.
func stopProcess(cmd *exec.Cmd, done <-chan struct{}) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

// startProcess starts cmd and stops it when the test ends.
func startProcess(t *testing.T, cmd *exec.Cmd) <-chan struct{} {
	t.Helper()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() { stopProcess(cmd, done) })
	return done
}

type redisServer struct{ port int }

func startRedis(t *testing.T) *redisServer {
	t.Helper()
	r := &redisServer{port: freePort(t)}
	done := startProcess(t, exec.Command("redis-server", "--port", strconv.Itoa(r.port), "--bind", "127.0.0.1",
		"--dir", t.TempDir(), "--save", "", "--appendonly", "no"))
	deadline := time.Now().Add(10 * time.Second)
	for r.cli(t, "PING") != "PONG" {
		select {
		case <-done:
			t.Fatal("redis-server exited")
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("redis-server did not answer within 10 s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	return r
}

func (r *redisServer) url() string { return fmt.Sprintf("redis://127.0.0.1:%d", r.port) }

func (r *redisServer) cli(t *testing.T, args ...string) string {
	t.Helper()
	out, _ := exec.Command("redis-cli", append([]string{"-p", strconv.Itoa(r.port)}, args...)...).Output()
	return strings.TrimSpace(string(out))
}

// pending is the number of entries of stream delivered to group and not acked.
func (r *redisServer) pending(t *testing.T, stream, group string) int {
	t.Helper()
	first, _, _ := strings.Cut(r.cli(t, "XPENDING", stream, group), "\n")
	n, err := strconv.Atoi(first)
	if err != nil {
		return -1
	}
	return n
}

// startLeanmqd runs leanmqd on a free port with args and waits until gRPC
// health (which needs no token) says SERVING, over creds.
func startLeanmqd(t *testing.T, bin, redisURL string, creds credentials.TransportCredentials, args ...string) string {
	t.Helper()
	return launchLeanmqd(t, bin, redisURL, creds, args...).addr
}

// leanmqd is a running leanmqd that can be restarted on its address.
type leanmqd struct {
	t     *testing.T
	bin   string
	addr  string
	argv  []string
	creds credentials.TransportCredentials
	cmd   *exec.Cmd
	done  <-chan struct{}
}

// launchLeanmqd is startLeanmqd, returning the process for restart.
func launchLeanmqd(t *testing.T, bin, redisURL string, creds credentials.TransportCredentials, args ...string) *leanmqd {
	t.Helper()
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	if creds == nil {
		creds = insecure.NewCredentials()
	}
	d := &leanmqd{t: t, bin: bin, addr: addr, creds: creds,
		argv: append([]string{"--listen", addr, "--redis-url", redisURL}, args...)}
	d.spawn()
	return d
}

// restart stops leanmqd with sig (SIGTERM: its graceful drain, killed after
// 10 s; SIGKILL: at once) and starts it again on the same address and
// arguments, returning once it serves.
func (d *leanmqd) restart(sig syscall.Signal) {
	d.t.Helper()
	d.stop(sig)
	d.spawn()
}

// stop stops leanmqd with sig (killed after 10 s) and waits for it to exit.
func (d *leanmqd) stop(sig syscall.Signal) {
	_ = d.cmd.Process.Signal(sig)
	select {
	case <-d.done:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

func (d *leanmqd) spawn() {
	t := d.t
	t.Helper()
	var log bytes.Buffer
	cmd := exec.Command(d.bin, d.argv...)
	cmd.Stdout, cmd.Stderr = &log, &log
	done := startProcess(t, cmd)
	d.cmd, d.done = cmd, done
	conn, err := grpc.NewClient(d.addr, grpc.WithTransportCredentials(d.creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	health := healthpb.NewHealthClient(conn)
	deadline := time.Now().Add(20 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		resp, err := health.Check(ctx, &healthpb.HealthCheckRequest{})
		cancel()
		if err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING {
			return
		}
		select {
		case <-done:
			t.Fatalf("leanmqd exited before serving:\n%s", log.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("leanmqd not serving within 20 s (last error %v)", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
