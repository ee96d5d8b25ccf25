package store

import (
	"context"
	"errors"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Collect implements Collector for S3, with the same policy as FS: least
// recently used first, down to low, never a blob used within recentGrace.
//
// A blob's last use is the later of its own LastModified (its commit) and
// its access marker's, which every replica refreshes with an empty PUT at
// most once per touchEvery while it reads the blob. Both are the object
// store's clock, so replicas' clocks do not matter, and a blob read through
// any replica counts. Just before deleting, the marker is looked at again,
// so a blob read since the listing is kept. A reader that already has a
// blob open when it is deleted may fail on its next ranged GET and retry,
// which fetches the blob again; recentGrace makes that rare.
//
// Listing the bucket costs one request per 1,000 objects, so it happens
// only when the running size (the last listing plus this replica's
// commits) may be over high, or s3RewalkEvery after the last listing:
// other replicas' commits show up no later than that. Each listing also
// aborts incomplete uploads older than staleUploadAge and drops markers
// whose blob is gone.
func (s *S3) Collect(ctx context.Context, high, low int64, now time.Time) (GCStats, error) {
	return s.usage.collect(high, now, s3RewalkEvery, func() (GCStats, error) {
		st, err := s.listAndEvict(ctx, high, low, now)
		if err != nil {
			return st, err
		}
		_, err = s.sweepUploads(ctx, now.Add(-staleUploadAge))
		return st, err
	})
}

// listAndEvict lists blobs and access markers, and evicts. Entry keys are
// <alg>/<hh>/<hex>, the same below blobs/ and access/.
func (s *S3) listAndEvict(ctx context.Context, high, low int64, now time.Time) (GCStats, error) {
	st := GCStats{Walked: true}
	blobs := map[string]*lruEntry{}
	err := s.list(ctx, s.prefix+"blobs/", func(rel string, size int64, mod time.Time) {
		blobs[rel] = &lruEntry{key: rel, size: size, atime: mod}
		st.Blobs++
		st.Bytes += size
	})
	if err != nil {
		return st, err
	}
	var orphans []string
	err = s.list(ctx, s.prefix+"access/", func(rel string, _ int64, mod time.Time) {
		e, ok := blobs[rel]
		switch {
		case ok && mod.After(e.atime):
			e.atime = mod
		case !ok && now.Sub(mod) >= recentGrace:
			orphans = append(orphans, rel)
		}
	})
	if err != nil {
		return st, err
	}
	for _, rel := range orphans {
		_ = s.deleteObject(ctx, s.prefix+"access/"+rel)
	}
	if st.Bytes <= high {
		return st, nil
	}
	all := make([]lruEntry, 0, len(blobs))
	for _, e := range blobs {
		all = append(all, *e)
	}
	evictLRU(&st, all, low, now, func(e lruEntry) bool {
		if ctx.Err() != nil || s.readSince(ctx, e.key, now) {
			return false
		}
		if err := s.deleteObject(ctx, s.prefix+"blobs/"+e.key); err != nil {
			return false
		}
		_ = s.deleteObject(ctx, s.prefix+"access/"+e.key)
		return true
	})
	return st, ctx.Err()
}

// readSince reports whether rel's access marker says it was read within
// recentGrace of now; on doubt (the store did not answer) it says yes.
func (s *S3) readSince(ctx context.Context, rel string, now time.Time) bool {
	key := s.prefix + "access/" + rel
	ctx, cancel := context.WithTimeout(ctx, s.t.op)
	defer cancel()
	out, err := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: &s.bucket, Key: &key})
	if err != nil {
		return !errors.Is(s.wrap(key, err), ErrNotFound)
	}
	return now.Sub(aws.ToTime(out.LastModified)) < recentGrace
}

// list calls fn for every object under prefix, with its key relative to
// prefix.
func (s *S3) list(ctx context.Context, prefix string, fn func(rel string, size int64, mod time.Time)) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: &s.bucket, Prefix: &prefix})
	for p.HasMorePages() {
		pctx, cancel := context.WithTimeout(ctx, s.t.op)
		page, err := p.NextPage(pctx)
		cancel()
		if err != nil {
			return s.wrap(prefix, err)
		}
		for _, o := range page.Contents {
			fn(strings.TrimPrefix(aws.ToString(o.Key), prefix), aws.ToInt64(o.Size), aws.ToTime(o.LastModified))
		}
	}
	return nil
}

// sweepUploads aborts the incomplete multipart uploads under the blob
// prefix that were started before cutoff: those of processes that died
// mid-download. Younger ones may belong to another replica's download.
func (s *S3) sweepUploads(ctx context.Context, cutoff time.Time) (int, error) {
	prefix := s.prefix + "blobs/"
	in := &s3.ListMultipartUploadsInput{Bucket: &s.bucket, Prefix: &prefix}
	aborted := 0
	for {
		lctx, cancel := context.WithTimeout(ctx, s.t.op)
		page, err := s.client.ListMultipartUploads(lctx, in)
		cancel()
		if err != nil {
			return aborted, s.wrap(prefix, err)
		}
		for _, u := range page.Uploads {
			if u.Initiated == nil || !u.Initiated.Before(cutoff) {
				continue
			}
			actx, cancel := context.WithTimeout(ctx, s.t.op)
			_, err := s.client.AbortMultipartUpload(actx, &s3.AbortMultipartUploadInput{Bucket: &s.bucket, Key: u.Key, UploadId: u.UploadId})
			cancel()
			if err == nil || errorCode(err) == "NoSuchUpload" {
				aborted++
			}
		}
		if !aws.ToBool(page.IsTruncated) || (page.NextKeyMarker == nil && page.NextUploadIdMarker == nil) {
			return aborted, nil
		}
		in.KeyMarker, in.UploadIdMarker = page.NextKeyMarker, page.NextUploadIdMarker
	}
}

// Size implements Collector: the running size, as of the last listing plus
// this replica's commits and deletes since.
func (s *S3) Size() int64 { return s.usage.bytes.Load() }

var (
	_ Collector  = (*S3)(nil)
	_ Collector  = (*FS)(nil)
	_ Redirector = (*s3Redirect)(nil)
)
