package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/opencontainers/go-digest"
)

const (
	// s3MaxPart is S3's largest part.
	s3MaxPart = 5 << 30
	// partGrowEvery doubles the part size of a blob of unknown size every
	// so many parts, so 10,000 parts reach about 480 GiB with 8 MiB parts.
	partGrowEvery = 2000
)

// Create implements Store. ctx bounds the writer's part uploads until
// Commit or Close. Nothing is uploaded before the first part is full, and
// content that fits in one part is sent at Commit, in one PutObject.
func (s *S3) Create(ctx context.Context, d digest.Digest, size int64) (Writer, error) {
	key, err := s.blobKey(d)
	if err != nil {
		return nil, err
	}
	part := s.partSize
	if size > 0 {
		if size > s3MaxPart*s3MaxParts {
			return nil, fmt.Errorf("storage.s3: %s is %d bytes, more than an S3 object can hold", d, size)
		}
		// Fewer, larger parts for a blob that would need more than S3's
		// 10,000; rounded to MiB so buffers are reused.
		if need := (size + s3MaxParts - 1) / s3MaxParts; need > part {
			part = (need + 1<<20 - 1) &^ (1<<20 - 1)
		}
	}
	w := &s3Writer{s: s, key: key, part: part, size: size}
	w.ctx, w.cancel = context.WithCancel(ctx)
	w.stop = make(chan struct{})
	if size >= 0 && size < part {
		w.buf = make([]byte, 0, size) // else a whole part at the first Write
	}
	return w, nil
}

// s3Writer streams content into a multipart upload of its final key and
// completes it only once the content is verified. It does not implement
// io.ReaderAt: parts go to the bucket, and reading them back in flight
// would cost a GET per reader.
type s3Writer struct {
	s    *S3
	size int64 // expected, or -1
	// written counts the bytes accepted; Commit checks it against size.
	written int64
	key     string
	part    int64 // size of the part being filled

	ctx      context.Context // part uploads
	cancel   context.CancelFunc
	stop     chan struct{} // closed by Close: a blocked Write gives up
	stopOnce sync.Once

	mu       sync.Mutex // serialises Write/Commit/Close
	buf      []byte     // the part being filled
	uploadID string     // set when the first part is full
	queue    chan []byte
	sent     int // parts handed to the uploader
	free     chan []byte
	done     chan struct{} // closed when the uploader exits
	// parts and upErr are the uploader's; read them after done is closed.
	parts []types.CompletedPart
	upErr error

	completed bool // the object exists under key (ours or a twin's)
	committed bool
	closed    bool
}

func (w *s3Writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.committed {
		return 0, errors.New("store: write after commit or close")
	}
	if w.buf == nil {
		w.buf = make([]byte, 0, w.part)
	}
	total := 0
	for len(p) > 0 {
		n := min(int(w.part)-len(w.buf), len(p))
		w.buf = append(w.buf, p[:n]...)
		w.written += int64(n)
		total += n
		p = p[n:]
		if len(w.buf) == int(w.part) {
			if err := w.flush(); err != nil {
				return total, err
			}
		}
	}
	return total, nil
}

// flush hands the filled buffer to the uploader, starting the upload with
// the first part. It blocks while the uploader is busy with the previous
// part, so a writer holds at most two parts in memory.
func (w *s3Writer) flush() error {
	if w.queue == nil {
		ctx, cancel := context.WithTimeout(w.ctx, w.s.t.op)
		out, err := w.s.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: &w.s.bucket, Key: &w.key})
		cancel()
		if err != nil {
			return w.s.wrap(w.key, err)
		}
		w.uploadID = aws.ToString(out.UploadId)
		w.queue, w.free, w.done = make(chan []byte), make(chan []byte, 2), make(chan struct{})
		go w.upload(w.queue)
	}
	if w.sent == s3MaxParts {
		return fmt.Errorf("storage.s3 %s: more than %d parts", w.key, s3MaxParts)
	}
	select {
	case w.queue <- w.buf:
	case <-w.done:
		return w.upErr
	case <-w.ctx.Done():
		return w.ctx.Err()
	case <-w.stop:
		return errors.New("store: writer closed")
	}
	w.sent++
	if w.size < 0 && w.sent%partGrowEvery == 0 && w.part < s3MaxPart {
		w.part = min(2*w.part, s3MaxPart)
	}
	select {
	case b := <-w.free:
		if int64(cap(b)) >= w.part {
			w.buf = b[:0]
			return nil
		}
	default:
	}
	w.buf = make([]byte, 0, w.part)
	return nil
}

// upload sends parts in order until the queue is closed or a part fails.
func (w *s3Writer) upload(queue <-chan []byte) {
	defer close(w.done)
	for b := range queue {
		n := int32(len(w.parts) + 1)
		ctx, cancel := context.WithTimeout(w.ctx, w.s.t.part)
		out, err := w.s.client.UploadPart(ctx, &s3.UploadPartInput{Bucket: &w.s.bucket, Key: &w.key,
			UploadId: &w.uploadID, PartNumber: &n, Body: bytes.NewReader(b), ContentLength: aws.Int64(int64(len(b)))},
			w.s.bodyOpts()...)
		cancel()
		if err != nil {
			w.upErr = w.s.wrap(w.key, err)
			return
		}
		w.parts = append(w.parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(n)})
		select {
		case w.free <- b:
		default:
		}
	}
}

