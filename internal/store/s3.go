package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/aws/retry"
	v4 "github.com/aws/aws-sdk-go-v2/aws/signer/v4"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	awsconfig "github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	"github.com/opencontainers/go-digest"
)

// S3 stores content in an S3 bucket (AWS or any S3-compatible server),
// under an optional key prefix P:
//
//	P/blobs/<alg>/<first two hex>/<hex>    committed content, never rewritten
//	P/access/<alg>/<first two hex>/<hex>   empty marker; its LastModified is
//	                                       the blob's last read (for eviction)
//	P/meta/<key>                           metadata records
//
// In-flight content is never an object. A blob is streamed to a multipart
// upload of its final key, in parts of at least s3PartSize (two part
// buffers per writer, one filling while the other uploads), hashed on the
// way, and the upload is completed only after the digest and size have
// been verified; content smaller than one part is sent with one PutObject
// at Commit instead. Completing an upload publishes the object atomically
// without writing its bytes twice, as staging under a temporary key and a
// server-side copy would (beyond 5 GiB a copy is a multipart job itself).
// Both carry If-None-Match: *, so when two replicas
// commit the same digest one wins and the other's commit succeeds without
// writing. A writer closed without Commit aborts its upload; one whose
// process died leaves an incomplete upload, invisible to readers, which
// Collect aborts once it is a day old (or a bucket lifecycle rule does, see
// the README).
//
// Credentials come from the AWS SDK's default chain: environment, shared
// config and credentials files, web identity (IRSA), ECS task role, EC2
// instance role. They are never logged or put into errors.
type S3 struct {
	client   *s3.Client
	bucket   string
	prefix   string // "" or ending in "/"
	unsigned bool   // TLS endpoint: send bodies as UNSIGNED-PAYLOAD
	t        s3Timeouts

	partSize int64
	access   accessClock
	touches  chan struct{} // bounds access-marker writes in flight
	now      func() time.Time
	usage    usage
}

// S3Options configure OpenS3; they mirror storage.s3 in the config.
type S3Options struct {
	Bucket string
	// Region may be empty: then AWS_REGION or the shared config names it.
	Region string
	// Endpoint is the URL of an S3-compatible server; empty means AWS.
	Endpoint string
	// PathStyle addresses the bucket as endpoint/bucket/key instead of
	// bucket.endpoint/key (most S3-compatible servers need it).
	PathStyle bool
	// Prefix puts every object under this key prefix.
	Prefix string
	// Redirect makes the store a Redirector (storage.s3.redirect).
	Redirect bool
	// Credentials replaces the default chain (tests).
	Credentials aws.CredentialsProvider

	// timeouts and partSize replace the defaults in tests.
	timeouts s3Timeouts
	partSize int64
}

// s3Timeouts bound every call, so an unreachable or stalled object store
// gives an error instead of a hang (the server answers 503 with it).
type s3Timeouts struct {
	// dial bounds a TCP connect, tls the TLS handshake.
	dial, tls time.Duration
	// header bounds the wait for response headers once a request is sent.
	header time.Duration
	// stall cuts a GET body that delivers nothing for this long.
	stall time.Duration
	// op bounds one call (retries included) other than a streamed GET
	// body, a part upload or the completion of an upload.
	op time.Duration
	// part bounds one part upload or upload completion, retries included.
	part time.Duration
}

var defaultS3Timeouts = s3Timeouts{
	dial:   3 * time.Second,
	tls:    5 * time.Second,
	header: 15 * time.Second,
	stall:  30 * time.Second,
	op:     30 * time.Second,
	part:   5 * time.Minute,
}

