package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// The object-store workloads of issue 9 run regcache with storage.s3 on a
// real S3-compatible server (versitygw with its posix backend, in the run's
// scratch directory), side by side with a direct GET from that server.

// objectStore is the S3 server all S3 workloads share, with one bucket.
type objectStore struct {
	srv            *server
	client         *s3.Client
	bucket, prefix string
	access, secret string
}

const (
	benchBucket = "regcache-bench"
	benchPrefix = "bench"
)

// objectStore starts versitygw on first use.
func (e *env) objectStore() (*objectStore, error) {
	if e.s3 != nil {
		return e.s3, nil
	}
	bin, err := lookBin("versitygw", filepath.Join(gopath(), "bin", "versitygw"))
	if err != nil {
		return nil, fmt.Errorf("%w: go install github.com/versity/versitygw/cmd/versitygw@v1.8.0", err)
	}
	o := &objectStore{bucket: benchBucket, prefix: benchPrefix, access: "AK" + randomHex(8), secret: "SK" + randomHex(16)}
	dir := filepath.Join(e.work, "versitygw")
	resetDir(dir)
	addr := freeAddr()
	// Credentials in the environment, not on the command line.
	p, err := startProc("versitygw", []string{"ROOT_ACCESS_KEY_ID=" + o.access, "ROOT_SECRET_ACCESS_KEY=" + o.secret},
		bin, "--port", addr, "--quiet", "--health", "/_health", "posix", dir)
	if err != nil {
		return nil, err
	}
	o.srv = &server{name: "versitygw", kind: "s3", url: "http://" + addr, p: p, dir: dir}
	e.servers[o.srv.name] = o.srv
	if err := waitHTTP(e.ctx, p, o.srv.url+"/_health", 200); err != nil {
		return nil, err
	}
	o.client = s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(o.srv.url), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(o.access, o.secret, "")})
	ctx, cancel := context.WithTimeout(e.ctx, 30*time.Second)
	defer cancel()
	if _, err := o.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: &o.bucket}); err != nil {
		return nil, fmt.Errorf("versitygw: creating the bucket: %w", err)
	}
	e.s3 = o
	return o, nil
}

