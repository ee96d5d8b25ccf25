package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Workload 7 needs 10k, 100k and 1M cached tags. Pushing 1M manifests
// through an origin and pulling each through regcache would take hours on
// this machine, so the harness writes the records regcache itself would
// have written, in its store layout (internal/store/fs.go and
// internal/pull: tagMetaKey, manifestTypeKey, linkMetaKey):
//
//	blobs/sha256/<2 hex>/<hex>                             manifest bytes
//	meta/manifests/sha256/<hex>                            its media type
//	meta/tags/<registry>/<repo>/_tags/<tag>/<mask %02x>    {"digest","mediaType","checked"}
//	meta/links/<registry>/<repo>/_links/sha256/<hex>       empty: repo has that digest
//
// The store is synthetic: tags are spread over repositories of 1,000 tags
// (scale/r00000 … ) and name one of 16 distinct manifests, with "checked"
// set at generation time and a tag_ttl that keeps them fresh, so every
// request is a cache hit and no upstream is asked. If regcache's layout
// changes, tagStoreVersion must change with it (the smoke request before
// each measurement fails loudly when the layout is not understood).
const (
	tagStoreVersion = "v1"
	tagsPerRepo     = 1000
	tagManifests    = 16
	// tagMask is the AcceptMask of acceptAll: all four manifest types.
	tagMask = 0x0f
)

func tagStorePath(e *env, n int) string {
	return filepath.Join(e.cache, fmt.Sprintf("tags-%s-%d", tagStoreVersion, n))
}

func tagRepo(i int) string { return fmt.Sprintf("scale/r%05d", i) }
func tagName(i int) string { return fmt.Sprintf("t%04d", i) }

// genTagStore writes a store with n tags, or reuses one from a previous run.
func genTagStore(e *env, n int) (string, error) {
	root := tagStorePath(e, n)
	marker := filepath.Join(root, ".bench-complete")
	if _, err := os.Stat(marker); err == nil {
		return root, nil
	}
	logf("generating synthetic store with %d tags in %s (kept for later runs)", n, root)
	t0 := time.Now()
	resetDir(root)
	type man struct {
		digest, hex string
		data        []byte
	}
	var mans []man
	for i := 0; i < tagManifests; i++ {
		m, _ := buildManifest([]descriptor{{MediaType: mtDockerLayerTar, Size: int64(1000 + i), Digest: digestOf([]byte(fmt.Sprint("layer", i)))}})
		d := digestOf(m)
		mans = append(mans, man{digest: d, hex: d[len("sha256:"):], data: m})
	}
	for _, m := range mans {
		p := filepath.Join(root, "blobs", "sha256", m.hex[:2], m.hex)
		mustMkdir(filepath.Dir(p))
		if err := os.WriteFile(p, m.data, 0o644); err != nil {
			return "", err
		}
		writeFile(filepath.Join(root, "meta", "manifests", "sha256", m.hex), mtDockerManifest)
	}
	checked := time.Now().UTC()
	repos := (n + tagsPerRepo - 1) / tagsPerRepo
	jobs := make(chan int)
	errc := make(chan error, 4)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range jobs {
				if err := genRepo(root, r, n, checked, func(i int) (string, []byte) {
					m := mans[i%tagManifests]
					return m.digest, nil
				}); err != nil {
					errc <- err
					return
				}
				links := filepath.Join(root, "meta", "links", regcacheRegistry, tagRepo(r), "_links", "sha256")
				mustMkdir(links)
				for _, m := range mans {
					if err := os.WriteFile(filepath.Join(links, m.hex), nil, 0o644); err != nil {
						errc <- err
						return
					}
				}
			}
		}()
	}
	for r := 0; r < repos; r++ {
		jobs <- r
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errc:
		return "", err
	default:
	}
	for _, d := range []string{"tmp"} {
		mustMkdir(filepath.Join(root, d))
	}
	writeFile(marker, time.Now().UTC().Format(time.RFC3339)+"\n")
	logf("generated %d tags in %s", n, time.Since(t0).Round(time.Millisecond))
	return root, nil
}