const (
	// s3PartSize is the smallest part of a multipart upload (S3's minimum
	// is 5 MiB): also the most a small blob is buffered in memory.
	s3PartSize = 8 << 20
	// s3MaxParts is S3's limit of parts per upload.
	s3MaxParts = 10000
	// staleUploadAge is when an incomplete upload is taken as left by a
	// dead process and aborted: no download lasts a day.
	staleUploadAge = 24 * time.Hour
	// s3RewalkEvery bounds how long Collect trusts its running size: other
	// replicas commit too, and only a listing sees their blobs.
	s3RewalkEvery = 10 * time.Minute
	// maxMetaSize bounds a metadata record read into memory.
	maxMetaSize = 16 << 20
	// maxTouches bounds access-marker writes in flight; beyond it a read
	// is not recorded now, but on the next read.
	maxTouches = 8
)

// ErrUnavailable marks errors caused by a store that cannot be reached or
// answered with a server error, as opposed to one that said no: callers
// answer 503 and try again later.
var ErrUnavailable = errors.New("store unavailable")

// OpenS3 prepares an S3 store. It makes no network call, so regcache starts
// while the object store is down; calls fail with ErrUnavailable until it
// is back. With opt.Redirect the store also implements Redirector.
func OpenS3(ctx context.Context, opt S3Options) (Store, error) {
	s, err := openS3(ctx, opt)
	if err != nil {
		return nil, err
	}
	if opt.Redirect {
		return &s3Redirect{s}, nil
	}
	return s, nil
}

func openS3(ctx context.Context, opt S3Options) (*S3, error) {
	if opt.Bucket == "" {
		return nil, errors.New("storage.s3.bucket: must be set")
	}
	prefix, err := normalizePrefix(opt.Prefix)
	if err != nil {
		return nil, err
	}
	t := defaultS3Timeouts
	if opt.timeouts != (s3Timeouts{}) {
		t = opt.timeouts
	}
	unsigned := true
	if opt.Endpoint != "" {
		u, err := url.Parse(opt.Endpoint)
		if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return nil, fmt.Errorf("storage.s3.endpoint: %q is not an http:// or https:// URL", opt.Endpoint)
		}
		// Over plain HTTP the payload hash is what protects the bytes in
		// transit; over TLS it would only hash every byte a second time.
		unsigned = u.Scheme == "https"
	}
	httpClient := awshttp.NewBuildableClient().
		WithDialerOptions(func(d *net.Dialer) { d.Timeout = t.dial }).
		WithTransportOptions(func(tr *http.Transport) {
			tr.TLSHandshakeTimeout = t.tls
			tr.ResponseHeaderTimeout = t.header
			tr.MaxIdleConnsPerHost = 64
		})
	loadOpts := []func(*awsconfig.LoadOptions) error{
		awsconfig.WithHTTPClient(httpClient),
		awsconfig.WithRetryer(func() aws.Retryer {
			return retry.NewStandard(func(o *retry.StandardOptions) {
				o.MaxAttempts = 3
				o.MaxBackoff = 2 * time.Second
			})
		}),
	}
	if opt.Region != "" {
		loadOpts = append(loadOpts, awsconfig.WithRegion(opt.Region))
	}
	if opt.Endpoint != "" && opt.Region == "" {
		// S3-compatible servers rarely care; AWS_REGION still wins.
		loadOpts = append(loadOpts, awsconfig.WithDefaultRegion("us-east-1"))
	}
	cfg, err := awsconfig.LoadDefaultConfig(ctx, loadOpts...)
	if err != nil {
		// The shared config files are the only thing read here.
		return nil, fmt.Errorf("storage.s3: loading the AWS configuration: %w", err)
	}
	if cfg.Region == "" {
		return nil, errors.New("storage.s3.region: must be set (or AWS_REGION, or region in the shared AWS config)")
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if opt.Endpoint != "" {
			o.BaseEndpoint = aws.String(opt.Endpoint)
		}
		o.UsePathStyle = opt.PathStyle
		// A store that keeps failing is answered for at once, not after
		// every call's timeouts (s3breaker.go).
		o.HTTPClient = &s3Breaker{inner: o.HTTPClient, now: time.Now}
		// Content is verified by its digest before it is sent; the SDK's
		// extra CRC trailers are not understood by every S3-compatible
		// server.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
		if opt.Credentials != nil {
			o.Credentials = opt.Credentials
		}
	})
	part := int64(s3PartSize)
	if opt.partSize > 0 {
		part = opt.partSize
	}
	return &S3{client: client, bucket: opt.Bucket, prefix: prefix, unsigned: unsigned, t: t,
		partSize: part, touches: make(chan struct{}, maxTouches), now: time.Now}, nil
}