// stop ends the server and removes the bucket's data (a 1 GiB blob).
func (o *objectStore) stop() {
	o.srv.stop()
	_ = os.RemoveAll(o.srv.dir)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// blobURL is a presigned GET of blob d as regcache stores it: what a
// client fetches directly from the object store.
func (o *objectStore) blobURL(ctx context.Context, d string) (string, error) {
	alg, h, _ := strings.Cut(d, ":")
	key := o.prefix + "/blobs/" + alg + "/" + h[:2] + "/" + h
	req, err := s3.NewPresignClient(o.client, s3.WithPresignExpires(time.Hour)).
		PresignGetObject(ctx, &s3.GetObjectInput{Bucket: &o.bucket, Key: &key})
	if err != nil {
		return "", err
	}
	return req.URL, nil
}

// s3Regcache returns a regcache whose store is the bucket (all of them
// share one prefix, as replicas do), starting it on first use.
func (e *env) s3Regcache(name string, redirect bool) (*server, error) {
	if s, ok := e.servers[name]; ok {
		return s, nil
	}
	o, err := e.objectStore()
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(e.work, name)
	storage := fmt.Sprintf("  root: %q\n  s3: {bucket: %s, endpoint: %q, path_style: true, prefix: %s, redirect: %t}\n",
		dir, o.bucket, o.srv.url, o.prefix, redirect)
	env := []string{"AWS_ACCESS_KEY_ID=" + o.access, "AWS_SECRET_ACCESS_KEY=" + o.secret, "AWS_REGION=us-east-1"}
	s, err := startRegcacheWith(e.ctx, e, name, dir, storage, env, e.origin.url, true)
	if s != nil {
		e.servers[name] = s
	}
	return s, err
}

// warmS3Blob makes the blob committed in the bucket (one GET through a
// regcache without redirects, then HEADs until it is a hit), and linked to
// its repository in each of servers (a HEAD: the first one asks the origin).
func (e *env) warmS3Blob(servers ...*server) error {
	first, err := e.s3Regcache("regcache-s3", false)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(e.ctx, 5*time.Minute)
	defer cancel()
	// The first GET downloads it; completing a 1 GiB multipart upload
	// takes the object store a while, and until then a GET would be
	// served from the download's spool.
	if e.shared["warm-s3-blob"] == nil {
		if _, _, _, err := streams(ctx, e.blobURL(first), 1); err != nil {
			return err
		}
		e.shared["warm-s3-blob"] = true
	}
	for _, s := range append([]*server{first}, servers...) {
		for {
			res, err := headBlob(ctx, e.blobURL(s))
			if err != nil {
				return fmt.Errorf("%s: HEAD blob: %w", s.name, err)
			}
			if res == "hit" {
				break
			}
			select {
			case <-ctx.Done():
				return fmt.Errorf("%s: blob not committed in the bucket: %w", s.name, ctx.Err())
			case <-time.After(200 * time.Millisecond):
			}
		}
	}
	return nil
}

// headBlob HEADs a blob at regcache, without following a redirect, and
// returns its X-Regcache answer: hit once it is committed and linked.
func headBlob(ctx context.Context, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := noFollow.Do(req)
	if err != nil {
		return "", err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusTemporaryRedirect {
		return "", fmt.Errorf("%s", resp.Status)
	}
	return resp.Header.Get("X-Regcache"), nil
}

// timed bounds one measurement: a stalled server fails it instead of the
// whole run hanging.
func (e *env) timed() (context.Context, context.CancelFunc) {
	return context.WithTimeout(e.ctx, 5*time.Minute)
}

// s3Blob is workload s3-blob: one stream of the cached blob, directly from
// the object store with a presigned URL, through regcache answering with a
// redirect to it, and through regcache on that store. The repetitions of
// the cases are interleaved, so that other load on the machine falls on all
// of them alike; the redirect, which should match direct, runs right after
// it.
func (e *env) s3Blob() error {
	o, err := e.objectStore()
	if err != nil {
		return err
	}
	proxied, err := e.s3Regcache("regcache-s3", false)
	if err != nil {
		return err
	}
	redirect, err := e.s3Regcache("regcache-s3-redirect", true)
	if err != nil {
		return err
	}
	if err := e.warmS3Blob(proxied, redirect); err != nil {
		return err
	}
	// For reference: regcache serving the same blob from its filesystem
	// store, to tell the cost of reading from the object store apart.
	onFS, err := e.get("regcache")
	if err != nil {
		return err
	}
	if err := e.warmBlob(onFS); err != nil {
		return err
	}
	direct, err := o.blobURL(e.ctx, e.blob.digest)
	if err != nil {
		return err
	}
	if code, err := statusNoFollow(e.ctx, e.blobURL(redirect)); err != nil || code != http.StatusTemporaryRedirect {
		return fmt.Errorf("regcache-s3-redirect: blob GET answered %d (%v), not a redirect", code, err)
	}
	cas := fmt.Sprintf("%d MiB blob, 1 stream", e.blob.size>>20)
	cases := []struct {
		name, url string
		s         *server
	}{
		{"direct from the object store", direct, nil},
		{"regcache on S3, redirect", e.blobURL(redirect), redirect},
		{"regcache on S3, proxied", e.blobURL(proxied), proxied},
		{"(regcache on the filesystem)", e.blobURL(onFS), onFS},
	}
	rows := make([]row, len(cases))
	storeCPU := make([][]float64, len(cases))
	for i, c := range cases {
		rows[i] = row{Workload: "s3-blob", Case: cas, Server: c.name, Unit: "GB/s", PerUnit: "s/GiB", Tool: "Go client, 1 MiB reads, redirects followed"}
	}
	// One GET takes about a second here, less than the swings of the
	// machine's other load: three times the repetitions.
	for rep := 0; rep < 3*e.reps; rep++ {
		for i, c := range cases {
			ctx, cancel := e.timed()
			var total int64
			var el time.Duration
			var res []string
			ms := []*meter{o.srv.p.startMeter()}
			prof := ""
			if c.s != nil {
				ms = append(ms, c.s.p.startMeter())
				prof = profName("s3-blob", c.s.name, fmt.Sprint(rep))
				e.profile(c.s, "start", prof)
			}
			total, el, res, err = streams(ctx, c.url, 1)
			cancel()
			if c.s != nil {
				e.profile(c.s, "stop", prof)
			}
			mr := endMeters(ms)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			if c.s != redirect && c.s != nil && (len(res) != 1 || res[0] != "hit") {
				rows[i].Note = fmt.Sprintf("X-Regcache %v", res)
			}
			rows[i].Values = append(rows[i].Values, float64(total)/el.Seconds()/1e9)
			rows[i].Work = append(rows[i].Work, float64(total)/gib)
			storeCPU[i] = append(storeCPU[i], mr[0].CPUSeconds)
			// The server of the direct case is the object store.
			m := mr[len(mr)-1]
			rows[i].CPU = append(rows[i].CPU, m.CPUSeconds)
			rows[i].RSS = append(rows[i].RSS, float64(m.PeakRSS)/(1<<20))
		}
	}
	for i := range rows {
		if cases[i].s == proxied || cases[i].s == redirect {
			rows[i].Note = strings.Trim(rows[i].Note+fmt.Sprintf("; object store CPU %.2f s", median(storeCPU[i])), "; ")
		}
		e.add(rows[i])
	}
	return nil
}

// s3Manifest is workload s3-manifest: manifest GETs by tag and by digest
// within tag_ttl, regcache on S3 against regcache on the filesystem,
// interleaved. The object store's CPU time during the S3 runs shows whether
// a request costs an object-store round trip: within tag_ttl none should.
func (e *env) s3Manifest() error {
	o, err := e.objectStore()
	if err != nil {
		return err
	}
	fs, err := e.get("regcache")
	if err != nil {
		return err
	}
	onS3, err := e.s3Regcache("regcache-s3", false)
	if err != nil {
		return err
	}
	servers := []*server{fs, onS3}
	names := map[*server]string{fs: "regcache, filesystem", onS3: "regcache on S3"}
	for _, s := range servers {
		for _, ref := range []string{e.small.tag, e.small.digest} {
			c := &http.Client{}
			for i := 0; i < 2; i++ {
				if _, h, err := getAll(e.ctx, c, e.manifestURL(s, ref), map[string]string{"Accept": acceptAll}, nil); err != nil {
					return fmt.Errorf("%s: warm %s: %w", s.name, ref, err)
				} else if i == 1 && h.Get("X-Regcache") != "hit" {
					return fmt.Errorf("%s: %s not a cache hit after warm-up: %q", s.name, ref, h.Get("X-Regcache"))
				}
			}
		}
	}
	for _, by := range []struct{ cas, ref string }{{"by tag GET", e.small.tag}, {"by digest GET", e.small.digest}} {
		rows := map[*server]*row{}
		storeCPU := map[*server][]float64{}
		for _, s := range servers {
			rows[s] = &row{Workload: "s3-manifest", Case: by.cas, Server: names[s], Unit: "req/s", PerUnit: "ms/kreq", Tool: "wrk -t2 -c32"}
		}
		for rep := 0; rep < e.reps; rep++ {
			for _, s := range servers {
				var wr wrkResult
				ms := []*meter{s.p.startMeter(), o.srv.p.startMeter()}
				wr, err = runWrk(e.ctx, e, e.manifestURL(s, by.ref), 32, e.loadDur, acceptAll, "")
				mr := endMeters(ms)
				if err != nil {
					return err
				}
				rows[s].addLoad(wr, mr[0], e.loadDur)
				storeCPU[s] = append(storeCPU[s], mr[1].CPUSeconds)
			}
		}
		for _, s := range servers {
			if s == onS3 {
				rows[s].Note = strings.Trim(rows[s].Note+fmt.Sprintf("; object store CPU %.2f s per run", median(storeCPU[s])), "; ")
			}
			e.add(*rows[s])
		}
	}
	return nil
}

// replicaStreams is how many concurrent GETs of the blob s3-replicas
// spreads over the replicas: a multiple of 1, 2 and 3.
const replicaStreams = 6

// s3Replicas is workload s3-replicas: aggregate throughput of cached-blob
// GETs spread round robin over 1, 2 and 3 regcache processes on one bucket
// (no coordinator: cached reads need none), and the same number of GETs
// straight from the object store. It also reports where the CPU went:
// regcache, the object store and the client, against what the machine has.
func (e *env) s3Replicas() error {
	o, err := e.objectStore()
	if err != nil {
		return err
	}
	var replicas []*server
	for _, name := range []string{"regcache-s3", "regcache-s3-b", "regcache-s3-c"} {
		s, err := e.s3Regcache(name, false)
		if err != nil {
			return err
		}
		replicas = append(replicas, s)
	}
	if err := e.warmS3Blob(replicas...); err != nil {
		return err
	}
	direct, err := o.blobURL(e.ctx, e.blob.digest)
	if err != nil {
		return err
	}
	cas := fmt.Sprintf("%d × %d MiB blob, concurrent", replicaStreams, e.blob.size>>20)
	type tcase struct {
		name    string
		servers []*server
	}
	cases := []tcase{{"direct from the object store", nil}}
	for n := 1; n <= len(replicas); n++ {
		cases = append(cases, tcase{fmt.Sprintf("%d regcache on S3", n), replicas[:n]})
	}
	rows := make([]row, len(cases))
	type split struct{ store, client, busy []float64 }
	splits := make([]split, len(cases))
	for i, c := range cases {
		rows[i] = row{Workload: "s3-replicas", Case: cas, Server: c.name, Unit: "GB/s", PerUnit: "s/GiB", Tool: "Go client, round robin over the replicas"}
	}
	for rep := 0; rep < e.reps; rep++ {
		for i, c := range cases {
			urls := make([]string, replicaStreams)
			for k := range urls {
				urls[k] = direct
				if len(c.servers) > 0 {
					urls[k] = e.blobURL(c.servers[k%len(c.servers)])
				}
			}
			ms := []*meter{o.srv.p.startMeter()}
			for _, s := range c.servers {
				ms = append(ms, s.p.startMeter())
			}
			client0 := selfCPU()
			ctx, cancel := e.timed()
			total, el, err := streamsTo(ctx, urls)
			cancel()
			clientCPU := selfCPU() - client0
			mr := endMeters(ms)
			if err != nil {
				return fmt.Errorf("%s: %w", c.name, err)
			}
			var rcCPU, rss float64
			for _, m := range mr[1:] {
				rcCPU += m.CPUSeconds
				rss += float64(m.PeakRSS) / (1 << 20)
			}
			rows[i].Values = append(rows[i].Values, float64(total)/el.Seconds()/1e9)
			rows[i].Work = append(rows[i].Work, float64(total)/gib)
			if len(c.servers) == 0 {
				// The server of the direct case is the object store.
				rcCPU, rss = mr[0].CPUSeconds, float64(mr[0].PeakRSS)/(1<<20)
			}
			rows[i].CPU = append(rows[i].CPU, rcCPU)
			rows[i].RSS = append(rows[i].RSS, rss)
			serverCPU := 0.0
			for _, m := range mr {
				serverCPU += m.CPUSeconds
			}
			busy := (serverCPU + clientCPU) / (el.Seconds() * float64(nproc()))
			splits[i].store = append(splits[i].store, mr[0].CPUSeconds/(float64(total)/gib))
			splits[i].client = append(splits[i].client, clientCPU/(float64(total)/gib))
			splits[i].busy = append(splits[i].busy, busy)
		}
	}
	for i := range rows {
		rows[i].Note = fmt.Sprintf("object store %.2f s/GiB, client %.2f s/GiB; CPU busy %.0f%% of %d cores",
			median(splits[i].store), median(splits[i].client), 100*median(splits[i].busy), nproc())
		e.add(rows[i])
	}
	return nil
}

// endMeters ends meters started together, in order.
func endMeters(ms []*meter) []meterResult {
	out := make([]meterResult, len(ms))
	for i, m := range ms {
		out[i] = m.end()
	}
	return out
}

// noFollow sees a redirect instead of following it.
var noFollow = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

// statusNoFollow is the status of a GET that does not follow redirects.
func statusNoFollow(ctx context.Context, url string) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := noFollow.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// selfCPU is the harness's own CPU time (it is the client of the blob
// workloads).
func selfCPU() float64 {
	st, err := readStat(os.Getpid())
	if err != nil {
		return 0
	}
	return float64(st.utime+st.stime) / clkTck
}
