package testhub

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// VersityGWEnv names the environment variable that overrides which
// versitygw binary StartS3 runs.
const VersityGWEnv = "REGCACHE_TEST_VERSITYGW"

// S3Server is a real S3-compatible server (versitygw with its posix
// backend) on loopback, with one empty bucket.
type S3Server struct {
	Endpoint  string // http://127.0.0.1:port
	Region    string
	AccessKey string
	SecretKey string
	Bucket    string
	// Dir is the posix root; the bucket's objects are files under
	// Dir/Bucket.
	Dir string
	// Client is signed in as the root user, for tests to look into the
	// bucket.
	Client *s3.Client

	bin  string
	addr string
	out  *TailBuffer

	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan error
	stopped bool
}

// FindVersityGW returns the versitygw executable StartS3 would use, or an
// error that says how to install it.
func FindVersityGW() (string, error) {
	return findTool(VersityGWEnv, "versitygw", "", "install it with `go install github.com/versity/versitygw/cmd/versitygw@v1.8.0` (.ci/deps does)")
}

// StartS3 starts versitygw on 127.0.0.1:<free port> with a fresh posix root
// in t.TempDir() and random root credentials, waits until it answers,
// creates a bucket, and stops the process (by its PID) at cleanup.
func StartS3(t testing.TB) *S3Server {
	t.Helper()
	bin, err := FindVersityGW()
	if err != nil {
		t.Fatalf("testhub: %v", err)
	}
	dir := t.TempDir()
	s := &S3Server{Region: "us-east-1", AccessKey: "AK" + randHex(8), SecretKey: "SK" + randHex(16),
		Bucket: "regcache-test", Dir: dir, bin: bin, out: NewTailBuffer(64 << 10)}
	t.Cleanup(func() {
		s.Stop()
		if t.Failed() {
			t.Logf("testhub: versitygw %s output:\n%s", s.addr, s.out.String())
		}
	})
	// A port picked free can be taken before the server binds it.
	for attempt := 0; ; attempt++ {
		if s.addr, err = FreeAddr("127.0.0.1"); err == nil {
			if err = s.start(); err == nil {
				break
			}
		}
		if attempt == 2 {
			t.Fatalf("testhub: starting %s: %v; output:\n%s", bin, err, s.out.String())
		}
	}
	s.Endpoint = "http://" + s.addr
	s.Client = s3.New(s3.Options{
		Region:       s.Region,
		BaseEndpoint: aws.String(s.Endpoint),
		UsePathStyle: true,
		Credentials:  credentials.NewStaticCredentialsProvider(s.AccessKey, s.SecretKey, ""),
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := s.Client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &s.Bucket}); err != nil {
		t.Fatalf("testhub: creating bucket %s: %v", s.Bucket, err)
	}
	return s
}

// Env returns the environment that gives a process this server's
// credentials through the AWS SDK's default chain.
func (s *S3Server) Env() []string {
	return []string{"AWS_ACCESS_KEY_ID=" + s.AccessKey, "AWS_SECRET_ACCESS_KEY=" + s.SecretKey, "AWS_REGION=" + s.Region}
}

// Output returns the end of the server's log.
func (s *S3Server) Output() string { return s.out.String() }

// Stop kills the server, as an object-store outage; Restart brings it back
// on the same address with the same data.
func (s *S3Server) Stop() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil || s.stopped {
		return
	}
	s.stopped = true
	_ = s.cmd.Process.Kill()
	<-s.exited
}

// Restart starts a stopped server again on its address.
func (s *S3Server) Restart(t testing.TB) {
	t.Helper()
	if err := s.start(); err != nil {
		t.Fatalf("testhub: restarting versitygw on %s: %v", s.addr, err)
	}
}

func (s *S3Server) start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil && !s.stopped {
		return nil
	}
	cmd := exec.Command(s.bin, "--port", s.addr, "--quiet", "--health", "/_health", "posix", s.Dir)
	// Credentials go through the environment, not the command line that
	// ps shows.
	cmd.Env = append(os.Environ(), "ROOT_ACCESS_KEY_ID="+s.AccessKey, "ROOT_SECRET_ACCESS_KEY="+s.SecretKey)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := waitReady(ctx, "http://"+s.addr+"/_health", exited); err != nil {
		_ = cmd.Process.Kill()
		<-exited
		return err
	}
	s.cmd, s.exited, s.stopped = cmd, exited, false
	return nil
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