// normalizePrefix turns "a/b", "/a/b/" and "a/b/" into "a/b/".
func normalizePrefix(p string) (string, error) {
	p = strings.Trim(p, "/")
	if p == "" {
		return "", nil
	}
	if err := checkMetaKey(p); err != nil {
		return "", fmt.Errorf("storage.s3.prefix: %q must be plain segments separated by single slashes", p)
	}
	return p + "/", nil
}

func (s *S3) blobKey(d digest.Digest) (string, error) { return s.digestKey("blobs/", d) }

func (s *S3) accessKey(d digest.Digest) (string, error) { return s.digestKey("access/", d) }

func (s *S3) digestKey(kind string, d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil {
		return "", fmt.Errorf("invalid digest %q: %w", d, err)
	}
	h := d.Encoded()
	return s.prefix + kind + string(d.Algorithm()) + "/" + h[:2] + "/" + h, nil
}

func (s *S3) metaKey(key string) (string, error) {
	if err := checkMetaKey(key); err != nil {
		return "", err
	}
	return s.prefix + "meta/" + key, nil
}

// bodyOpts are per-call options for requests with a body: over TLS the
// payload is not hashed for the signature (the digest is checked already).
func (s *S3) bodyOpts() []func(*s3.Options) {
	if !s.unsigned {
		return nil
	}
	return []func(*s3.Options){s3.WithAPIOptions(v4.SwapComputePayloadSHA256ForUnsignedPayloadMiddleware)}
}

// Stat implements Store.
func (s *S3) Stat(ctx context.Context, d digest.Digest) (int64, error) {
	key, err := s.blobKey(d)
	if err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.t.op)
	defer cancel()
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return 0, s.wrap(key, err)
	}
	return aws.ToInt64(out.ContentLength), nil
}

// Open implements Store. It starts the GET at once, so a plain read costs
// one round trip; the Content issues ranged GETs after a Seek.
func (s *S3) Open(ctx context.Context, d digest.Digest) (Content, error) {
	key, err := s.blobKey(d)
	if err != nil {
		return nil, err
	}
	c := &s3Content{s: s, ctx: ctx, key: key, size: -1}
	if err := c.get(); err != nil {
		return nil, err
	}
	s.touch(d)
	return c, nil
}

// touch records a read of d in its access marker, at most once per
// touchEvery per process, without delaying the read.
func (s *S3) touch(d digest.Digest) {
	key, err := s.accessKey(d)
	if err != nil || !s.access.due(key, s.now()) {
		return
	}
	select {
	case s.touches <- struct{}{}:
	default:
		s.access.forget(key)
		return
	}
	go func() {
		defer func() { <-s.touches }()
		ctx, cancel := context.WithTimeout(context.Background(), s.t.op)
		defer cancel()
		if _, err := s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: &s.bucket, Key: &key,
			Body: bytes.NewReader(nil), ContentLength: aws.Int64(0)}); err != nil {
			s.access.forget(key)
		}
	}()
}

// Delete implements Store.
func (s *S3) Delete(ctx context.Context, d digest.Digest) error {
	key, err := s.blobKey(d)
	if err != nil {
		return err
	}
	size, statErr := s.Stat(ctx, d)
	if err := s.deleteObject(ctx, key); err != nil {
		return err
	}
	if statErr == nil {
		s.usage.add(-size)
	}
	if akey, err := s.accessKey(d); err == nil {
		_ = s.deleteObject(ctx, akey)
	}
	return nil
}

func (s *S3) deleteObject(ctx context.Context, key string) error {
	ctx, cancel := context.WithTimeout(ctx, s.t.op)
	defer cancel()
	// Deleting an absent key succeeds in S3.
	if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: &s.bucket, Key: &key}); err != nil {
		return s.wrap(key, err)
	}
	return nil
}