// Commit checks the size and only then makes the object exist: by
// completing the multipart upload, or with one PutObject for content that
// fits in a part. The caller verified the digest as the bytes arrived.
func (w *s3Writer) Commit(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed || w.committed {
		return errors.New("store: commit after commit or close")
	}
	if w.size >= 0 && w.written != w.size {
		return fmt.Errorf("%w: %d bytes written, %d expected", ErrSizeMismatch, w.written, w.size)
	}
	var created bool
	var err error
	if w.uploadID == "" {
		created, err = w.putSmall(ctx)
	} else {
		created, err = w.complete(ctx)
	}
	if err != nil {
		return err
	}
	w.committed = true
	w.buf = nil
	if created {
		w.s.usage.add(w.written)
	}
	return nil
}

func (w *s3Writer) putSmall(ctx context.Context) (created bool, err error) {
	return ifAbsent(ctx, func(ctx context.Context, cond *string) error {
		ctx, cancel := context.WithTimeout(ctx, w.s.t.op)
		defer cancel()
		_, err := w.s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: &w.s.bucket, Key: &w.key,
			Body: bytes.NewReader(w.buf), ContentLength: aws.Int64(int64(len(w.buf))), IfNoneMatch: cond},
			w.s.bodyOpts()...)
		return err
	}, w.s.wrap, w.key)
}

// complete sends the last part, waits for the uploader and completes the
// upload. Called again after a failure, it retries the completion.
func (w *s3Writer) complete(ctx context.Context) (created bool, err error) {
	if w.queue != nil {
		if len(w.buf) > 0 {
			if err := w.flush(); err != nil {
				return false, err
			}
		}
		close(w.queue)
		w.queue = nil
	}
	select {
	case <-w.done:
	case <-ctx.Done():
		return false, ctx.Err()
	}
	if w.upErr != nil {
		return false, w.upErr
	}
	created, err = ifAbsent(ctx, func(ctx context.Context, cond *string) error {
		ctx, cancel := context.WithTimeout(ctx, w.s.t.part)
		defer cancel()
		_, err := w.s.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{Bucket: &w.s.bucket,
			Key: &w.key, UploadId: &w.uploadID, MultipartUpload: &types.CompletedMultipartUpload{Parts: w.parts},
			IfNoneMatch: cond})
		return err
	}, w.s.wrap, w.key)
	if err != nil {
		return false, err
	}
	// A twin's object won: our parts are not needed (Close aborts them).
	w.completed = created
	return created, nil
}

// ifAbsent runs a write with If-None-Match: *. A 412 means the same
// verified content is already there (another replica committed this
// digest): success, without writing. A 409 is a concurrent conditional
// write of the key still in progress: try again, and get 412 or win. A
// server that does not implement the condition gets the write without it;
// overwriting content-addressed bytes with the same bytes is harmless.
func ifAbsent(ctx context.Context, write func(ctx context.Context, cond *string) error, wrap func(string, error) error, key string) (created bool, err error) {
	cond := aws.String("*")
	for attempt := 0; ; attempt++ {
		err := write(ctx, cond)
		switch {
		case err == nil:
			return true, nil
		case httpStatus(err) == http.StatusPreconditionFailed || errorCode(err) == "PreconditionFailed":
			return false, nil
		case httpStatus(err) == http.StatusNotImplemented && cond != nil:
			cond = nil
		case httpStatus(err) == http.StatusConflict && attempt < 5:
			select {
			case <-time.After(time.Duration(attempt+1) * 50 * time.Millisecond):
			case <-ctx.Done():
				return false, ctx.Err()
			}
		default:
			return false, wrap(key, err)
		}
	}
}

// Close releases the writer. Without a completed commit, the multipart
// upload is aborted, so its parts neither stay billed nor become visible.
//
// A part upload in flight is let finish first (for at most the op
// timeout): S3 documents that a part still arriving when its upload is
// aborted may be stored anyway, and then the upload lingers until the
// stale-upload sweep.
func (w *s3Writer) Close() error {
	w.stopOnce.Do(func() { close(w.stop) })
	w.mu.Lock()
	defer w.mu.Unlock()
	defer w.cancel()
	if w.closed {
		return nil
	}
	w.closed = true
	w.buf = nil
	if w.queue != nil {
		close(w.queue)
		w.queue = nil
	}
	if w.done != nil {
		t := time.NewTimer(w.s.t.op)
		select {
		case <-w.done:
		case <-t.C:
			w.cancel()
			<-w.done
		}
		t.Stop()
	}
	if w.uploadID == "" || w.completed {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), w.s.t.op)
	defer cancel()
	_, err := w.s.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: &w.s.bucket, Key: &w.key, UploadId: &w.uploadID})
	if err != nil && errorCode(err) != "NoSuchUpload" {
		return w.s.wrap(w.key, err)
	}
	return nil
}