func genRepo(root string, r, n int, checked time.Time, pick func(int) (string, []byte)) error {
	tags := filepath.Join(root, "meta", "tags", regcacheRegistry, tagRepo(r), "_tags")
	mustMkdir(tags)
	for t := 0; t < tagsPerRepo && r*tagsPerRepo+t < n; t++ {
		d, _ := pick(t)
		rec, _ := json.Marshal(map[string]any{"digest": d, "mediaType": mtDockerManifest, "checked": checked})
		dir := filepath.Join(tags, tagName(t))
		if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("%02x", tagMask)), rec, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// wrkRandomTags makes wrk ask for a uniformly random tag of the n in the
// store on every request: the worst case for an in-memory index of hot tags.
func wrkRandomTags(n int) string {
	repos := (n + tagsPerRepo - 1) / tagsPerRepo
	return fmt.Sprintf(`local counter = 0
setup = function(thread)
  counter = counter + 1
  thread:set("id", counter)
end
init = function(args)
  math.randomseed(id * 7919 + %d)
end
request = function()
  local r = math.random(0, %d)
  local t = math.random(0, %d)
  return wrk.format("GET", string.format("/v2/scale/r%%05d/manifests/t%%04d", r, t))
end
`, n, repos-1, tagsPerRepo-1)
}

// firstServed polls a tag until regcache serves it as a cache hit.
func firstServed(s *server, deadline time.Duration) error {
	c := &http.Client{Timeout: time.Second}
	end := time.Now().Add(deadline)
	for {
		req, _ := http.NewRequest(http.MethodGet, s.url+"/v2/"+tagRepo(0)+"/manifests/"+tagName(1), nil)
		req.Header.Set("Accept", acceptAll)
		resp, err := c.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				if x := resp.Header.Get("X-Regcache"); x != "hit" {
					return fmt.Errorf("tag served as %q, not a cache hit: synthetic store layout not understood", x)
				}
				return nil
			}
			return fmt.Errorf("tag request: %s (synthetic store layout not understood?)", resp.Status)
		}
		if s.p.exited() {
			return fmt.Errorf("regcache exited: %s", s.p.log.String())
		}
		if time.Now().After(end) {
			return fmt.Errorf("no answer within %s: %v", deadline, err)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// scaling is workload 7.
func (e *env) scaling() error {
	for _, n := range e.tagCounts {
		root, err := genTagStore(e, n)
		if err != nil {
			return err
		}
		label := fmt.Sprintf("%dk tags", n/1000)
		if n >= 1_000_000 {
			label = fmt.Sprintf("%dM tags", n/1_000_000)
		}
		name := fmt.Sprintf("regcache-tags-%d", n)
		// Time to first served request: process start (fork/exec included)
		// to the first cache-hit answer, on a store that already holds n
		// tags (what a restart sees).
		restart := row{Workload: "7", Case: "start to first served tag, " + label, Server: "regcache", Unit: "s"}
		var s *server
		for i := 0; i < e.reps; i++ {
			if s != nil {
				s.p.stop()
			}
			t0 := time.Now()
			if s == nil {
				s, err = startRegcache(e.ctx, e, name, root, e.counter.url(), false)
				if err != nil {
					return err
				}
				e.servers[name] = s
			} else {
				if err := s.restart(e.ctx, false); err != nil {
					return err
				}
			}
			if err := firstServed(s, 30*time.Second); err != nil {
				return fmt.Errorf("%s: %w", label, err)
			}
			restart.Values = append(restart.Values, time.Since(t0).Seconds())
		}
		restart.Note = "includes waiting for GET /v2/ to answer"
		e.add(restart)

		// One unmeasured run first, so the figure is the steady state of
		// the in-memory tag index, not its filling.
		if _, err := runWrk(e.ctx, e, s.url+"/", 32, e.loadDur, acceptAll, wrkRandomTags(n)); err != nil {
			return err
		}
		r := row{Workload: "7", Case: "random tag GET, " + label, Server: "regcache", Unit: "req/s", PerUnit: "ms/kreq", Tool: "wrk -t2 -c32, uniform random tag"}
		for i := 0; i < e.reps; i++ {
			var wr wrkResult
			mr, err := e.measure(s, profName("w7", label, fmt.Sprint(i)), func() error {
				var err error
				wr, err = runWrk(e.ctx, e, s.url+"/", 32, e.loadDur, acceptAll, wrkRandomTags(n))
				return err
			})
			if err != nil {
				return err
			}
			r.addLoad(wr, mr, e.loadDur)
		}
		e.add(r)
		e.drop(name)
	}
	return nil
}