// GetMeta implements Store.
func (s *S3) GetMeta(ctx context.Context, key string) ([]byte, error) {
	k, err := s.metaKey(key)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, s.t.op)
	defer cancel()
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &k})
	if err != nil {
		return nil, s.wrap(k, err)
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, maxMetaSize+1))
	if err != nil {
		return nil, s.wrap(k, err)
	}
	if len(b) > maxMetaSize {
		return nil, fmt.Errorf("storage.s3 %s: metadata record larger than %d bytes", k, maxMetaSize)
	}
	return b, nil
}

// PutMeta implements Store. A PutObject replaces an object atomically.
func (s *S3) PutMeta(ctx context.Context, key string, value []byte) error {
	k, err := s.metaKey(key)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, s.t.op)
	defer cancel()
	_, err = s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: &s.bucket, Key: &k,
		Body: bytes.NewReader(value), ContentLength: aws.Int64(int64(len(value)))}, s.bodyOpts()...)
	if err != nil {
		return s.wrap(k, err)
	}
	return nil
}

// DeleteMeta implements Store.
func (s *S3) DeleteMeta(ctx context.Context, key string) error {
	k, err := s.metaKey(key)
	if err != nil {
		return err
	}
	return s.deleteObject(ctx, k)
}

// wrap turns an SDK error into the store's: 404 is ErrNotFound (except a
// missing bucket, which is a configuration error), and unreachable or
// failing servers are ErrUnavailable. The SDK's messages carry the
// operation, status and request id, never credentials.
func (s *S3) wrap(key string, err error) error {
	if err == nil {
		return nil
	}
	var apiErr smithy.APIError
	code := ""
	if errors.As(err, &apiErr) {
		code = apiErr.ErrorCode()
	}
	if code == "NoSuchBucket" {
		return fmt.Errorf("storage.s3.bucket %s: %w", s.bucket, err)
	}
	status := 0
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		status = re.HTTPStatusCode()
	}
	switch {
	case status == http.StatusNotFound:
		return ErrNotFound
	case status >= 500, status == 0 && !errors.Is(err, context.Canceled):
		return fmt.Errorf("storage.s3 %s: %w: %w", key, ErrUnavailable, err)
	}
	return fmt.Errorf("storage.s3 %s: %w", key, err)
}

// errorCode returns the S3 error code of err, or "".
func errorCode(err error) string {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		return apiErr.ErrorCode()
	}
	return ""
}

func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// s3Redirect is an S3 store with storage.s3.redirect on.
type s3Redirect struct{ *S3 }

// maxPresignExpiry is SigV4's limit for a presigned URL.
const maxPresignExpiry = 7 * 24 * time.Hour

// BlobURL implements Redirector with a presigned URL; signing is local, so
// it makes no network call. A GET URL counts as a read of the blob for
// eviction, as Open does: the client's bytes never pass through regcache,
// so this is the only read it sees.
func (s *s3Redirect) BlobURL(ctx context.Context, d digest.Digest, method string, expiry time.Duration) (string, error) {
	key, err := s.blobKey(d)
	if err != nil {
		return "", err
	}
	if expiry <= 0 || expiry > maxPresignExpiry {
		return "", fmt.Errorf("presigned URL expiry %s is not within (0, 7 days]", expiry)
	}
	pc := s3.NewPresignClient(s.client, s3.WithPresignExpires(expiry))
	var req *v4.PresignedHTTPRequest
	switch method {
	case http.MethodGet:
		req, err = pc.PresignGetObject(ctx, &s3.GetObjectInput{Bucket: &s.bucket, Key: &key})
	case http.MethodHead:
		req, err = pc.PresignHeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	default:
		return "", fmt.Errorf("no presigned URL for method %s", method)
	}
	if err != nil {
		return "", s.wrap(key, err)
	}
	if method == http.MethodGet {
		s.touch(d)
	}
	return req.URL, nil
}

// s3Content reads a committed object: sequential reads stream one GET, and
// a Seek to another offset starts a ranged GET on the next Read, so
// http.ServeContent serves Range requests without reading the rest.
type s3Content struct {
	s    *S3
	ctx  context.Context
	key  string
	size int64
	off  int64

	body    io.ReadCloser // an open GET, positioned at bodyOff; nil when none
	bodyOff int64
	cancel  context.CancelFunc
	stall   *time.Timer
	stalled *atomic.Bool // set by stall when it cut this GET
}

// get starts a GET at c.off (the whole object when c.off is 0).
func (c *s3Content) get() error {
	ctx, cancel := context.WithCancel(c.ctx)
	in := &s3.GetObjectInput{Bucket: &c.s.bucket, Key: &c.key}
	if c.off > 0 {
		in.Range = aws.String(fmt.Sprintf("bytes=%d-", c.off))
	}
	// The header timeout bounds the wait for the first byte; after that
	// the stall timer cuts a body that stops delivering.
	stalled := new(atomic.Bool)
	stall := time.AfterFunc(c.s.t.stall, func() {
		stalled.Store(true)
		cancel()
	})
	out, err := c.s.client.GetObject(ctx, in)
	if err != nil {
		stall.Stop()
		cancel()
		return c.s.wrap(c.key, err)
	}
	c.body, c.bodyOff, c.cancel, c.stall, c.stalled = out.Body, c.off, cancel, stall, stalled
	if c.size < 0 {
		if out.ContentLength == nil {
			c.drop()
			return fmt.Errorf("storage.s3 %s: GET answered without a Content-Length", c.key)
		}
		c.size = *out.ContentLength
	}
	return nil
}

func (c *s3Content) Size() int64 { return c.size }

func (c *s3Content) Read(p []byte) (int, error) {
	if c.off >= c.size {
		return 0, io.EOF
	}
	if c.body != nil && c.bodyOff != c.off {
		c.drop() // a Seek moved away from the open GET
	}
	if c.body == nil {
		if err := c.get(); err != nil {
			return 0, err
		}
	}
	if int64(len(p)) > c.size-c.off {
		p = p[:c.size-c.off]
	}
	n, err := c.body.Read(p)
	c.off += int64(n)
	c.bodyOff = c.off
	if n > 0 {
		c.stall.Reset(c.s.t.stall)
	}
	switch {
	case err == io.EOF && c.off < c.size:
		c.drop()
		return n, fmt.Errorf("storage.s3 %s: object ended at %d of %d bytes: %w", c.key, c.off, c.size, io.ErrUnexpectedEOF)
	case err == io.EOF:
		return n, nil // the next Read returns io.EOF
	case err != nil:
		stalled := c.stalled.Load()
		c.drop()
		if stalled {
			return n, fmt.Errorf("storage.s3 %s: %w: no data for %s", c.key, ErrUnavailable, c.s.t.stall)
		}
		return n, fmt.Errorf("storage.s3 %s: %w", c.key, err)
	}
	return n, nil
}

func (c *s3Content) Seek(offset int64, whence int) (int64, error) {
	var off int64
	switch whence {
	case io.SeekStart:
		off = offset
	case io.SeekCurrent:
		off = c.off + offset
	case io.SeekEnd:
		off = c.size + offset
	default:
		return 0, errors.New("s3 content: invalid whence")
	}
	if off < 0 {
		return 0, errors.New("s3 content: negative position")
	}
	// The open GET is kept until a Read: http.ServeContent seeks to the
	// end and back before reading from the start.
	c.off = off
	return off, nil
}

// drop ends the current GET, if any.
func (c *s3Content) drop() {
	if c.body == nil {
		return
	}
	c.stall.Stop()
	c.cancel()
	c.body.Close()
	c.body = nil
}

func (c *s3Content) Close() error {
	c.drop()
	return nil
}

// Shared reports that every replica configured with this bucket and prefix
// reads the same content: a blob one replica commits need not be written
// by the others.
func (s *S3) Shared() bool { return true }
